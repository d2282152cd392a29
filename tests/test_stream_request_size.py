"""Size limits on what the service produces, on both transports, on the real broker of
``kafka_bootstrap``:

- ``[serve.kafka] max_request_size`` is the size a result is cut to: a result whose ``id``
  would take it over the producer's limit goes out with the id cut and marked, as the README
  says, not refused by the producer and dead-lettered instead;
- an output topic whose ``max.message.bytes`` is below the producer's batch size takes every
  result that fits it: a batch of results over it is not refused as a whole (librdkafka
  does not split such a batch, as kafka-python does)."""

from __future__ import annotations

import hashlib

import numpy as np
import orjson
import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from tests._support import wait_for
from tests.test_stream_service import CLIENTS, _config, _produce, _read, _running, detector

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
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="pytest-limits")
    try:
        limit = {"max.message.bytes": str(64 * 1024)}
        output = ConfigResource(ConfigResourceType.TOPIC, topics["output_topic"], limit)
        assert admin.alter_configs([output]) == {"topic": {topics["output_topic"]: "OK"}}
    finally:
        admin.close()
    rows = np.random.default_rng(3).normal(size=(3000, len(detector.feature_names)))
    messages = [
        (b"k%d" % (i % 7), orjson.dumps({"id": i, "features": r.tolist()}))
        for i, r in enumerate(rows)
    ]
    sent = _produce(kafka_bootstrap, topics["input_topic"], messages)
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
