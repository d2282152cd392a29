"""The local Kafka broker (deploy/kafka/kafka-local) does a real produce-consume-commit round trip.

Runs against the session broker of the ``kafka_bootstrap`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = pytest.mark.kafka

PARTITIONS = 4
MESSAGES = 100
PER_PARTITION = MESSAGES // PARTITIONS
CONSUME_DEADLINE_S = 30


def _consumer(bootstrap: str, group_id: str) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # One fetch is in flight per broker: keep the broker's wait short so caught-up
        # partitions do not hold the others back (the default is 500 ms).
        fetch_max_wait_ms=20,
    )


def _produce(bootstrap: str, topic: str) -> dict[int, list[bytes]]:
    """Send MESSAGES records round-robin over the partitions; returns values per partition."""
    sent: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = []
        for i in range(MESSAGES):
            partition = i % PARTITIONS
            value = f"message-{i:03d}".encode()
            futures.append(
                producer.send(topic, value=value, key=f"key-{i:03d}".encode(), partition=partition)
            )
            sent[partition].append(value)
        producer.flush(timeout=30)
        for future in futures:
            metadata = future.get(timeout=30)
            assert metadata.topic == topic
    finally:
        producer.close(timeout=10)
    return sent


def test_topic_factory_creates_a_ready_topic_with_the_requested_partitions(
    kafka_bootstrap, kafka_topic_factory
):
    topic = kafka_topic_factory(partitions=PARTITIONS)

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.partitions_for_topic(topic) == set(range(PARTITIONS))
    finally:
        consumer.close()


def test_100_messages_over_4_partitions_come_back_in_order_and_commit_moves_group_to_log_end(
    kafka_bootstrap, kafka_topic_factory
):
    topic = kafka_topic_factory(partitions=PARTITIONS)
    group_id = f"round-trip-{uuid.uuid4().hex[:10]}"
    sent = _produce(kafka_bootstrap, topic)
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    received: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    offsets: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    consumer = _consumer(kafka_bootstrap, group_id)
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + CONSUME_DEADLINE_S
        count = 0
        while count < MESSAGES and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    received[tp.partition].append(record.value)
                    offsets[tp.partition].append(record.offset)
                    count += 1
        assert count == MESSAGES, f"consumed {count} of {MESSAGES} in {CONSUME_DEADLINE_S} s"

        # Every partition got its share, in the order it was produced, at offsets 0..24.
        assert received == sent
        assert all(offsets[p] == list(range(PER_PARTITION)) for p in range(PARTITIONS))
        assert consumer.end_offsets(partitions) == {tp: PER_PARTITION for tp in partitions}

        # Nothing is committed before the explicit commit (auto-commit is off) ...
        assert all(consumer.committed(tp) is None for tp in partitions)
        consumer.commit()
        # ... and afterwards the group's offsets are the log end of every partition.
        assert {tp: consumer.committed(tp) for tp in partitions} == {
            tp: PER_PARTITION for tp in partitions
        }
    finally:
        consumer.close(autocommit=False)

    # A new member of the same group resumes from the committed offsets: nothing is left.
    resumed = _consumer(kafka_bootstrap, group_id)
    try:
        resumed.subscribe([topic])
        deadline = time.monotonic() + 10
        while not resumed.assignment() and time.monotonic() < deadline:
            resumed.poll(timeout_ms=200)
        assert resumed.assignment() == set(partitions)
        assert {tp: resumed.position(tp) for tp in partitions} == {
            tp: PER_PARTITION for tp in partitions
        }
        assert resumed.poll(timeout_ms=500) == {}
    finally:
        resumed.close(autocommit=False)
