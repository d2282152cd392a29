"""What other clients send, on the real broker of ``kafka_bootstrap``: batches librdkafka
(confluent-kafka) compresses with each codec are all scored, and the service's own producer
with ``[serve.kafka] compression_type`` writes results a plain consumer reads; a batch that
cannot be unpacked (damaged on disk: a failed CRC or a payload its codec cannot read, or a
decompression bomb) is dead-lettered record by record; records of an aborted transaction
are not scored. Each on both transports (``client``)."""

from __future__ import annotations

import logging
import struct
import time
import uuid

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

import anomaly
from tests._support import wait_for
from tests.test_stream_service import (
    CLIENTS,
    _commit,
    _committed,
    _config,
    _produce,
    _read,
    _running,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CODECS = ["gzip", "snappy", "lz4", "zstd"]
RECORDS = 60
RESULT_DEADLINE_S = 60


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return anomaly.load(tiny_bundle)


def _one_partition_topics(kafka_topic_factory):
    """Input, output and dead-letter topics of one partition each: offsets in order."""
    return {
        role: kafka_topic_factory(1, prefix=role.split("_")[0])
        for role in ("input_topic", "output_topic", "dlq_topic")
    }


@pytest.fixture
def topics(kafka_topic_factory):
    return {
        "input_topic": kafka_topic_factory(2, prefix="in"),
        "output_topic": kafka_topic_factory(2, prefix="out"),
        "dlq_topic": kafka_topic_factory(1, prefix="dlq"),
    }


def _records(detector, n):
    rows = np.random.default_rng(7).normal(size=(n, len(detector.feature_names)))
    return [
        (f"key-{i % 5}".encode(), orjson.dumps({"id": i, "features": row.tolist()}))
        for i, row in enumerate(rows)
    ]


def _produce_with_librdkafka(bootstrap, topic, codec, messages, headers=None, partition=None):
    """Send with librdkafka, ``codec``-compressed, lingering so batches hold many records
    (message ``i`` with ``headers[i]``, if given; all to ``partition``, if given); return
    each record's (partition, offset)."""
    from confluent_kafka import Producer

    delivered, failed = [], []

    def on_delivery(error, message):
        if error is not None:
            failed.append(error)
        else:
            delivered.append((message.partition(), message.offset()))

    producer = Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 50}
    )
    for i, (key, value) in enumerate(messages):
        extra = {"headers": headers[i]} if headers and i in headers else {}
        if partition is not None:
            extra["partition"] = partition
        producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **extra)
    assert producer.flush(30) == 0, "librdkafka did not deliver every record"
    assert not failed, failed
    return delivered


def _count_with_librdkafka(bootstrap, topic):
    """How many records of ``topic`` librdkafka reads (up to ``RECORDS``)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"batches-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        messages = []
        deadline = time.monotonic() + 30
        while len(messages) < RECORDS and time.monotonic() < deadline:
            messages.extend(m for m in consumer.consume(RECORDS, timeout=1) if not m.error())
        return len(messages)
    finally:
        consumer.close()


def _read_results(bootstrap, topic, count):
    """Every result on ``topic`` once ``count`` are there, read by a plain consumer."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        results = []
        deadline = time.monotonic() + RESULT_DEADLINE_S
        while len(results) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                results.extend(orjson.loads(r.value) for r in batch)
        return results
    finally:
        consumer.close()


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("codec", CODECS)
def test_every_record_of_librdkafka_compressed_batches_is_scored_once(
    codec, client, detector, topics, kafka_bootstrap
):
    messages = _records(detector, RECORDS)
    sent = _produce_with_librdkafka(kafka_bootstrap, topics["input_topic"], codec, messages)
    config = _config(kafka_bootstrap, topics, client=client)
    with _running(detector, config):
        results = _read_results(kafka_bootstrap, topics["output_topic"], RECORDS)
    scored = sorted((r["partition"], r["offset"]) for r in results)
    assert scored == sorted(sent), f"{codec}: results do not match the input one to one"
    assert all("score" in r for r in results)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("codec", CODECS)
def test_results_compressed_with_each_codec_are_read_by_a_plain_consumer(
    codec, client, detector, topics, kafka_bootstrap
):
    messages = _records(detector, RECORDS)
    sent = _produce(kafka_bootstrap, topics["input_topic"], messages)
    config = _config(kafka_bootstrap, topics, kafka={"compression_type": codec}, client=client)
    with _running(detector, config):
        results = _read_results(kafka_bootstrap, topics["output_topic"], RECORDS)
    assert sorted((r["partition"], r["offset"]) for r in results) == sorted(sent)
    # librdkafka reads them too: the batches are valid for other clients, not only ours.
    assert _count_with_librdkafka(kafka_bootstrap, topics["output_topic"]) == RECORDS


