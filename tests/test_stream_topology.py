"""The Kafka scoring service while the input topic changes under it, on the session broker.

Partitions added to the input topic while the service runs: an operator adds them to scale
out, and their records must be scored within seconds, not once the client's metadata ages
out (5 minutes at the clients' defaults).
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewPartitions

import anomaly
from tests._support import wait_for
from tests.test_stream_service import CLIENTS, _config, _running

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "bundle-v3"
#: Well under the clients' default metadata age (300 s), well over the service's (15 s)
#: and the rebalance it starts.
NEW_PARTITIONS_DEADLINE_S = 60


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """The read-only fixture bundle (features a, b, c, d), loaded from a copy."""
    copy = tmp_path_factory.mktemp("topology") / "model"
    return anomaly.load(shutil.copytree(FIXTURE, copy))


def _read_ids(bootstrap: str, topic: str, count: int, deadline_s: float) -> set:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"reader-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    ids: set = set()
    deadline = time.monotonic() + deadline_s
    try:
        while len(ids) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                ids.update(orjson.loads(r.value)["id"] for r in batch)
    finally:
        consumer.close()
    return ids


@pytest.mark.parametrize("client", CLIENTS)
def test_partitions_added_to_the_input_topic_are_consumed_within_seconds(
    kafka_bootstrap, kafka_topic_factory, detector, client
):
    topics = {
        "input_topic": kafka_topic_factory(1, prefix="in"),
        "output_topic": kafka_topic_factory(1, prefix="out"),
        "dlq_topic": kafka_topic_factory(1, prefix="dlq"),
    }
    config = _config(kafka_bootstrap, topics, client=client)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, linger_ms=5, metadata_max_age_ms=500
    )
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        with _running(detector, config) as service:

            def send(ids, partition=None):
                for i in ids:
                    value = orjson.dumps({"id": i, "features": [0.1, 0.2, 0.3, 0.4]})
                    producer.send(topics["input_topic"], value=value, partition=partition)
                producer.flush(timeout=30)

            send(range(10), partition=0)
            assert _read_ids(kafka_bootstrap, topics["output_topic"], 10, 30) == set(range(10))

            admin.create_partitions({topics["input_topic"]: NewPartitions(total_count=3)})
            wait_for(
                lambda: len(producer.partitions_for(topics["input_topic"]) or ()) == 3,
                30,
                "the producer to see 3 partitions",
            )
            send(range(100, 110), partition=1)
            send(range(200, 210), partition=2)
            wanted = set(range(10)) | set(range(100, 110)) | set(range(200, 210))
            got = _read_ids(
                kafka_bootstrap, topics["output_topic"], len(wanted), NEW_PARTITIONS_DEADLINE_S
            )
            assert got == wanted, f"no result for {sorted(wanted - got)}"
            assert {tp.partition for tp in service.assignment()} == {0, 1, 2}
    finally:
        producer.close(timeout=10)
        admin.close()
