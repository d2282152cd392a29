"""Input written by transactional producers (Kafka Streams and Flink with exactly-once, the
outbox pattern), on the real broker, on both clients.

A read_committed consumer never returns a transaction's marker, nor the records of an
aborted transaction; each takes an offset all the same. What an operator relies on: aborted
records are never scored, and once every committed record has its result the service says
it is caught up (lag 0) and the group's committed offsets reach the end of the partitions
(KEDA and ``kafka-consumer-groups`` read those).
"""

from __future__ import annotations

import uuid

import orjson
import pytest
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition

from tests._support import wait_for
from tests.test_stream_service import (
    CLIENTS,
    _config,
    _normal_rows,
    _read,
    _record,
    _running,
    _scrape,
    detector,
    topics,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
__all__ = ["detector", "topics"]  # fixtures shared with test_stream_service


def _lags(port: int) -> list[float]:
    return [v for (name, _), v in _scrape(port).items() if name == "anomaly_consumer_lag_records"]


@pytest.mark.parametrize("client", CLIENTS)
def test_after_committed_and_aborted_transactions_lag_is_0_and_the_group_reaches_the_end(
    client, kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    from confluent_kafka import Producer

    t = topics(2)
    config = _config(kafka_bootstrap, t, client=client)
    names = detector.feature_names
    rows = _normal_rows(tiny_bundle_mixing, 90, seed=5)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"}
    )
    with _running(detector, config) as service:
        producer.init_transactions(30)
        for start in range(0, 90, 30):  # 20 records committed, then 10 aborted, 3 times
            for aborted, records in (
                (False, range(start, start + 20)),
                (True, range(start + 20, start + 30)),
            ):
                producer.begin_transaction()
                for i in records:
                    value = _record(f"aborted-{i}" if aborted else i, rows[i], names, False)
                    producer.produce(t["input_topic"], value, f"k{i % 7}".encode())
                producer.flush(30)
                if aborted:
                    producer.abort_transaction(30)
                else:
                    producer.commit_transaction(30)
        wait_for(lambda: service.stats()["scored"] >= 60, 60, "the committed records scored")

        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
        partitions = [KafkaTopicPartition(t["input_topic"], p) for p in range(2)]
        ends = consumer.end_offsets(partitions)
        consumer.close()
        wait_for(
            lambda: len(_lags(service.metrics_port)) == 2 and not any(_lags(service.metrics_port)),
            30,
            "the lag to come to 0 past transaction markers and aborted records",
        )
        group = KafkaConsumer(
            bootstrap_servers=kafka_bootstrap, group_id=config.group_id, enable_auto_commit=False
        )
        try:
            wait_for(
                lambda: {tp: group.committed(tp) for tp in partitions} == ends,
                30,
                f"the group's committed offsets to reach the partitions' ends {ends}",
            )
        finally:
            group.close(autocommit=False)

    ids = [orjson.loads(r.value)["id"] for r in _read(kafka_bootstrap, t["output_topic"], 60)]
    assert sorted(ids) == sorted(i for s in range(0, 90, 30) for i in range(s, s + 20))