def test_a_batch_that_cannot_be_decompressed_is_dead_lettered_record_by_record(
    detector, kafka_topic_factory, kafka_bootstrap, monkeypatch
):
    """A corrupt compressed payload (its checksum passes; its codec fails), simulated by a
    zstd decoder that fails: each of its records gets a dead letter (reason ``unreadable``,
    with topic, partition and offset), the plain batches around it are all scored, and the
    service neither stops nor spins on it (kafka-python would, without the seek)."""
    import kafka.record.default_records as default_records
    import zstandard

    # Imported first: its import installs the bounded decoders (codecs.install), which
    # would replace the patch below had the service imported it later (a run of this test
    # alone scored the broken records).
    import anomaly.stream.kafka_python_transport  # noqa: F401

    def corrupt(_data):
        raise zstandard.ZstdError("could not decompress data: Corrupted block detected")

    monkeypatch.setattr(default_records, "zstd_decode", corrupt)
    topics = _one_partition_topics(kafka_topic_factory)
    messages = _records(detector, 30)
    before = _produce(kafka_bootstrap, topics["input_topic"], messages[:10])
    broken = _produce_with_librdkafka(
        kafka_bootstrap, topics["input_topic"], "zstd", messages[10:20]
    )
    after = _produce(kafka_bootstrap, topics["input_topic"], messages[20:])
    config = _config(kafka_bootstrap, topics)
    with _running(detector, config) as service:
        results = _read_results(kafka_bootstrap, topics["output_topic"], 20)
        letters = _read_results(kafka_bootstrap, topics["dlq_topic"], 10)
        assert service.ready()
    assert sorted((r["partition"], r["offset"]) for r in results) == sorted(before + after)
    assert sorted((d["partition"], d["offset"]) for d in letters) == sorted(broken)
    assert {d["reason"] for d in letters} == {"unreadable"}
    assert all("ZstdError" in d["error"] and d["topic"] == topics["input_topic"] for d in letters)


def test_a_restore_read_that_meets_a_batch_it_cannot_read_gives_up_that_partition_alone(
    detector, kafka_topic_factory, kafka_bootstrap, monkeypatch, caplog
):
    """kafka-python's restore read (``serve.restore_records``, at a start or a rebalance)
    used to give up every partition it was reading on one batch it could not unpack, so
    one corrupt batch restarted the keys of all of them afresh: now only its own partition
    starts afresh (as librdkafka's read does), named in the log line, and the others are
    read whole."""
    import kafka.record.default_records as default_records
    import zstandard

    from anomaly.stream.kafka_python_transport import KafkaPythonTransport
    from anomaly.stream.transport import TopicPartition as Partition

    def corrupt(_data):
        raise zstandard.ZstdError("could not decompress data: Corrupted block detected")

    monkeypatch.setattr(default_records, "zstd_decode", corrupt)
    topic = kafka_topic_factory(2, prefix="in")
    messages = _records(detector, 20)
    _produce_with_librdkafka(kafka_bootstrap, topic, "zstd", messages[:10], partition=0)
    plain = _produce_with_librdkafka(kafka_bootstrap, topic, "none", messages[10:], partition=1)
    out = kafka_topic_factory(1, prefix="out")
    config = _config(kafka_bootstrap, {"input_topic": topic, "output_topic": out, "dlq_topic": ""})
    transport = KafkaPythonTransport(config, "restore-test", listener=None)
    transport.check()
    caplog.set_level(logging.WARNING, logger="anomaly.stream")

    ends = {Partition(topic, 0): 10, Partition(topic, 1): 10}
    records, unread = transport.read_before(ends, 100, 30.0, lambda: False)

    assert unread == {Partition(topic, 0)}
    assert sorted((r.partition, r.offset) for r in records) == sorted(plain)
    assert "event=restore_read_failed partition=0 " in caplog.text


def _segment_of(log_dir, topic: str):
    (segment,) = sorted((log_dir / f"{topic}-0").glob("*.log"))
    return segment


def _batches(data: bytearray):
    """(base offset, start, end) of each record batch in a log segment's bytes."""
    position = 0
    while position + 12 <= len(data):
        base, length = struct.unpack(">qi", data[position : position + 12])
        end = position + 12 + length
        yield base, position, end
        position = end


