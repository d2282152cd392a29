"""``[serve.kafka] max_request_size`` is the size a result is cut to, on both transports, on
the real broker of ``kafka_bootstrap``: a result whose ``id`` would take it over the
producer's limit goes out with the id cut and marked, as the README says, not refused by
the producer and dead-lettered instead."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from tests.test_stream_service import CLIENTS, _config, _produce, _read, _running, detector

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
__all__ = ["detector"]  # the module-scoped fixture, shared with test_stream_service

LIMIT = 100_000


@pytest.mark.parametrize("client", CLIENTS)
def test_a_result_over_a_smaller_max_request_size_is_cut_not_dead_lettered(
    client, detector, kafka_bootstrap, kafka_topic_factory
):
    topics = {
        "input_topic": kafka_topic_factory(1, prefix="in"),
        "output_topic": kafka_topic_factory(1, prefix="out"),
        "dlq_topic": kafka_topic_factory(1, prefix="dlq"),
    }
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
