"""The Kafka scoring service end to end, on the real broker of the ``kafka_bootstrap`` fixture.

In-process tests run ``ScoringService`` in a thread; the process tests run ``anomaly serve``
(``python -m pipelines.cli serve``) as subprocesses, kill or stop them, and check from the
topics that no input record is left without a result. The delivery, dead-letter, SIGKILL
and two-instance tests run on both transports (``client``: kafka-python and librdkafka).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

import anomaly
from anomaly.alarms import AlarmStage
from anomaly.config import AlarmConfig
from anomaly.stream import ScoringService, StreamError
from tests._support import required_module, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_DEADLINE_S = 60
START_DEADLINE_S = 90
#: ``[serve] client``: the transports the shared tests run on.
CLIENTS = ["kafka-python", "confluent"]


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return anomaly.load(tiny_bundle)


@pytest.fixture
def topics(kafka_topic_factory):
    """Input (3 partitions), output, dead-letter and alerts topics of one test."""

    def make(partitions: int = 3) -> dict[str, str]:
        return {
            "input_topic": kafka_topic_factory(partitions, prefix="in"),
            "output_topic": kafka_topic_factory(2, prefix="out"),
            "dlq_topic": kafka_topic_factory(1, prefix="dlq"),
            "alerts_topic": kafka_topic_factory(1, prefix="alerts"),
        }

    return make


@dataclass(frozen=True)
class Cluster:
    """How the service and the test's own clients reach the broker in one mode: plaintext,
    or a secured listener of ``kafka_secure`` (SASL_SSL with SCRAM, mutual TLS)."""

    bootstrap: str
    serve_kafka: dict
    """The service's ``[serve.kafka]`` options (the SASL password by file)."""
    client: dict
    """kafka-python options of the test's clients, ``bootstrap_servers`` included."""


@pytest.fixture(params=["plaintext", "sasl_scram512", "mtls"])
def cluster(request, kafka_bootstrap) -> Cluster:
    """The session broker through each of: its PLAINTEXT listener, SASL_SSL with
    SCRAM-SHA-512 and mutual TLS."""
    if request.param == "plaintext":
        return Cluster(kafka_bootstrap, {}, {"bootstrap_servers": kafka_bootstrap})
    mode = request.getfixturevalue("kafka_secure")[request.param]
    client = {"bootstrap_servers": mode.bootstrap, **mode.client_options()}
    return Cluster(mode.bootstrap, dict(mode.options), client)


def _clients(target: str | Cluster) -> dict:
    """kafka-python options for a test client of ``target`` (a bootstrap or a Cluster)."""
    return {"bootstrap_servers": target} if isinstance(target, str) else dict(target.client)


def _config(target: str | Cluster, topics: dict[str, str], **settings) -> anomaly.Config:
    secured = {} if isinstance(target, str) else {"kafka": target.serve_kafka}
    serve = {
        "bootstrap_servers": target if isinstance(target, str) else target.bootstrap,
        **secured,
        "group_id": f"test-{uuid.uuid4().hex[:8]}",
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
        **topics,
        **settings,
    }
    return anomaly.Config().updated(serve=serve).serve


@contextlib.contextmanager
def _running(detector, config, alarms=None):
    """A started ScoringService running in a thread; stopped and joined on exit."""
    service = ScoringService(detector, config, alarms=alarms)
    service.start()
    with run_in_a_thread(service, config) as errors:
        wait_for(lambda: service.ready() or errors, 30, "input partitions to be assigned")
        yield service