def _seal(data: bytearray, start: int, end: int) -> None:
    """Write the CRC32C that a v2 batch's bytes have now: it passes every check."""
    import crc32c

    data[start + 17 : start + 21] = struct.pack(">I", crc32c.crc32c(bytes(data[start + 21 : end])))


def _damage_batches_on_disk(log_dir, topic: str, offsets: range, how: str) -> None:
    """Damage, in the broker's log segment of ``topic``'s partition 0, every record batch
    that starts within ``offsets`` (a producer may send records in one batch or, when its
    metadata comes late, in more). ``crc`` flips a batch's last byte
    (its CRC32C then fails); ``codec`` breaks its compressed payload's magic number and
    writes a CRC that matches (the batch passes the check and its codec fails). The broker
    serves them as they are."""
    segment = _segment_of(log_dir, topic)
    data = bytearray(segment.read_bytes())
    damaged = False
    for base, start, end in _batches(data):
        if base in offsets:
            if how == "crc":
                data[end - 1] ^= 0xFF
            else:
                payload = start + 61  # after the v2 batch header
                data[payload : payload + 4] = b"\x00\x00\x00\x00"
                _seal(data, start, end)
            damaged = True
    assert damaged, f"no batch starts in {offsets} in {segment}"
    with segment.open("r+b") as file:  # in place: the broker has the file open
        file.write(data)


def _rewrite_on_disk(log_dir, topic: str, old: bytes, new: bytes) -> range:
    """Replace ``old`` (once) by as many bytes ``new`` in the log of ``topic``'s partition 0
    and seal the batch that holds it: the broker serves what a producer could have sent.
    The offsets of that batch."""
    segment = _segment_of(log_dir, topic)
    data = bytearray(segment.read_bytes())
    at = data.find(old)
    assert at >= 0 and len(new) == len(old), f"{old!r} is not in {segment}"
    data[at : at + len(new)] = new
    ((base, start, end),) = [batch for batch in _batches(data) if batch[1] <= at < batch[2]]
    _seal(data, start, end)
    with segment.open("r+b") as file:
        file.write(data)
    (last_delta,) = struct.unpack(">i", data[start + 23 : start + 27])
    return range(base, base + last_delta + 1)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_header_name_that_is_not_utf8_is_read_with_its_whole_batch(
    client, detector, kafka_topic_factory, kafka_bootstrap, kafka_log_dir
):
    """The protocol's header name is a string, but librdkafka's C API (and Go's clients)
    send whatever bytes a producer gives, and the broker keeps them: here one record's name
    is made two bytes that are not UTF-8 (in the log, as such a producer would have written
    it). The service never reads headers: that record and every record after it in its
    batch are scored, none dead-lettered (kafka-python gave up the rest of the batch, one
    record per fetch)."""
    topics = _one_partition_topics(kafka_topic_factory)
    messages = _records(detector, 20)
    placeholder = b"header-name-of-record-5"
    sent = _produce_with_librdkafka(
        kafka_bootstrap,
        topics["input_topic"],
        "none",
        messages,
        headers={5: [(placeholder.decode(), b"v")], 6: [("trace", b"\xc3\x28")]},
    )
    batch = _rewrite_on_disk(
        kafka_log_dir, topics["input_topic"], placeholder, b"\xff\xfe" + placeholder[2:]
    )
    assert 5 in batch and batch.stop > 6, f"record 5 is the last of its batch {batch}"
    config = _config(kafka_bootstrap, topics, client=client)
    with _running(detector, config):
        results = _read_results(kafka_bootstrap, topics["output_topic"], len(messages))
    assert sorted((r["partition"], r["offset"]) for r in results) == sorted(sent)
    assert all("score" in r for r in results)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("how", ["crc", "codec"])
