"""Kafka timestamps the service does not control, on the real broker: producers stamp records
with their own clocks (CreateTime), which may be ahead of the service's. The broker accepts
a timestamp up to an hour ahead (``log.message.timestamp.after.max.ms``). Others have none:
Kafka says ``-1`` for records written before timestamps existed (magic 0, kept as they were
by up-conversion or mirroring)."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaProducer
from prometheus_client.utils import floatToGoString

from anomaly.stream.metrics import END_TO_END_BUCKETS
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


def test_records_stamped_in_the_future_keep_the_latency_histogram_a_valid_one(
    kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    """A histogram's sum is a counter: Prometheus takes a fall for a restart (``rate`` jumps)
    and OpenMetrics forbids a negative one. A record from a producer whose clock is ahead
    took no less than 0 s."""
    t = topics(1)
    config = _config(kafka_bootstrap, t)
    names = detector.feature_names
    rows = _normal_rows(tiny_bundle_mixing, 20, seed=3)
    ahead_ms = int((time.time() + 1800) * 1000)  # a clock 30 minutes ahead
    with _running(detector, config) as service:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for i, row in enumerate(rows):
            producer.send(t["input_topic"], _record(i, row, names, False), timestamp_ms=ahead_ms)
        producer.flush(30)
        producer.close()

        def observed():
            m = _scrape(service.metrics_port)
            return m[("anomaly_end_to_end_latency_seconds_count", ())] >= len(rows) and m

        m = wait_for(observed, 60, "the records' end-to-end latencies")
    assert m[("anomaly_end_to_end_latency_seconds_sum", ())] >= 0
    first = (("le", floatToGoString(END_TO_END_BUCKETS[0])),)
    assert m[("anomaly_end_to_end_latency_seconds_bucket", first)] == len(rows)


@pytest.mark.parametrize("client", CLIENTS)
def test_records_without_a_timestamp_are_left_out_of_the_end_to_end_latency(
    client, kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    """Counted as made at the epoch, each added 56 years to the histogram's sum."""
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
