"""Size limits on what the service produces, on both transports, on the real broker of
``kafka_bootstrap``:

- ``[serve.kafka] max_request_size`` is the size a result is cut to: a result whose ``id``
  would take it over the producer's limit goes out with the id cut and marked, as the README
  says, not refused by the producer and dead-lettered instead;
- an output topic whose ``max.message.bytes`` is below the producer's batch size takes every
  result that fits it: a batch of results over it is not refused as a whole (librdkafka
  does not split such a batch, as kafka-python does);
- without a dead-letter topic, a result the output topic refuses for its size is logged as
  its record's rejection and the stream goes on;
- a dead letter the dead-letter topic refuses for its size is cut until it fits."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import orjson
import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from tests._support import LogLines, wait_for
from tests.test_stream_service import (
    CLIENTS,
    _config,
    _produce,
    _read,
    _running,
    _scrape,
    detector,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
__all__ = ["detector"]  # the module-scoped fixture, shared with test_stream_service

LIMIT = 100_000


@pytest.fixture
def topics(kafka_topic_factory):
    return {
        "input_topic": kafka_topic_factory(1, prefix="in"),
        "output_topic": kafka_topic_factory(1, prefix="out"),
        "dlq_topic": kafka_topic_factory(1, prefix="dlq"),
    }


def _limit_output(bootstrap: str, topic: str, max_message_bytes: int) -> None:
    """Set ``topic``'s ``max.message.bytes``."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pytest-limits")
    try:
        limit = {"max.message.bytes": str(max_message_bytes)}
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, limit)
        assert admin.alter_configs([resource]) == {"topic": {topic: "OK"}}
    finally:
        admin.close()


def _normal(detector, n: int) -> list[tuple[bytes, bytes]]:
    """``n`` records of a few keys, each result about 500 bytes."""
    rows = np.random.default_rng(3).normal(size=(n, len(detector.feature_names)))
    return [
        (b"k%d" % (i % 7), orjson.dumps({"id": i, "features": r.tolist()}))
        for i, r in enumerate(rows)
    ]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_result_over_a_smaller_max_request_size_is_cut_not_dead_lettered(
    client, detector, kafka_bootstrap, topics
):
    long_id = "x" * (LIMIT + 50_000)
    features = [0.0] * len(detector.feature_names)
    messages = [
        (b"k", orjson.dumps({"id": long_id, "features": features})),
        (b"k", orjson.dumps({"id": 1, "features": features})),
    ]
    config = _config(kafka_bootstrap, topics, client=client, kafka={"max_request_size": LIMIT})
    with _running(detector, config) as service:
        sent = _produce(kafka_bootstrap, topics["input_topic"], messages)
        results = [orjson.loads(r.value) for r in _read(kafka_bootstrap, topics["output_topic"], 2)]
        stats = service.stats()
    assert sorted((r["partition"], r["offset"]) for r in results) == sorted(sent)
    cut = next(r for r in results if r["id"] != 1)
    assert cut["id_truncated"] is True
    assert cut["id_sha256"] == hashlib.sha256(long_id.encode()).hexdigest()
    assert len(orjson.dumps(cut)) < LIMIT
    assert stats["rejected"] == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_an_output_topic_with_a_limit_below_the_batch_size_takes_every_result(
    client, detector, kafka_bootstrap, topics
):
    """64 KB, a quarter of the producer's 256 KB batches: 3,000 results of about 500 bytes,
    all polled at once, fill batches far larger than that."""
    _limit_output(kafka_bootstrap, topics["output_topic"], 64 * 1024)
    sent = _produce(kafka_bootstrap, topics["input_topic"], _normal(detector, 3000))
    config = _config(kafka_bootstrap, topics, client=client, max_batch_size=512)
    with _running(detector, config) as service:
        wait_for(
            lambda: (
                service.stats()["consumed"] == len(sent) and not service.stats()["pending_results"]
            ),
            60,
            "every record's result or dead letter to be acknowledged",
        )
        assert service.stats()["rejected"] == 0
    results = _read(kafka_bootstrap, topics["output_topic"], len(sent))
    assert {(d["partition"], d["offset"]) for d in (orjson.loads(r.value) for r in results)} == set(
        sent
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_without_a_dead_letter_topic_a_result_the_topic_refuses_is_logged_and_the_stream_goes_on(
    client, detector, kafka_bootstrap, topics
):
    """With ``dlq_topic = ""`` a result too large for the output topic has nowhere to go: its
    record is logged as rejected (``send_failed``), and the input is not paused for ever
    retrying it."""
    _limit_output(kafka_bootstrap, topics["output_topic"], 10_000)
    features = [0.0] * len(detector.feature_names)
    too_large = orjson.dumps({"id": "x" * 20_000, "features": features})
    lines = LogLines()
    logging.getLogger("anomaly.stream").addHandler(lines)
    config = _config(kafka_bootstrap, {**topics, "dlq_topic": ""}, client=client)
    try:
        with _running(detector, config) as service:
            refused = _produce(kafka_bootstrap, topics["input_topic"], [(b"k", too_large)])
            wait_for(lambda: lines.count("rejected"), 60, "the refused result's log line")
            later = _produce(kafka_bootstrap, topics["input_topic"], _normal(detector, 20))
            wait_for(
                lambda: (
                    service.stats()["consumed"] == 21 and not service.stats()["pending_results"]
                ),
                60,
                "the records after it to be scored and their results acknowledged",
            )
            rejected = _scrape(service.metrics_port)
    finally:
        logging.getLogger("anomaly.stream").removeHandler(lines)
    (line,) = [line for line in lines.lines if line.startswith("event=rejected ")]
    assert "reason=send_failed" in line and f"offset={refused[0][1]}" in line
    assert "x" * 100 not in line  # never the record's content
    assert rejected[("anomaly_records_rejected_total", (("reason", "send_failed"),))] == 1
    results = _read(kafka_bootstrap, topics["output_topic"], len(later))
    assert {
        (d["partition"], d["offset"]) for d in map(orjson.loads, (r.value for r in results))
    } == set(later)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_dead_letter_over_a_small_dead_letter_topic_limit_is_cut_until_it_fits(
    client, detector, kafka_bootstrap, topics
):
    """8,000 bytes on the dead-letter topic, below the 16 KB a refused dead letter was cut
    to once: it was then retried for ever, with the input paused."""
    _limit_output(kafka_bootstrap, topics["dlq_topic"], 8000)
    config = _config(kafka_bootstrap, topics, client=client)
    with _running(detector, config) as service:
        (bad,) = _produce(kafka_bootstrap, topics["input_topic"], [(b"k", b"x" * 30_000)])
        later = _produce(kafka_bootstrap, topics["input_topic"], _normal(detector, 10))
        wait_for(
            lambda: service.stats()["consumed"] == 11 and not service.stats()["pending_results"],
            60,
            "every record's result or dead letter to be acknowledged",
        )
    (letter,) = [orjson.loads(r.value) for r in _read(kafka_bootstrap, topics["dlq_topic"], 1)]
    assert (letter["partition"], letter["offset"]) == bad
    assert letter["reason"] == "send_failed" and letter["value_truncated"] is True
    assert letter["value_bytes"] == 30_000
    results = _read(kafka_bootstrap, topics["output_topic"], len(later))
    assert {
        (d["partition"], d["offset"]) for d in map(orjson.loads, (r.value for r in results))
    } == set(later)
