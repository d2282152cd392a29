"""Records without a Kafka timestamp, on the real broker, on both transports: Kafka says
``-1`` (no timestamp) for them, as for records written before timestamps existed (magic 0,
kept as they were by up-conversion or mirroring). They have no end-to-end latency; counted
as made at the epoch, each added 56 years to the latency histogram's sum."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer

from tests._support import wait_for
from tests.test_stream_service import (
    CLIENTS,
    _config,
    _normal_rows,
    _record,
    _running,
    _scrape,
    detector,
    topics,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
__all__ = ["detector", "topics"]  # fixtures shared with test_stream_service


@pytest.mark.parametrize("client", CLIENTS)
def test_records_without_a_timestamp_are_left_out_of_the_end_to_end_latency(
    client, kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    t = topics(1)
    names = detector.feature_names
    rows = _normal_rows(tiny_bundle_mixing, 20, seed=4)
    with _running(detector, _config(kafka_bootstrap, t, client=client)) as service:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for i, row in enumerate(rows):
            stamp = -1 if i % 2 else None  # None: the producer's clock
            producer.send(t["input_topic"], _record(i, row, names, False), timestamp_ms=stamp)
        producer.flush(30)
        producer.close()
        wait_for(
            lambda: (
                service.stats()["scored"] == len(rows) and not service.stats()["pending_results"]
            ),
            60,
            "every record scored and its result acknowledged",
        )
        m = _scrape(service.metrics_port)
    assert m[("anomaly_end_to_end_latency_seconds_count", ())] == len(rows) // 2
    assert m[("anomaly_end_to_end_latency_seconds_sum", ())] < 60 * len(rows)
