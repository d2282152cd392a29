"""No message can stop the service: a fuzz run on the real broker.

Over ten thousand malformed messages of more than twenty kinds (every case that once
stopped the service among them: unpaired surrogates in ``id`` and ``timestamp``, an ``id``
nested 300 deep, a message whose result would be over the producer's limit, a non-JSON value
under a 600 KB key) are interleaved at random with good records. The service must stay up,
give every good record its result, put every malformed one in the dead-letter topic with its
reason and where it came from, and count in its metrics exactly what the topics hold.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from tests.test_stream_service import _config, _read, _running, _scrape, detector

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
__all__ = ["detector"]  # the module-scoped fixture, shared with test_stream_service

MALFORMED = 10_000
GOOD = 2_000
#: Bytes of the largest input message the test topic takes (the broker's default is about
#: 1 MiB; the too-large kind must get past the broker to reach the service).
TOPIC_MAX_BYTES = 2_000_000
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576


def _features(rng, names):
    return rng.normal(size=len(names)).round(6).tolist()


def _good(rng, i, names, _key):
    if i % 2:
        return orjson.dumps({"id": f"g{i}", "features": _features(rng, names), "timestamp": i})
    return orjson.dumps(
        {"id": f"g{i}", "features": dict(zip(names, _features(rng, names), strict=True))}
    )


def _with(rng, names, i, **fields) -> bytes:
    """A record that is good but for ``fields``, spliced in as raw JSON text."""
    text = orjson.dumps({"features": _features(rng, names)})[:-1]
    extra = b"".join(b', "' + k.encode() + b'": ' + v for k, v in fields.items())
    return text + extra + b"}"


#: kind -> (reason, how to make one: (rng, i, feature names) -> value). Small messages.
KINDS = {
    "garbage": ("not_json", lambda rng, i, n: b"\x00" + rng.bytes(int(rng.integers(1, 200)))),
    "truncated": ("not_json", lambda rng, i, n: _good(rng, i, n, None)[: int(rng.integers(1, 20))]),
    "invalid_utf8": ("not_json", lambda rng, i, n: _with(rng, n, i, id=b'"\xff\xfe\xc3"')),
    "empty": ("not_json", lambda rng, i, n: b""),
    "tombstone": ("not_json", lambda rng, i, n: None),
    "nested_features": (
        "not_json",
        lambda rng, i, n: b'{"features": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ),
    "array": ("bad_schema", lambda rng, i, n: orjson.dumps(_features(rng, n))),
    "no_features": ("bad_schema", lambda rng, i, n: orjson.dumps({"id": i})),
    "features_string": ("bad_schema", lambda rng, i, n: b'{"features": "1,2,3"}'),
    "wrong_count": (
        "wrong_features",
        lambda rng, i, n: orjson.dumps({"features": _features(rng, n)[: int(rng.integers(0, 7))]}),
    ),
    "unknown_name": (
        "wrong_features",
        lambda rng, i, n: orjson.dumps(
            {"features": {**dict(zip(n[1:], _features(rng, n), strict=False)), "pw=secret": 1}}
        ),
    ),
    "string_value": (
        "bad_type",
        lambda rng, i, n: orjson.dumps({"features": [*_features(rng, n)[:-1], "1"]}),
    ),
    "bool_value": (
        "bad_type",
        lambda rng, i, n: orjson.dumps({"features": [True, *_features(rng, n)[1:]]}),
    ),
    "nan_literal": (
        "non_finite",
        lambda rng, i, n: b'{"features": [NaN' + b", 1" * (len(n) - 1) + b"]}",
    ),
    "huge_float": (
        "non_finite",
        lambda rng, i, n: b'{"features": [1e999' + b", 1" * (len(n) - 1) + b"]}",
    ),
    "huge_int": (
        "non_finite",
        lambda rng, i, n: b'{"features": [' + b"9" * 400 + b", 1" * (len(n) - 1) + b"]}",
    ),
    "surrogate_id": ("bad_id", lambda rng, i, n: _with(rng, n, i, id=b'"\\ud800"')),
    "surrogate_timestamp": (
        "bad_timestamp",
        lambda rng, i, n: _with(rng, n, i, timestamp=b'"x\\udc00"'),
    ),
    "nested_id": ("bad_id", lambda rng, i, n: _with(rng, n, i, id=b"[" * 300 + b"]" * 300)),
    "big_int_id": ("bad_id", lambda rng, i, n: _with(rng, n, i, id=str(2**53 + 1 + i).encode())),
    "inf_id": ("bad_id", lambda rng, i, n: _with(rng, n, i, id=b"1e400")),
    "object_id": ("bad_id", lambda rng, i, n: _with(rng, n, i, id=b'{"a": [1]}')),
}


def _create_input_topic(bootstrap: str) -> str:
    """Three partitions that take messages up to TOPIC_MAX_BYTES."""
    name = f"fuzz-in-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pytest-fuzz")
    try:
        admin.create_topics(
            [NewTopic(name, 3, 1, topic_configs={"max.message.bytes": str(TOPIC_MAX_BYTES)})],
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    return name


def test_ten_thousand_malformed_messages_of_every_kind_never_stop_the_service(
    kafka_bootstrap, kafka_topic_factory, detector
):
    names = detector.feature_names
    rng = np.random.default_rng(7)
    t = {
        "input_topic": _create_input_topic(kafka_bootstrap),
        "output_topic": kafka_topic_factory(2, prefix="fuzz-out"),
        "dlq_topic": kafka_topic_factory(1, prefix="fuzz-dlq"),
        "alerts_topic": None,
    }
    config = _config(kafka_bootstrap, t)
    assert config.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES

    # (key, value, expected reason or None for a good record)
    messages: list[tuple[bytes | None, bytes | None, str | None]] = []
    kinds = list(KINDS)
    for i in range(MALFORMED):
        kind = kinds[i % len(kinds)]
        reason, make = KINDS[kind]
        messages.append((f"k{i % 50}".encode(), make(rng, i, names), reason))
    for i in range(GOOD):
        messages.append((f"k{i % 50}".encode(), _good(rng, i, names, None), None))
    # The large cases, a few of each: over max_message_bytes; a non-JSON value under a 600 KB
    # key; a good record whose result would be over the producer's limit (a 1 MB string id);
    # and a good record under a 600 KB key.
    big_key = b"K" * 600_000
    for i in range(3):
        messages.append((b"big", b'{"features": [' + b"1, " * 350_000 + b"1]}", "too_large"))
        messages.append((big_key + bytes([i]), b"not json at all", "not_json"))
        huge_id = "é" * 523_900 + str(i)  # two bytes each: a value just under 1 MiB
        messages.append((b"big", _with(rng, names, i, id=orjson.dumps(huge_id)), None))
        messages.append((big_key + bytes([i]), _good(rng, GOOD + i, names, None), None))
    order = rng.permutation(len(messages))
    messages = [messages[i] for i in order]

    with _running(detector, config) as service:
        producer = KafkaProducer(
            bootstrap_servers=kafka_bootstrap, max_request_size=TOPIC_MAX_BYTES, linger_ms=20
        )
        try:
            futures = [producer.send(t["input_topic"], key=k, value=v) for k, v, _ in messages]
            producer.flush(timeout=120)
            origins = [(m.partition, m.offset) for m in (f.get(timeout=60) for f in futures)]
        finally:
            producer.close(timeout=10)
        n_bad = sum(reason is not None for *_, reason in messages)
        dead = _read(kafka_bootstrap, t["dlq_topic"], n_bad, deadline_s=240)
        results = _read(kafka_bootstrap, t["output_topic"], len(messages) - n_bad, deadline_s=240)
        metrics = _scrape(service.metrics_port)
        assert service.alive() and service.ready()

    expected_bad = {
        origin: (reason, value)
        for origin, (_, value, reason) in zip(origins, messages, strict=True)
        if reason is not None
    }
    expected_good = {
        origin: value
        for origin, (_, value, reason) in zip(origins, messages, strict=True)
        if reason is None
    }

    letters = {}
    for record in dead:
        letter = orjson.loads(record.value)
        assert letter["topic"] == t["input_topic"]
        letters[(letter["partition"], letter["offset"])] = letter
    assert len(letters) == len(dead) == len(expected_bad)  # one dead letter each, no duplicates
    assert letters.keys() == expected_bad.keys()
    for origin, (reason, value) in expected_bad.items():
        letter = letters[origin]
        assert letter["reason"] == reason, (origin, letter["error"])
        assert letter["error"] and "secret" not in letter["error"]
        digest = None if value is None else hashlib.sha256(value).hexdigest()
        assert letter["value_sha256"] == digest  # a tombstone's value is null, not empty
        assert len(orjson.dumps(letter)) < DEFAULT_MAX_MESSAGE_BYTES

    by_origin = {}
    for record in results:
        result = orjson.loads(record.value)
        by_origin[(result["partition"], result["offset"])] = result
    assert len(by_origin) == len(results) == len(expected_good)  # exactly one result each
    assert by_origin.keys() == expected_good.keys()
    truncated = [r for r in by_origin.values() if r.get("id_truncated")]
    assert len(truncated) == 3  # the results of the 1 MB ids were cut to fit, not dropped
    for result in truncated:
        assert result["id"].startswith("é") and len(result["id_sha256"]) == 64
        assert isinstance(result["score"], float)

    reasons = Counter(reason for reason, _ in expected_bad.values())
    for reason, count in reasons.items():
        assert metrics[("anomaly_records_rejected_total", (("reason", reason),))] == count
    assert metrics[("anomaly_records_consumed_total", ())] == len(messages)
    assert metrics[("anomaly_records_scored_total", ())] == len(expected_good)