@pytest.mark.parametrize("committed", [None, 12], ids=["from-start", "restarted-inside"])
def test_a_batch_damaged_on_disk_is_dead_lettered_record_by_record(
    committed, how, client, detector, kafka_topic_factory, kafka_bootstrap, kafka_log_dir
):
    """Two damaged batches in the broker's log, between readable ones: each of their records
    gets a dead letter (``unreadable``, with its offset), the records around it are all
    scored once, and the service neither stops nor spins on it (neither client moves past
    such a batch by itself; librdkafka even loses its place after a failed CRC). A service
    restarted inside the first batch (its group committed at 12, past two dead letters)
    dead-letters each record from there once, not the batch's first two again."""
    topics = _one_partition_topics(kafka_topic_factory)
    messages = _records(detector, 30)
    before = _produce(kafka_bootstrap, topics["input_topic"], messages[:10])
    codec = "zstd" if how == "codec" else "none"
    broken = [  # two batches (a flush between), both damaged: one after the other
        *_produce_with_librdkafka(kafka_bootstrap, topics["input_topic"], codec, messages[10:15]),
        *_produce_with_librdkafka(kafka_bootstrap, topics["input_topic"], codec, messages[15:20]),
    ]
    after = _produce(kafka_bootstrap, topics["input_topic"], messages[20:])
    assert sorted(o for _, o in broken) == list(range(10, 20))
    _damage_batches_on_disk(kafka_log_dir, topics["input_topic"], range(10, 20), how)
    config = _config(kafka_bootstrap, topics, client=client)
    partition = TopicPartition(topics["input_topic"], 0)
    if committed is not None:
        _commit(kafka_bootstrap, config.group_id, partition, committed)
    with _running(detector, config) as service:
        wait_for(
            lambda: _committed(kafka_bootstrap, config.group_id, partition) == 30,
            RESULT_DEADLINE_S,
            "the last record's offset committed",
        )
        assert service.ready()
    # Read once the service stopped: a record scored or dead-lettered twice is there too.
    results = [orjson.loads(r.value) for r in _read(kafka_bootstrap, topics["output_topic"], 1)]
    letters = [orjson.loads(r.value) for r in _read(kafka_bootstrap, topics["dlq_topic"], 1)]
    start = committed or 0
    scored = sorted((r["partition"], r["offset"]) for r in results)
    assert scored == sorted(r for r in before + after if r[1] >= start), "each scored once"
    dead = sorted((d["partition"], d["offset"]) for d in letters)
    assert dead == sorted(r for r in broken if r[1] >= start), "each dead-lettered once"
    assert {d["reason"] for d in letters} == {"unreadable"}


@pytest.mark.parametrize("client", CLIENTS)
def test_a_decompression_bomb_is_dead_lettered_without_unpacking_it_whole(
    client, detector, kafka_topic_factory, kafka_bootstrap, monkeypatch
):
    """A zstd record of a few kilobytes that unpacks past the ceiling (lowered to 1 MiB
    here, 64 MiB by default): the service stops unpacking at the ceiling, dead-letters the
    record (``unreadable``, naming the bomb; librdkafka: a codec failure) and scores its
    neighbours."""
    from anomaly.stream import codecs

    monkeypatch.setattr(codecs, "MAX_BATCH_BYTES", 1024 * 1024)
    topics = _one_partition_topics(kafka_topic_factory)
    messages = _records(detector, 10)
    before = _produce(kafka_bootstrap, topics["input_topic"], messages[:5])
    from confluent_kafka import Producer

    bomb = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "compression.type": "zstd",
            "message.max.bytes": 10_000_000,
        }
    )
    bomb.produce(topics["input_topic"], value=b"0" * 3_000_000)
    assert bomb.flush(30) == 0
    after = _produce(kafka_bootstrap, topics["input_topic"], messages[5:])
    with _running(detector, _config(kafka_bootstrap, topics, client=client)):
        results = _read_results(kafka_bootstrap, topics["output_topic"], 10)
        letters = _read_results(kafka_bootstrap, topics["dlq_topic"], 1)
    assert sorted((r["partition"], r["offset"]) for r in results) == sorted(before + after)
    ((letter,),) = [letters]
    named = {"kafka-python": "DecompressionBombError", "confluent": "_BAD_COMPRESSION"}[client]
    assert letter["reason"] == "unreadable" and named in letter["error"]
    assert letter["offset"] == 5


@pytest.mark.parametrize("client", CLIENTS)
def test_records_of_an_aborted_transaction_are_not_scored(
    client, detector, topics, kafka_bootstrap
):
    """A librdkafka transactional producer aborts one transaction and commits the next:
    only the committed records get results (the consumer reads committed records only)."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"}
    )
    producer.init_transactions(30)
    messages = _records(detector, 10)
    for commit, part in ((False, messages[:5]), (True, messages[5:])):
        producer.begin_transaction()
        for key, value in part:
            producer.produce(topics["input_topic"], value=value, key=key)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)
            producer.abort_transaction(30)
    with _running(detector, _config(kafka_bootstrap, topics, client=client)) as service:
        results = _read_results(kafka_bootstrap, topics["output_topic"], 5)
        wait_for(lambda: service.stats()["commits"] > 0, 30, "the offsets to be committed")
    assert sorted(r["id"] for r in results) == [5, 6, 7, 8, 9]
