"""The local Kafka broker (deploy/kafka/kafka-local) does a real produce-consume-commit round trip,
over PLAINTEXT and over each of its secured listeners, refuses bad credentials, and keeps its
port and data across a restart.

Runs against the session broker of the ``kafka_bootstrap`` and ``kafka_secure`` fixtures, and
a broker of its own from ``restartable_kafka`` (tests/conftest.py).
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaTimeoutError

from tests._support import wait_for

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


# -- secured listeners (kafka-local start --secure) ----------------------------------------

SECURE_MODES = ["ssl", "mtls", "sasl_plain", "sasl_scram256", "sasl_scram512"]
REFUSED_BOOTSTRAP_MS = 3000
BROKER_LOG_DEADLINE_S = 10


def _read_back(bootstrap: str, options: dict, topic: str, count: int) -> list[bytes]:
    """Every value of partition 0 of ``topic`` from the start, once ``count`` have come."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        **options,
    )
    received: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])

        def all_received() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                received.extend(record.value for record in records)
            return len(received) >= count

        wait_for(all_received, CONSUME_DEADLINE_S, f"{count} records from {topic}")
    finally:
        consumer.close(autocommit=False)
    return received


@pytest.mark.slow
@pytest.mark.parametrize("mode", SECURE_MODES)
def test_each_secured_listener_round_trips_a_record_with_kafka_python(kafka_secure, mode):
    listener = kafka_secure[mode]
    options = listener.client_options()
    assert listener.bootstrap != kafka_secure.bootstrap
    if mode.startswith("sasl_"):
        # The mode names its password by file; the client gets it inlined.
        assert "sasl_plain_password" not in listener.options
        assert options["sasl_plain_password"] == Path(kafka_secure.sasl_password_file).read_text()
    topic = f"secure-{mode}-{uuid.uuid4().hex[:10]}"
    value = f"over {mode}".encode()

    admin = KafkaAdminClient(bootstrap_servers=listener.bootstrap, **options)
    try:
        admin.create_topics(
            {topic: {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True
        )
        producer = KafkaProducer(bootstrap_servers=listener.bootstrap, acks="all", **options)
        try:
            metadata = producer.send(topic, value=value).get(timeout=30)
        finally:
            producer.close(timeout=10)
        assert (metadata.topic, metadata.partition, metadata.offset) == (topic, 0, 0)

        assert _read_back(listener.bootstrap, options, topic, 1) == [value]
    finally:
        admin.delete_topics([topic], raise_errors=False)
        admin.close()


_FAILED_AUTHENTICATION = re.compile(
    r"Failed authentication with \S+ \(channelId=127\.0\.0\.1:(?P<port>\d+)-[^)]*\) "
    r"\((?P<reason>.*)\) \(org\.apache\.kafka\.common\.network\.Selector\)"
)


def _refusals_since(server_log: Path, offset: int, bootstrap: str) -> list[str]:
    """The reasons the broker logged, after byte ``offset`` of its log, for refusing
    connections to the listener ``bootstrap``."""
    port = bootstrap.rsplit(":", 1)[1]
    with server_log.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return [m["reason"] for m in _FAILED_AUTHENTICATION.finditer(text) if m["port"] == port]


def _assert_cannot_bootstrap(bootstrap: str, options: dict) -> None:
    with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"):
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, bootstrap_timeout_ms=REFUSED_BOOTSTRAP_MS, **options
        )
        consumer.close()


@pytest.mark.slow
def test_sasl_scram_with_a_wrong_password_is_refused_as_an_authentication_failure(kafka_secure):
    listener = kafka_secure["sasl_scram256"]
    options = listener.client_options()
    options["sasl_plain_password"] = "not-" + options["sasl_plain_password"]
    log_offset = kafka_secure.server_log.stat().st_size

    _assert_cannot_bootstrap(listener.bootstrap, options)

    # Why it was refused, as the broker says: kafka-python 3.0.12 mostly reports these attempts
    # as "socket disconnected" (it drops the broker's SaslAuthenticate error response when the
    # broker's close arrives in the same read), so the broker's log is the reliable witness.
    reasons = wait_for(
        lambda: _refusals_since(kafka_secure.server_log, log_offset, listener.bootstrap),
        BROKER_LOG_DEADLINE_S,
        "the broker to log the refused SCRAM authentication",
    )
    assert set(reasons) == {
        "Authentication failed during authentication due to invalid credentials with SASL "
        "mechanism SCRAM-SHA-256"
    }


@pytest.mark.slow
def test_mtls_listener_refuses_a_client_without_a_certificate(kafka_secure):
    mutual = kafka_secure["mtls"]
    without_certificate = {
        k: v for k, v in mutual.options.items() if k not in ("ssl_certfile", "ssl_keyfile")
    }
    # The same options are good enough for the server-authenticated listener ...
    consumer = KafkaConsumer(bootstrap_servers=kafka_secure["ssl"].bootstrap, **without_certificate)
    consumer.close()
    log_offset = kafka_secure.server_log.stat().st_size

    # ... but the mutual-TLS listener refuses them in the TLS handshake.
    _assert_cannot_bootstrap(mutual.bootstrap, without_certificate)

    reasons = wait_for(
        lambda: _refusals_since(kafka_secure.server_log, log_offset, mutual.bootstrap),
        BROKER_LOG_DEADLINE_S,
        "the broker to log the refused TLS handshake",
    )
    assert set(reasons) == {"SSL handshake failed"}


# -- restart: same port, same data ---------------------------------------------------------

RESTART_RECORDS = 20


def _port_refuses_connections(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.slow
def test_topic_with_records_survives_stop_and_start_on_the_same_port(restartable_kafka):
    bootstrap = restartable_kafka.bootstrap
    topic = f"survives-{uuid.uuid4().hex[:10]}"
    group_id = f"survives-{uuid.uuid4().hex[:10]}"
    tp = TopicPartition(topic, 0)
    sent = [f"record-{i:02d}".encode() for i in range(RESTART_RECORDS)]

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {topic: {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True
        )
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, value=value, partition=0) for value in sent]
        producer.flush(timeout=30)
        assert [f.get(timeout=30).offset for f in futures] == list(range(RESTART_RECORDS))
    finally:
        producer.close(timeout=10)
    # A group's committed offset is data too (in __consumer_offsets).
    committer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id)
    try:
        committer.assign([tp])
        committer.commit({tp: OffsetAndMetadata(RESTART_RECORDS // 2)})
    finally:
        committer.close(autocommit=False)

    restartable_kafka.stop()
    assert not restartable_kafka.is_running()
    assert _port_refuses_connections(bootstrap)

    assert restartable_kafka.start() == bootstrap
    assert _read_back(bootstrap, {}, topic, RESTART_RECORDS) == sent
    resumed = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id)
    try:
        assert resumed.committed(tp) == RESTART_RECORDS // 2
        assert resumed.end_offsets([tp]) == {tp: RESTART_RECORDS}
    finally:
        resumed.close(autocommit=False)

    # `kafka-local restart` (stop, then start) keeps them too.
    assert restartable_kafka.restart() == bootstrap
    assert _read_back(bootstrap, {}, topic, RESTART_RECORDS) == sent