@contextlib.contextmanager
def run_in_a_thread(service: ScoringService, config):
    """``service.run()`` (which starts the service first where it is not started) in a
    thread: yields the list of errors it raised; stopped, joined and checked on exit."""
    errors: list[BaseException] = []

    def run():
        try:
            service.run()
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    thread = threading.Thread(target=run, name="scoring-service", daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        service.stop()
        thread.join(timeout=config.shutdown_timeout_s + 5)
        assert not thread.is_alive(), "service did not stop within its shutdown timeout"
        assert not errors, f"service failed: {errors[0]!r}"


def _produce(target: str | Cluster, topic: str, messages) -> list[tuple[int, int]]:
    """Send (key, value) pairs; return each one's (partition, offset)."""
    producer = KafkaProducer(**_clients(target), linger_ms=5)
    try:
        futures = [producer.send(topic, value=value, key=key) for key, value in messages]
        producer.flush(timeout=30)
        return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close(timeout=10)


#: A reader that receives nothing for this long starts over with a new consumer: once in a
#: CI run, a fresh kafka-python consumer assigned to a topic that held records polled
#: nothing for the whole deadline, while the service kept serving.
STALL_S = 10


def _read(
    target: str | Cluster,
    topic: str,
    count: int | None = None,
    deadline_s: float = RESULT_DEADLINE_S,
    covers: set[tuple[int, int]] | None = None,
):
    """Every record of ``topic`` from the beginning, once at least ``count`` are there (or,
    with ``covers``, once results for all those input (partition, offset) pairs are)."""
    deadline = time.monotonic() + deadline_s
    while True:
        records, complete = _read_from_start(target, topic, count, covers, deadline)
        if complete or time.monotonic() >= deadline:
            return records


def _read_from_start(target, topic, count, covers, deadline):
    """One consumer's read of ``topic``: (records, complete), giving up at ``deadline`` or
    after ``STALL_S`` seconds without a record."""
    consumer = KafkaConsumer(**_clients(target), enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records, seen = [], set()
        last_record = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last_record < STALL_S:
            for batch in consumer.poll(timeout_ms=200).values():
                last_record = time.monotonic()
                records.extend(batch)
                if covers is not None:
                    seen.update(
                        (d["partition"], d["offset"])
                        for d in (orjson.loads(r.value) for r in batch)
                    )
            done = covers <= seen if covers is not None else len(records) >= count
            if done and sum(consumer.end_offsets(partitions).values()) == len(records):
                return records, True
        return records, False
    finally:
        consumer.close()


def _group_member(bootstrap: str, group_id: str, topic: str, **settings) -> KafkaConsumer:
    """A plain consumer that has joined ``group_id`` and been assigned partitions of
    ``topic``; it commits nothing (close it with ``autocommit=False``)."""
    member = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False, **settings
    )
    try:
        member.subscribe([topic])
        wait_for(
            lambda: member.poll(timeout_ms=200) is not None and member.assignment(),
            30,
            "another group member's assignment",
        )
    except BaseException:
        member.close(autocommit=False)
        raise
    return member


def _commit(bootstrap: str, group_id: str, partition: TopicPartition, offset: int) -> None:
    """Commit ``offset`` of ``partition`` for ``group_id``, as a previous member would have."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id)
    try:
        consumer.commit({partition: OffsetAndMetadata(offset, "", -1)})
    finally:
        consumer.close(autocommit=False)


def _delete_records_before(bootstrap: str, partition: TopicPartition, offset: int) -> None:
    """Delete ``partition``'s records before ``offset``, as retention would have."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_records({partition: offset})
    finally:
        admin.close()


def _committed(bootstrap: str, group_id: str, partition: TopicPartition) -> int | None:
    """``group_id``'s committed offset of ``partition``, as the broker has it now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id)
    try:
        return consumer.committed(partition, timeout_ms=5_000)
    finally:
        consumer.close(autocommit=False)


def _normal_rows(mixing, n, seed):
    return np.random.default_rng(seed).normal(size=(n, 3)) @ mixing


def _record(i, row, names, as_object):
    features = dict(zip(names, row.tolist(), strict=True)) if as_object else row.tolist()
    return orjson.dumps({"id": i, "features": features, "timestamp": f"t{i}"})


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


# -- in-process ------------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_every_record_gets_exactly_one_result_anomalies_are_flagged_and_metrics_agree(
    client, cluster, kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    """Run plain, over SASL_SSL (SCRAM-SHA-512) and over mutual TLS (``cluster``), on each
    transport."""
    names = detector.feature_names
    t = topics(3)
    config = _config(cluster, t, max_batch_size=64, client=client)
    normal = _normal_rows(tiny_bundle_mixing, 300, seed=1)
    anomalous = np.random.default_rng(2).normal(size=(20, 8)) * 4
    messages = [
        (f"entity-{i % 7}".encode(), _record(i, row, names, i % 2 == 0))
        for i, row in enumerate(normal)
    ]
    messages += [
        (b"entity-x", _record(f"anomaly-{i}", row, names, False)) for i, row in enumerate(anomalous)
    ]

    with _running(detector, config) as service:
        sent = _produce(cluster, t["input_topic"], messages)
        results = _read(cluster, t["output_topic"], len(messages))
        decoded = [orjson.loads(r.value) for r in results]

        # Exactly one result per input record, by (partition, offset), with the input's key.
        where = Counter((d["partition"], d["offset"]) for d in decoded)
        assert set(where) == set(sent) and max(where.values()) == 1
        key_of = {pos: key for pos, (key, _) in zip(sent, messages, strict=True)}
        assert all(
            r.key == key_of[(d["partition"], d["offset"])]
            for r, d in zip(results, decoded, strict=True)
        )
        output_partitions: dict[bytes, set[int]] = {}
        for r in results:
            output_partitions.setdefault(r.key, set()).add(r.partition)
        assert all(len(parts) == 1 for parts in output_partitions.values())  # one per entity
        by_id = {d["id"]: d for d in decoded}
        first = by_id[0]
        assert first["timestamp"] == "t0" and first["model_version"] == detector.version
        assert set(first["components"]) == set(detector.components)
        assert first["threshold"] == pytest.approx(detector.threshold)
        assert len(first["top_features"]) == detector.config.scoring.top_features
        assert first["processing_time_ms"] >= 0 and 0 <= first["percentile"] <= 100.01

        # The anomalies are flagged; normal records rarely.
        assert all(by_id[f"anomaly-{i}"]["is_anomaly"] for i in range(20))
        false_alarms = sum(by_id[i]["is_anomaly"] for i in range(300))
        assert false_alarms <= 15
        flagged = [d for d in decoded if d["is_anomaly"]]
        alerts = _read(cluster, t["alerts_topic"], len(flagged))
        assert sorted(orjson.loads(a.value)["offset"] for a in alerts) == sorted(
            d["offset"] for d in flagged
        )

        # Offsets end up committed at the end of each partition.
        def committed_at_end():
            consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=config.group_id)
            try:
                parts = [TopicPartition(t["input_topic"], p) for p in range(3)]
                ends = consumer.end_offsets(parts)
                return all(consumer.committed(tp) == ends[tp] for tp in parts)
            finally:
                consumer.close(autocommit=False)

        wait_for(committed_at_end, 15, "offsets to be committed")

        # /metrics agrees with what went in.
        port = service.metrics_port
        m = _scrape(port)
        n = len(messages)
        assert m[("anomaly_records_consumed_total", ())] == n
        assert m[("anomaly_records_scored_total", ())] == n
        assert m[("anomaly_anomalies_flagged_total", ())] == len(flagged)
        assert all(
            m[("anomaly_records_rejected_total", (("reason", r),))] == 0
            for r in anomaly.stream.REASONS
        )
        assert m[("anomaly_record_score_count", ())] == n
        under = m[("anomaly_record_score_bucket", (("le", repr(float(detector.threshold))),))]
        assert under == n - len(flagged)
        assert m[("anomaly_batch_size_records_sum", ())] == n
        assert m[("anomaly_processing_latency_seconds_count", ())] == n
        assert m[("anomaly_end_to_end_latency_seconds_count", ())] == n
        assert m[("anomaly_model_threshold", ())] == pytest.approx(detector.threshold)
        assert (
            m[("anomaly_model_target_false_positive_rate", ())] == detector.engine.params.target_fpr
        )
        info = (
            ("formulation", detector.engine.params.formulation),
            ("model_version", detector.version),
        )
        assert m[("anomaly_model_info", info)] == 1
        assert m[("anomaly_last_commit_timestamp_seconds", ())] > time.time() - 60

        def lags():  # refreshed every second
            return {
                k[1]: v for k, v in _scrape(port).items() if k[0] == "anomaly_consumer_lag_records"
            }

        wait_for(
            lambda: len(lags()) == 3 and set(lags().values()) == {0}, 5, "zero lag on 3 partitions"
        )
        assert _status(port, "/healthz") == 200 and _status(port, "/readyz") == 200


def test_conformal_alarms_follow_each_keys_drift_and_raise_one_alert_per_event(
    kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    """With conformal alarms, a key whose level drifts stops alerting once its history
    holds the new level, while the threshold flag keeps firing; an event still alarms."""
    names = detector.feature_names
    t = topics(2)
    config = _config(kafka_bootstrap, t, max_batch_size=64)
    alarms = AlarmConfig(method="conformal", history=200, quiet_rows=40)
    drifting = _normal_rows(tiny_bundle_mixing, 600, seed=3)
    drifting[100:] += 2.0  # a new normal level from record 100 on
    drifting[450:455] = 2.0 + np.random.default_rng(4).normal(size=(5, 8)) * 8  # an event
    steady = _normal_rows(tiny_bundle_mixing, 600, seed=5)
    messages = []
    for i in range(600):
        messages.append((b"drifting", _record(f"d{i}", drifting[i], names, False)))
        messages.append((b"steady", _record(f"s{i}", steady[i], names, False)))

    with _running(detector, config, alarms) as service:
        _produce(kafka_bootstrap, t["input_topic"], messages)
        results = _read(kafka_bootstrap, t["output_topic"], len(messages))
        by_id = {d["id"]: d for d in map(orjson.loads, (r.value for r in results))}
        assert len(by_id) == len(messages)
        assert all(0.0 <= d["p_value"] <= 1.0 for d in by_id.values())

        def alarmed(prefix, rows):
            return [i for i in rows if by_id[f"{prefix}{i}"]["alarm"]]

        assert alarmed("d", range(100, 110))  # the shift itself is news
        settled = range(350, 450)  # the history holds only the new level
        # the model's fixed threshold still flags most of the new level (how many depends
        # on the trained model; 69-100 seen), the adaptive stage next to none
        assert sum(by_id[f"d{i}"]["is_anomaly"] for i in settled) >= 50
        assert len(alarmed("d", settled)) <= 2
        event = alarmed("d", range(450, 455))
        assert len(event) == 1  # one event, one alarm: the quiet period covers the rest
        assert len(alarmed("s", range(600))) <= 12

        raised = [d for d in by_id.values() if d["alarm"]]
        alerts = _read(kafka_bootstrap, t["alerts_topic"], len(raised))
        assert sorted(orjson.loads(a.value)["id"] for a in alerts) == sorted(
            d["id"] for d in raised
        )
        assert _scrape(service.metrics_port)[("anomaly_alarms_total", ())] == len(raised)
        assert _scrape(service.metrics_port)[("anomaly_alarm_states", ())] == 0


def test_alarm_state_flags_every_record_of_an_event_and_the_gauge_follows_the_state(
    kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    """With state semantics every record of a key in the flagged state is an alert, and
    ``anomaly_alarm_states`` counts the keys in it until they leave it."""
    names = detector.feature_names
    t = topics(1)
    config = _config(kafka_bootstrap, t, max_batch_size=64)
    alarms = AlarmConfig(method="conformal", semantics="state", history=400)
    rows = _normal_rows(tiny_bundle_mixing, 330, seed=6)
    rows[300:310] += np.random.default_rng(7).normal(size=(10, 8)) * 8  # an event, 10 records
    messages = [(b"valve", _record(f"v{i}", rows[i], names, False)) for i in range(330)]

    with _running(detector, config, alarms) as service:
        _produce(kafka_bootstrap, t["input_topic"], messages[:305])  # stop inside the event
        _read(kafka_bootstrap, t["output_topic"], 305)
        wait_for(
            lambda: _scrape(service.metrics_port)[("anomaly_alarm_states", ())] == 1,
            10,
            "the key to be in the flagged state",
        )
        _produce(kafka_bootstrap, t["input_topic"], messages[305:])
        results = _read(kafka_bootstrap, t["output_topic"], len(messages))
        by_id = {d["id"]: d for d in map(orjson.loads, (r.value for r in results))}
        flagged = [i for i in range(330) if by_id[f"v{i}"]["alarm"]]
        assert 300 in flagged and set(range(300, 305)) <= set(flagged)
        assert 320 not in flagged  # the state ended after the event
        alerts = _read(kafka_bootstrap, t["alerts_topic"], len(flagged))
        assert sorted(orjson.loads(a.value)["id"] for a in alerts) == sorted(
            f"v{i}" for i in flagged
        )
        wait_for(
            lambda: _scrape(service.metrics_port)[("anomaly_alarm_states", ())] == 0,
            10,
            "the key to leave the flagged state",
        )
        assert _scrape(service.metrics_port)[("anomaly_alarms_total", ())] == len(flagged)


@pytest.mark.parametrize("client", CLIENTS)
def test_each_kind_of_bad_message_goes_to_the_dead_letter_topic_and_its_neighbours_are_scored(
    client, cluster, topics, detector, tiny_bundle_mixing
):
    """Run plain, over SASL_SSL (SCRAM-SHA-512) and over mutual TLS (``cluster``), on each
    transport."""
    names = detector.feature_names
    t = topics(1)
    config = _config(cluster, t, max_message_bytes=2000, client=client)
    row = _normal_rows(tiny_bundle_mixing, 1, seed=5)[0].tolist()
    bad = {
        "not_json": [b"{oops", b"\xff\xfe\x00"],
        "bad_schema": [b"[1, 2]", b'{"id": 5}', b'{"features": "1,2"}'],
        "wrong_features": [
            orjson.dumps({"features": row[:7]}),
            orjson.dumps({"features": dict(zip(names[:7], row, strict=False))}),
            orjson.dumps({"features": {**dict(zip(names, row, strict=True)), "extra": 1.0}}),
        ],
        "bad_type": [
            orjson.dumps({"features": [*row[:7], "1.5"]}),
            orjson.dumps({"features": [*row[:7], True]}),
            orjson.dumps({"features": [*row[:7], None]}),
        ],
        "non_finite": [
            b'{"features": [1, 2, 3, 4, 5, 6, 7, NaN]}',
            b'{"features": [1, 2, 3, 4, 5, 6, 7, -Infinity]}',
            b'{"features": [1, 2, 3, 4, 5, 6, 7, 1e999]}',
        ],
        "too_large": [orjson.dumps({"features": row, "padding": "x" * 3000})],
    }
    messages, expected = [], []
    for reason, values in bad.items():
        for value in values:
            messages.append((b"good", _record(len(messages), np.array(row), names, False)))
            messages.append((b"bad", value))
            expected.append(reason)
    messages.append((b"good", _record(len(messages), np.array(row), names, True)))

    with _running(detector, config) as service:
        sent = _produce(cluster, t["input_topic"], messages)
        dead = _read(cluster, t["dlq_topic"], len(expected))
        results = _read(cluster, t["output_topic"], len(messages) - len(expected))
        metrics = _scrape(service.metrics_port)

    letters = [orjson.loads(d.value) for d in dead]
    assert [d["reason"] for d in letters] == expected
    bad_offsets = [
        offset for (key, _), (_, offset) in zip(messages, sent, strict=True) if key == b"bad"
    ]
    for letter, offset, (_, value) in zip(letters, bad_offsets, messages[1::2], strict=False):
        assert letter["offset"] == offset and letter["partition"] == 0
        assert letter["topic"] == t["input_topic"] and letter["error"]
        assert base64.b64decode(letter["value_base64"]) == value
        assert letter["key_base64"] == base64.b64encode(b"bad").decode()
    good_offsets = {
        offset for (key, _), (_, offset) in zip(messages, sent, strict=True) if key == b"good"
    }
    assert {orjson.loads(r.value)["offset"] for r in results} == good_offsets
    assert len(results) == len(good_offsets)
    for reason in anomaly.stream.REASONS:
        assert metrics[("anomaly_records_rejected_total", (("reason", reason),))] == expected.count(
            reason
        )
    assert metrics[("anomaly_records_consumed_total", ())] == len(messages)


def test_a_scored_record_whose_result_cannot_be_encoded_is_counted_once_as_a_dead_letter(
    kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    """Its Kafka key is over the producer's limit for a result: the record was counted as
    scored and as rejected, the count of records without a score went below 0, and the
    service stopped on it."""
    t = topics(1)
    config = _config(kafka_bootstrap, t, kafka={"max_request_size": 3000})
    names = detector.feature_names
    rows = _normal_rows(tiny_bundle_mixing, 3, seed=6)
    keys = [b"k0", b"K" * 2900, b"k2"]
    messages = [(key, _record(i, rows[i], names, False)) for i, key in enumerate(keys)]
    consumed = ("anomaly_records_consumed_total", ())

    with _running(detector, config) as service:
        _produce(kafka_bootstrap, t["input_topic"], messages)
        results = _read(kafka_bootstrap, t["output_topic"], 2)
        port = service.metrics_port
        wait_for(lambda: _scrape(port)[consumed] == 3, 10, "every record counted")
        metrics = _scrape(port)
        assert service.alive()

    assert sorted(r.key for r in results) == [b"k0", b"k2"]
    encode_failed = ("anomaly_records_rejected_total", (("reason", "encode_failed"),))
    assert metrics[encode_failed] == 1
    assert metrics[("anomaly_records_scored_total", ())] == 2
    assert metrics[("anomaly_records_unscored_total", ())] == 0


def test_back_pressure_pauses_input_and_still_delivers_every_result(
    kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    t = topics(2)
    config = _config(kafka_bootstrap, t, max_batch_size=50, max_pending_results=20)
    rows = _normal_rows(tiny_bundle_mixing, 600, seed=4)
    messages = [
        (str(i).encode(), _record(i, r, detector.feature_names, False)) for i, r in enumerate(rows)
    ]
    sent = _produce(kafka_bootstrap, t["input_topic"], messages)
    with _running(detector, config) as service:
        results = _read(kafka_bootstrap, t["output_topic"], len(messages))
        metrics = _scrape(service.metrics_port)
    assert {
        (d["partition"], d["offset"]) for d in map(orjson.loads, (r.value for r in results))
    } == set(sent)
    assert metrics[("anomaly_backpressure_pauses_total", ())] > 0


def test_a_lone_service_joins_once_and_keeps_its_partitions(
    kafka_bootstrap, topics, detector, caplog
):
    """One join and no second rebalance. kafka-python 3.0.12 made the first assignment from
    an empty metadata snapshot and rebalanced again at once, a rebalance it could leave
    unfinished (no partitions ever again); the service refreshes metadata before joining."""
    caplog.set_level(logging.INFO, logger="anomaly.stream")
    t = topics(3)
    with _running(detector, _config(kafka_bootstrap, t)) as service:
        # A record scored after the join: the metadata response that triggered the second
        # rebalance came within milliseconds of it, long before a fetch completes.
        sent = _produce(
            kafka_bootstrap,
            t["input_topic"],
            [(b"k", _record(0, np.zeros(8), detector.feature_names, False))],
        )
        _read(kafka_bootstrap, t["output_topic"], covers=set(sent))
        assert service.ready()
        assert service.assignment() == {TopicPartition(t["input_topic"], p) for p in range(3)}
    events = [r.getMessage().split()[0] for r in caplog.records if r.name == "anomaly.stream"]
    assert events.count("event=partitions_assigned") == 1, events


def test_a_service_left_without_partitions_past_its_session_timeout_subscribes_afresh(
    kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    """A group member that stops polling holds the rebalance open until its poll interval
    runs out. The service, without partitions for longer than its session timeout, subscribes
    afresh (the path that recovers from kafka-python's unfinished rebalances), then owns every
    partition once that member has left, and scores what was waiting."""
    t = topics(2)
    config = _config(kafka_bootstrap, t, session_timeout_ms=6_000)
    stalled = _group_member(
        kafka_bootstrap,
        config.group_id,
        t["input_topic"],
        session_timeout_ms=6_000,
        max_poll_interval_ms=15_000,
    )
    try:
        rows = _normal_rows(tiny_bundle_mixing, 50, seed=6)
        messages = [
            (str(i).encode(), _record(i, r, detector.feature_names, False))
            for i, r in enumerate(rows)
        ]
        sent = _produce(kafka_bootstrap, t["input_topic"], messages)
        with _running(detector, config) as service:
            results = _read(kafka_bootstrap, t["output_topic"], len(messages))
            metrics = _scrape(service.metrics_port)
            assert service.assignment() == {TopicPartition(t["input_topic"], p) for p in (0, 1)}
    finally:
        stalled.close(autocommit=False)
    assert metrics[("anomaly_consumer_rejoins_total", ())] >= 1
    assert {
        (d["partition"], d["offset"]) for d in map(orjson.loads, (r.value for r in results))
    } == set(sent)


def test_records_in_hand_at_a_rebalance_are_scored_when_their_partition_comes_back(
    kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    """A member joins and leaves while the service fills a micro-batch. Each rebalance
    revokes every partition, so the service drops the records it holds and re-fetches them
    once a partition is back: kafka-python keeps the fetch position of a partition it gets
    back, which would skip them."""
    t = topics(2)
    # Batches that fill slowly: the service almost always holds records inside a poll.
    config = _config(kafka_bootstrap, t, max_batch_size=10_000, max_wait_ms=3_000)
    names = detector.feature_names
    with _running(detector, config):
        with _paced_producer(
            kafka_bootstrap, t["input_topic"], tiny_bundle_mixing, names, 600, 100
        ) as (sent, _):
            # Mid-stream: a sixth of the records sent, the service holding a part-filled batch.
            wait_for(lambda: len(sent) >= 100, 30, "100 records sent")
            _group_member(kafka_bootstrap, config.group_id, t["input_topic"]).close(
                autocommit=False
            )
        results = _read(kafka_bootstrap, t["output_topic"], covers=set(sent))
    seen = {(d["partition"], d["offset"]) for d in map(orjson.loads, (r.value for r in results))}
    missing = sorted(set(sent) - seen)
    assert not missing, f"{len(missing)} records without a result, e.g. {missing[:5]}"


@pytest.mark.parametrize("client", CLIENTS)
def test_a_committed_offset_the_broker_deleted_restarts_at_auto_offset_reset_and_scores_once(
    client, kafka_bootstrap, topics, detector, tiny_bundle_mixing
):
    """The service was down longer than the input's retention: its group's committed offset
    (5) is gone (the records before 10 deleted). It starts where ``auto_offset_reset`` says
    (earliest, 10) and scores each kept record once; on confluent this is the offset reset
    the loop applies itself (librdkafka's is off), and it must not loop or start over."""
    t = topics(1)
    config = _config(kafka_bootstrap, t, client=client, auto_offset_reset="earliest")
    names = detector.feature_names
    rows = _normal_rows(tiny_bundle_mixing, 30, seed=5)
    sent = _produce(
        kafka_bootstrap,
        t["input_topic"],
        [(None, _record(i, r, names, False)) for i, r in enumerate(rows)],
    )
    assert [o for _, o in sent] == list(range(30))
    partition = TopicPartition(t["input_topic"], 0)
    _commit(kafka_bootstrap, config.group_id, partition, 5)
    _delete_records_before(kafka_bootstrap, partition, 10)
    with _running(detector, config):
        wait_for(
            lambda: _committed(kafka_bootstrap, config.group_id, partition) == 30,
            60,
            "the last record's offset committed",
        )
    results = _read(kafka_bootstrap, t["output_topic"], count=20)  # all, the service stopped
    offsets = sorted(orjson.loads(r.value)["offset"] for r in results)
    assert offsets == list(range(10, 30)), "each kept record scored once, from the earliest"


class _StartingAt:
    """The loop's part for a lone transport: it starts each partition it is given at
    ``start``, as the loop does with records it gave back at a rebalance."""

    def __init__(self, start: int):
        self.start = start

    def partitions_assigned(self, partitions):
        return dict.fromkeys(partitions, self.start)

    def partitions_revoking(self, partitions):
        return {}

    def partitions_revoked(self, partitions, committed):
        pass

    def partitions_lost(self, partitions):
        pass

    def committed(self, offsets, error):
        pass

    def fetch_failed(self, kind, detail, unreadable):
        pass


@pytest.mark.parametrize(("start", "first"), [(5, 10), (12, 12), (40, 30)])
def test_confluent_reads_a_partition_started_outside_its_records_from_where_the_broker_can_serve(
    start, first, kafka_bootstrap, topics, caplog
):
    """The records before 10 deleted, 30 written: a partition the loop starts at 5 is read
    from its earliest record (``auto_offset_reset``), at 12 from 12, and at 40 (past its
    end, as after a truncation) from its end, 30, so the next record written is read.
    librdkafka's own reset is off; the transport asks the broker for the range."""
    required_module("confluent_kafka", "confluent")
    from anomaly.stream.confluent_transport import ConfluentTransport

    t = topics(1)
    written = _produce(kafka_bootstrap, t["input_topic"], [(None, b"{}")] * 30)
    assert [o for _, o in written] == list(range(30))
    _delete_records_before(kafka_bootstrap, TopicPartition(t["input_topic"], 0), 10)
    config = _config(kafka_bootstrap, t, client="confluent", auto_offset_reset="earliest")
    transport = ConfluentTransport(config, "c1", listener=_StartingAt(start))
    read: list[int] = []

    def poll() -> None:
        read.extend(r.offset for r in transport.poll(200, 100))

    caplog.set_level(logging.WARNING, logger="anomaly.stream")
    transport.open()
    try:
        if start > 30:
            moved = f"from={start} to=30"
            wait_for(lambda: poll() or moved in caplog.text, 30, "the partition moved to its end")
            _produce(kafka_bootstrap, t["input_topic"], [(None, b"{}")] * 5)
        wait_for(lambda: poll() or read[-1:] == [29 if start < 30 else 34], 30, "the last record")
    finally:
        transport.close(time.monotonic() + 10)
    assert read == list(range(first, 35 if start > 30 else 30))
    assert ("event=offset_reset" in caplog.text) == (start != first)


@pytest.fixture(scope="module")
def series_detector(tmp_path_factory):
    """A small time-series model: windows of 4 rows of 4 features."""
    rng = np.random.default_rng(1)
    steps = np.arange(3000)
    x = np.stack([np.sin(steps / 5 + k) for k in range(4)], 1) + 0.05 * rng.normal(size=(3000, 4))
    config = anomaly.Config().updated(
        training={"steps": 40}, model={"window": 4, "hidden_units": [32], "conv_filters": [8]}
    )
    detector = anomaly.train(x, config, feature_names=["s0", "s1", "s2", "s3"])
    path = tmp_path_factory.mktemp("series") / "model"
    detector.save(path)
    return anomaly.load(path)


def test_time_series_records_are_scored_once_their_keys_window_is_full(
    kafka_bootstrap, topics, series_detector
):
    t = topics(2)
    config = _config(kafka_bootstrap, t, max_batch_size=8)
    steps = range(10)
    messages = []
    for i in steps:  # two entities, interleaved
        for key in (b"pump-1", b"pump-2"):
            row = np.sin(i / 5 + np.arange(4))
            messages.append(
                (key, orjson.dumps({"id": f"{key.decode()}-{i}", "features": row.tolist()}))
            )
    with _running(series_detector, config):
        sent = _produce(kafka_bootstrap, t["input_topic"], messages)
        results = _read(kafka_bootstrap, t["output_topic"], len(messages))
    decoded = {d["id"]: d for d in map(orjson.loads, (r.value for r in results))}
    assert len(decoded) == len(results) == len(sent)
    for key in ("pump-1", "pump-2"):
        for i in steps:
            d = decoded[f"{key}-{i}"]
            assert d["window_complete"] is (i >= 3)
            assert (d["score"] is None) is (i < 3)


def test_a_dead_letter_starts_its_keys_window_afresh(kafka_bootstrap, topics, series_detector):
    """pump-1's record 5 is a dead letter: no window joins its records 4 and 6, as a file's
    skipped row cuts its series; pump-2 is not touched. Every record consumed is counted as
    scored, rejected or unscored (answered before its window was complete): records
    consumed with neither counted looked like a stall to the alert rules."""
    t = topics(1)
    config = _config(kafka_bootstrap, t, max_batch_size=8)
    messages = []
    for i in range(12):
        for key in (b"pump-1", b"pump-2"):
            row = np.sin(i / 5 + np.arange(4)).tolist()
            if key == b"pump-1" and i == 5:
                row = row[:3]  # a feature missing: a dead letter
            messages.append((key, orjson.dumps({"id": f"{key.decode()}-{i}", "features": row})))
    consumed = ("anomaly_records_consumed_total", ())
    with _running(series_detector, config) as service:
        _produce(kafka_bootstrap, t["input_topic"], messages)
        results = _read(kafka_bootstrap, t["output_topic"], len(messages) - 1)
        dead = _read(kafka_bootstrap, t["dlq_topic"], 1)
        port = service.metrics_port
        wait_for(lambda: _scrape(port)[consumed] == len(messages), 10, "every record counted")
        metrics = _scrape(port)
    assert [r.key for r in dead] == [b"pump-1"]
    rejected = sum(
        v for (name, _), v in metrics.items() if name == "anomaly_records_rejected_total"
    )
    assert rejected == 1
    # pump-1's records 0-2 and 6-8 (after the cut), pump-2's 0-2
    assert metrics[("anomaly_records_unscored_total", ())] == 9
    assert metrics[("anomaly_records_scored_total", ())] == len(messages) - 9 - 1
    complete = {
        d["id"]: d["window_complete"] for d in map(orjson.loads, (r.value for r in results))
    }
    assert [complete[f"pump-1-{i}"] for i in (3, 4, 6, 7, 8, 9)] == [True, True] + [False] * 3 + [
        True
    ]
    assert all(complete[f"pump-2-{i}"] for i in range(3, 12))


class ThreeKeys:
    """Three keys' series for a time-series model of windows of 4 rows of 4 features,
    120 rows each, cut at row ``CUT`` (a restart, a swap): ``steady``; ``shifted``, whose
    level moves at row 20; ``valve``, with an event over rows 60-89, across the cut. With
    DSPOT alarms in state semantics, the last two are in the flagged state at the cut."""

    ROWS, CUT, WINDOW = 120, 70, 4
    ALARMS = AlarmConfig(method="dspot", semantics="state")

    def __init__(self, seed: int):
        steps = np.arange(self.ROWS)
        offsets = {
            "steady": 0.0 * steps,
            "shifted": 1.5 * (steps >= 20),
            "valve": 2.5 * ((steps >= 60) & (steps < 90)),
        }
        noise = np.random.default_rng(seed).normal(size=(len(offsets), self.ROWS, 4)) * 0.05
        self.series = {
            key: np.sin(steps[:, None] / 5 + np.arange(4)) + noise[k] + offset[:, None]
            for k, (key, offset) in enumerate(offsets.items())
        }
        last = self.WINDOW - 1
        self.windows = {  # window j ends at row j + last
            key: np.stack([rows[i - last : i + 1] for i in range(last, self.ROWS)])
            for key, rows in self.series.items()
        }
        self.before_cut = self.CUT - last  # windows ending before the cut

    def messages(self, rows: range) -> list:
        return [
            (key.encode(), orjson.dumps({"id": f"{key}-{i}", "features": x[i].tolist()}))
            for i in rows
            for key, x in self.series.items()
        ]

    def flagged_at_cut(self, model) -> int:
        """Keys in the flagged state after ``model``'s alarm stage ran up to the cut."""
        stage = AlarmStage.for_model(model, self.ALARMS)
        for key, made in self.windows.items():
            stage.update(model.score(made[: self.before_cut]), keys=[key] * self.before_cut)
        return stage.states

    def assert_as_one_run(self, by_id: dict, model) -> None:
        """The results from the cut on are ``model``'s over each key's whole series, as one
        service that never stopped would give: scored, same levels, same alarms."""
        stage = AlarmStage.for_model(model, self.ALARMS)
        for key, made in self.windows.items():
            result = model.score(made)
            decided = stage.update(result, keys=[key] * len(made))
            after = [by_id[f"{key}-{i}"] for i in range(self.CUT, self.ROWS)]
            assert all(d["window_complete"] for d in after), key
            cut = self.before_cut
            np.testing.assert_allclose(
                [d["score"] for d in after], result.scores[cut:], rtol=1e-4, err_msg=key
            )
            np.testing.assert_allclose(
                [d["p_value"] for d in after], decided.levels[cut:], atol=1e-6, err_msg=key
            )
            assert [d["alarm"] for d in after] == decided.alarms[cut:].tolist(), key


@pytest.mark.parametrize("client", CLIENTS)
def test_a_restarted_service_goes_on_with_each_keys_window_and_alarm_stream_where_they_were(
    client, kafka_bootstrap, topics, series_detector, caplog
):
    """Two services one after the other in one group: the second reads the records before
    its committed offsets again (``serve.restore_records``), so its results are those of a
    service that never stopped: every record of each key scored (no window starts afresh),
    and the same levels and alarms as the alarm stage run over each key's whole series at
    once, with one key in the flagged state across the restart."""
    t = topics(2)
    config = _config(kafka_bootstrap, t, max_batch_size=16, client=client)
    keys = ThreeKeys(seed=8)
    assert keys.flagged_at_cut(series_detector) >= 1
    with _running(series_detector, config, keys.ALARMS):
        _produce(kafka_bootstrap, t["input_topic"], keys.messages(range(keys.CUT)))
        _read(kafka_bootstrap, t["output_topic"], 3 * keys.CUT)
    caplog.set_level(logging.INFO, logger="anomaly.stream")
    with _running(series_detector, config, keys.ALARMS):
        _produce(kafka_bootstrap, t["input_topic"], keys.messages(range(keys.CUT, keys.ROWS)))
        results = _read(kafka_bootstrap, t["output_topic"], 3 * keys.ROWS)
    by_id = {d["id"]: d for d in map(orjson.loads, (r.value for r in results))}
    assert len(by_id) == 3 * keys.ROWS
    keys.assert_as_one_run(by_id, series_detector)
    assert "event=key_state_restored" in caplog.text


def test_a_restore_with_no_time_left_starts_the_keys_afresh_and_says_so(
    kafka_bootstrap, topics, series_detector, caplog, monkeypatch
):
    """With no time for a restore (``RESTORE_S`` 0), the partition starts its keys afresh,
    logged and counted, and its records are scored as before (the first ``window - 1`` of
    each key without a score), never lost. (Which step ran out of time, the read or the
    take-in, the scripted tests of ``test_stream_pipeline`` tell apart.)"""
    t = topics(1)
    config = _config(kafka_bootstrap, t, max_batch_size=16)

    def messages(rows: range) -> list:
        return [
            (
                b"pump",
                orjson.dumps(
                    {"id": f"pump-{i}", "features": np.sin(i / 5 + np.arange(4)).tolist()}
                ),
            )
            for i in rows
        ]

    with _running(series_detector, config):
        _produce(kafka_bootstrap, t["input_topic"], messages(range(10)))
        _read(kafka_bootstrap, t["output_topic"], 10)
    monkeypatch.setattr("anomaly.stream.service.RESTORE_S", 0.0)
    caplog.set_level(logging.INFO, logger="anomaly.stream")
    with _running(series_detector, config) as service:
        _produce(kafka_bootstrap, t["input_topic"], messages(range(10, 14)))
        results = _read(kafka_bootstrap, t["output_topic"], 14)
        restores = {
            k[1]: v
            for k, v in _scrape(service.metrics_port).items()
            if k[0] == "anomaly_key_state_restores_total" and v
        }
    by_id = {d["id"]: d for d in map(orjson.loads, (r.value for r in results))}
    assert [by_id[f"pump-{i}"]["window_complete"] for i in range(10, 14)] == [False] * 3 + [True]
    assert "event=key_state_not_restored on=assignment" in caplog.text
    assert restores == {(("cause", "assignment"), ("outcome", "started_afresh")): 1.0}


def test_start_fails_fast_naming_a_missing_topic(kafka_bootstrap, topics, detector):
    t = topics(1)
    config = _config(
        kafka_bootstrap, {**t, "output_topic": "no-such-topic-" + uuid.uuid4().hex[:6]}
    )
    service = ScoringService(detector, config)
    with pytest.raises(StreamError, match="output_topic='no-such-topic-"):
        service.start()


# -- processes -------------------------------------------------------------------------------


#: Where ``event=started`` says the service serves its metrics.
METRICS_ADDRESS = re.compile(r"event=started .*? metrics=127\.0\.0\.1:(\d+) ")


class _Serve:
    """``python -m pipelines.cli serve`` in a subprocess, its log in a file. Its metrics
    port is the system's pick (a port picked here could be taken in the seconds before the
    process binds it), read from its ``event=started`` line."""

    def __init__(self, bundle, bootstrap, t, group_id, log_dir: Path, name: str, **env):
        self.port: int | None = None
        self.log = log_dir / f"{name}.log"
        environment = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "ANOMALY_SERVE_METRICS_HOST": "127.0.0.1",
            "ANOMALY_SERVE_DLQ_TOPIC": t["dlq_topic"],
            **{f"ANOMALY_SERVE_{k.upper()}": str(v) for k, v in env.items()},
        }
        command = [
            sys.executable,
            "-m",
            "pipelines.cli",
            "serve",
            "--model",
            str(bundle),
            "--bootstrap-servers",
            bootstrap,
            "--input-topic",
            t["input_topic"],
            "--output-topic",
            t["output_topic"],
            "--group-id",
            group_id,
            "--metrics-port",
            "0",
        ]
        self._log_handle = self.log.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self):
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"serve exited with {self.process.returncode}:\n{self.log.read_text()}"
                )
            if self.port is None:
                started = METRICS_ADDRESS.search(self.log.read_text(errors="replace"))
                if started is None:
                    return False
                self.port = int(started.group(1))
            try:
                return _status(self.port, "/readyz") == 200
            except OSError:
                return False

        wait_for(ready, START_DEADLINE_S, f"{self.log.name} to be ready")
        return self

    def consumed(self) -> float:
        return _scrape(self.port)[("anomaly_records_consumed_total", ())]

    def stop(self, sig=signal.SIGTERM, timeout=30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log_handle.close()

    def kill_quietly(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log_handle.close()


@contextlib.contextmanager
def _paced_producer(bootstrap, topic, mixing, names, total, per_second):
    """Produces ``total`` records at about ``per_second`` in a thread; yields the list of
    (partition, offset) sent so far (complete once the block's ``join`` returns)."""
    sent: list[tuple[int, int]] = []
    rows = _normal_rows(mixing, total, seed=11)

    def run():
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        try:
            chunk = max(1, per_second // 20)
            for start in range(0, total, chunk):
                began = time.monotonic()
                futures = [
                    producer.send(
                        topic, value=_record(i, rows[i], names, False), key=f"e{i % 13}".encode()
                    )
                    for i in range(start, min(total, start + chunk))
                ]
                producer.flush(timeout=30)
                sent.extend((m.partition, m.offset) for m in (f.get(timeout=30) for f in futures))
                time.sleep(max(0.0, 0.05 - (time.monotonic() - began)))
        finally:
            producer.close(timeout=10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield sent, thread
    thread.join(timeout=120)


@pytest.mark.parametrize("client", CLIENTS)
def test_sigkill_mid_stream_and_restart_leaves_no_record_without_a_result(
    client, kafka_bootstrap, topics, tiny_bundle, tiny_bundle_mixing, tmp_path
):
    t = topics(2)
    group = f"kill-{uuid.uuid4().hex[:8]}"
    names = [f"f{i}" for i in range(8)]
    total = 6000
    # A short session: the killed member's partitions are reassigned after 6 s, not 45 s.
    settings = {"max_batch_size": 32, "session_timeout_ms": 6000, "client": client}
    first = _Serve(
        tiny_bundle, kafka_bootstrap, t, group, tmp_path, "first", **settings
    ).wait_ready()
    try:
        with _paced_producer(
            kafka_bootstrap, t["input_topic"], tiny_bundle_mixing, names, total, 1500
        ) as (
            sent,
            producer,
        ):
            wait_for(lambda: first.consumed() >= 1000, RESULT_DEADLINE_S, "1000 records consumed")
            first.stop(signal.SIGKILL)
            assert producer.is_alive(), "the input ended before the kill: not mid-stream"
            second = _Serve(tiny_bundle, kafka_bootstrap, t, group, tmp_path, "second", **settings)
            second.wait_ready()
        assert len(sent) == total
        results = _read(kafka_bootstrap, t["output_topic"], covers=set(sent))
        seen = Counter(
            (d["partition"], d["offset"]) for d in map(orjson.loads, (r.value for r in results))
        )
        missing = set(sent) - set(seen)
        assert not missing, f"{len(missing)} records without a result, e.g. {sorted(missing)[:5]}"
        assert second.stop() == 0
    finally:
        first.kill_quietly()
        with contextlib.suppress(NameError):
            second.kill_quietly()


@pytest.mark.parametrize("client", CLIENTS)
def test_two_services_share_partitions_and_sigterm_hands_over_without_loss(
    client, kafka_bootstrap, topics, tiny_bundle, tiny_bundle_mixing, tmp_path
):
    t = topics(4)
    group = f"pair-{uuid.uuid4().hex[:8]}"
    names = [f"f{i}" for i in range(8)]
    services = [
        _Serve(
            tiny_bundle,
            kafka_bootstrap,
            t,
            group,
            tmp_path,
            name,
            max_batch_size=64,
            shutdown_timeout_s=10,
            client=client,
        )
        for name in ("a", "b")
    ]
    a, b = services
    try:
        for s in services:
            s.wait_ready()
        # Both members own partitions: a first wave reaches both.
        first_wave = [
            (f"w{i}".encode(), _record(i, r, names, False))
            for i, r in enumerate(_normal_rows(tiny_bundle_mixing, 400, seed=5))
        ]
        sent = _produce(kafka_bootstrap, t["input_topic"], first_wave)
        assert {p for p, _ in sent} == {0, 1, 2, 3}
        wait_for(
            lambda: a.consumed() + b.consumed() >= len(sent), RESULT_DEADLINE_S, "the first wave"
        )
        assert a.consumed() > 0 and b.consumed() > 0
        assert a.consumed() + b.consumed() == len(sent)

        # SIGTERM one while records keep coming: the other takes over, nothing is lost.
        with _paced_producer(
            kafka_bootstrap, t["input_topic"], tiny_bundle_mixing, names, 3000, 1500
        ) as (
            more,
            _,
        ):
            wait_for(lambda: len(more) >= 750, 30, "a quarter of the second wave sent")
            began = time.monotonic()
            assert a.stop(signal.SIGTERM) == 0, a.log.read_text()
            assert time.monotonic() - began < 10 + 2
        everything = set(sent) | set(more)
        results = _read(kafka_bootstrap, t["output_topic"], covers=everything)
        seen = Counter(
            (d["partition"], d["offset"]) for d in map(orjson.loads, (r.value for r in results))
        )
        assert set(seen) == everything
        # The handover committed before leaving: nothing was scored twice.
        assert max(seen.values()) == 1, f"{sum(v > 1 for v in seen.values())} records scored twice"
        assert "event=partitions_revoked" in a.log.read_text()
        assert b.stop() == 0
    finally:
        for s in services:
            s.kill_quietly()


def test_serve_command_exits_2_with_one_line_when_the_input_topic_is_missing(
    kafka_bootstrap, tiny_bundle
):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ANOMALY_SERVE_DLQ_TOPIC": ""}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "serve",
            "--model",
            str(tiny_bundle),
            "--bootstrap-servers",
            kafka_bootstrap,
            "--input-topic",
            "missing-" + uuid.uuid4().hex[:6],
            "--output-topic",
            "also-missing",
            "--metrics-port",
            "0",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "input topic 'missing-" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
