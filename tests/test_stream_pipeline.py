"""The scoring loop's pipeline: a batch is scored in a thread of its own while the loop sends
the one before it and polls and decodes the next (``anomaly.stream.service``).

What these tests check is what the overlap must not change:

- a batch that fails on its way out (here: a NaN score the alarm stage refuses) stops the
  service with nothing past it committed, whether it fails in the loop or in a rebalance
  callback: the next batch, already being scored, is not sent and committed in its place;
- a result's ``processing_time_ms`` is the time from its poll to its scores, not to the
  moment the loop, busy with the next poll, came for them;
- a new model version that is ready while a batch is being scored takes over after it: each
  result names the version that scored it;
- on the real broker, on both clients, a rebalance while a batch is being scored (a backlog,
  so every poll fills a batch) leaves every record exactly one result, in order per input
  partition.

All but the last drive ``ScoringService`` through a scripted transport (no broker); the
last needs the ``kafka_bootstrap`` broker (marked ``kafka``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections import Counter, defaultdict

import numpy as np
import orjson
import pytest

import anomaly
import anomaly.stream.service as service_module
from anomaly.config import AlarmConfig
from anomaly.stream import ScoringService
from anomaly.stream.reload import ServedModel
from anomaly.stream.transport import Record, TopicPartition, Transport
from tests._support import wait_for
from tests.test_stream_service import (
    CLIENTS,
    _config,
    _group_member,
    _produce,
    _read,
    _running,
)

INPUT = "in"
TP0 = TopicPartition(INPUT, 0)


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return anomaly.load(tiny_bundle)


class _Scripted(Transport):
    """A transport whose polls return ``script``'s batches in turn (an entry may be a
    function returning one), every message acknowledged at once; once the script is done
    it stops the service. Partition 0 of the input is assigned from the start."""

    name = "scripted"

    def __init__(self, config, client_id, listener, script):
        super().__init__(config, client_id, listener)
        self.max_message_bytes = 1_048_576
        self.script = list(script)
        self.sent = []
        self.commits: list[dict] = []
        self.reads: list[dict] = []  # read_before's starts, one per restore
        self.before: list[Record] = []  # what read_before finds before the script's records

    def check(self):
        pass

    def open(self):
        self.listener.partitions_assigned({TP0})

    def close(self, deadline):
        pass

    def poll(self, timeout_ms, max_records):
        if not self.script:
            self.listener.stop("script done")
            return []
        step = self.script.pop(0)
        return step() if callable(step) else step

    def seek(self, partition, offset):
        pass

    def pause(self):
        pass

    def resume(self):
        pass

    def commit(self, offsets):
        self.commits.append(dict(offsets))
        self.listener.committed(offsets, None)

    def commit_sync(self, offsets, timeout_s):
        self.commits.append(dict(offsets))

    def high_watermark(self, partition):
        return None

    def end_offsets(self, partitions, timeout_s):
        return {}

    def position(self, partition):
        return None

    def read_before(self, starts, count, timeout_s, cancelled):
        self.reads.append(dict(starts))
        return list(self.before), set()

    def connected(self):
        return True

    def send(self, message):
        self.sent.append(message)
        message.acknowledged()

    def flush(self, timeout_s):
        return True

    def is_record_error(self, error):
        return False

    def describe(self, error):
        return type(error).__name__

    def results(self) -> list[dict]:
        return [orjson.loads(m.value) for m in self.sent if m.topic == "out"]


def _records(detector, first: int, count: int, mark: float | None = None) -> list[Record]:
    """``count`` records of partition 0 from offset ``first``; each record's first feature is
    its offset (or ``mark``), so a scored row says which record it was."""
    rng = np.random.default_rng(first)
    records = []
    for offset in range(first, first + count):
        row = rng.normal(size=len(detector.feature_names))
        row[0] = offset if mark is None else mark
        value = orjson.dumps({"id": offset, "features": row.tolist()})
        records.append(Record(INPUT, 0, offset, b"k%d" % (offset % 3), value, None))
    return records


class _Watcher:
    """The store watcher, with version ``ready`` to take at its ``at_look``-th look (the
    loop looks once per iteration)."""

    def __init__(self, ready: ServedModel, at_look: int):
        self.ready, self.at_look, self.looks = ready, at_look, 0

    def take(self) -> ServedModel | None:
        self.looks += 1
        return self.ready if self.looks == self.at_look else None

    def close(self) -> None:
        pass


def _scripted_service(monkeypatch, model, script, alarms=None, **settings):
    serve = {
        "bootstrap_servers": "scripted:9092",
        "input_topic": INPUT,
        "output_topic": "out",
        "dlq_topic": "dlq",
        "group_id": "pipeline",
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "max_batch_size": 4,  # every scripted batch is full: no wait for a batch to fill
        **settings,
    }
    config = anomaly.Config().updated(serve=serve).serve
    made: list[_Scripted] = []

    def make(config, client_id, listener):
        made.append(_Scripted(config, client_id, listener, script))
        return made[0]

    monkeypatch.setattr(service_module, "make_transport", make)
    service = ScoringService(model, config, alarms=alarms)
    service.start()
    return service, made[0]


def _nan_for_rows_marked_minus_one(monkeypatch, detector):
    """The model's scores of rows whose first feature is -1 are NaN (a model gone bad),
    which the alarm stage refuses (``ValueError``)."""
    score = detector.score

    def nan_for_marked_rows(rows):
        result = score(rows)
        marked = np.asarray(rows)[:, 0] == -1.0
        if not marked.any():
            return result
        nan = np.where(marked, np.nan, 0.0)
        return dataclasses.replace(
            result,
            scores=result.scores + nan,
            components={k: v + nan for k, v in result.components.items()},
        )

    monkeypatch.setattr(detector, "score", nan_for_marked_rows)


def test_a_batch_that_fails_on_its_way_out_stops_the_service_with_nothing_past_it_committed(
    monkeypatch, detector
):
    """A model's output that the alarm stage refuses (a NaN score) stops the service while
    it sends batch 1; batch 2 is being scored meanwhile. Batch 2 must not be sent and
    committed at shutdown: its offsets are past batch 1's, which have no result, so they
    would be skipped for good."""
    _nan_for_rows_marked_minus_one(monkeypatch, detector)
    script = [_records(detector, 0, 4, mark=-1.0), _records(detector, 4, 4)]
    service, transport = _scripted_service(
        monkeypatch, detector, script, alarms=AlarmConfig(method="conformal")
    )
    with pytest.raises(ValueError, match="NaN"):
        service.run()
    committed = [offsets[TP0] for offsets in transport.commits if TP0 in offsets]
    assert not committed, f"offsets committed past records without a result: {committed}"
    assert not transport.results(), "nothing of batch 1 was sent, nor anything after it"


def test_a_batch_that_fails_in_a_rebalance_callback_stops_the_service_all_the_same(
    monkeypatch, detector
):
    """As above, but batch 1 is sent from the revoke callback of a rebalance that gives the
    partition straight back. kafka-python raises a callback's exception from ``poll`` once
    the revocation is done, and its transport takes it for a fetch error (as here): the
    loop must still stop on it, not go on and commit batch 2 past batch 1's records."""
    _nan_for_rows_marked_minus_one(monkeypatch, detector)
    holder: list[ScoringService] = []

    def revoked_in_poll():
        service = holder[0]
        try:
            service.partitions_revoking({TP0})
            service.partitions_revoked({TP0}, 0)
        except Exception as exc:  # noqa: BLE001 (kafka-python's poll, then the transport's)
            service.fetch_failed("KafkaError", repr(exc), None)
        return []

    def given_back():
        holder[0].partitions_assigned({TP0})
        return _records(detector, 4, 4)

    script = [_records(detector, 0, 4, mark=-1.0), revoked_in_poll, given_back]
    service, transport = _scripted_service(
        monkeypatch, detector, script, alarms=AlarmConfig(method="conformal")
    )
    holder.append(service)
    with pytest.raises(ValueError, match="NaN"):
        service.run()
    committed = [offsets[TP0] for offsets in transport.commits if TP0 in offsets]
    assert not committed, f"offsets committed past records without a result: {committed}"
    assert not transport.results()


def test_processing_time_is_from_the_poll_to_the_scores_not_to_the_next_poll(monkeypatch, detector):
    """The poll after batch 1 takes 5 s (a clock jump while batch 1's scores are ready):
    batch 1's ``processing_time_ms`` does not include it; batch 2's is its own."""
    skew = [0.0]
    monkeypatch.setattr(service_module, "perf_counter", lambda: time.perf_counter() + skew[0])
    holder: list[ScoringService] = []

    def slow_poll():
        # Batch 1 is being scored: once its scores are ready, the poll takes 5 s.
        concurrent.futures.wait([holder[0]._in_flight.scoring])
        skew[0] += 5.0
        return _records(detector, 4, 4)

    service, transport = _scripted_service(
        monkeypatch, detector, [_records(detector, 0, 4), slow_poll]
    )
    holder.append(service)
    service.run()
    took = {d["offset"]: d["processing_time_ms"] for d in transport.results()}
    assert sorted(took) == list(range(8))
    assert all(took[o] < 5000 for o in range(4)), f"batch 1 counted the next poll: {took}"
    assert all(took[o] < 5000 for o in range(4, 8)), took


def test_a_version_ready_while_a_batch_is_scored_takes_over_after_it(
    monkeypatch, detector, tiny_bundle
):
    """Version 2 is ready when the loop comes for batch 1's scores (version 1 scoring it):
    batch 1's results name version 1 and were scored by it; batches 2 and 3 are version
    2's, with the threshold and nothing else of version 1."""
    second = anomaly.load(tiny_bundle)
    scored_by: dict[str, set[int]] = {"1": set(), "2": set()}
    for version, model in (("1", detector), ("2", second)):
        score = model.score

        def recording(rows, score=score, seen=scored_by[version]):
            seen.update(int(v) for v in np.asarray(rows)[:, 0])
            return score(rows)

        monkeypatch.setattr(model, "score", recording)

    script = [_records(detector, first, 4) for first in (100, 104, 108)]
    service, transport = _scripted_service(monkeypatch, ServedModel(detector, "1"), script)
    ready = ServedModel(second, "2", 2, service._model_state(second))
    service._watcher = _Watcher(ready, at_look=2)
    service.run()
    versions = {d["offset"]: d["model_version"] for d in transport.results()}
    assert versions == {o: "1" if o < 104 else "2" for o in range(100, 112)}
    for version in ("1", "2"):
        named = {o for o, v in versions.items() if v == version}
        assert named <= scored_by[version], f"version {version} names records it did not score"
    assert service.served.version == "2" and service.stats()["scored"] == 12


def test_a_version_that_takes_over_while_the_partitions_are_revoked_rebuilds_when_they_return(
    monkeypatch, detector, tiny_bundle
):
    """Version 2 is ready while a rebalance has revoked the service's partition and not yet
    given it back. Its alarm streams cannot be rebuilt from that partition then; the state
    kept for it (version 1's) is dropped, so when the partition comes back its keys are
    rebuilt from its records (a ``read_before`` from its next offset), not left to start
    from version 2's reference."""
    second = anomaly.load(tiny_bundle)
    holder: list[ScoringService] = []

    def revoked():
        holder[0].partitions_revoking({TP0})
        holder[0].partitions_revoked({TP0}, 1)
        return []

    def given_back():
        holder[0].partitions_assigned({TP0})
        return _records(detector, 4, 4)

    script = [_records(detector, 0, 4), revoked, [], given_back]
    alarms = AlarmConfig(method="conformal")
    service, transport = _scripted_service(
        monkeypatch, ServedModel(detector, "1"), script, alarms=alarms
    )
    holder.append(service)
    ready = ServedModel(second, "2", 2, service._model_state(second))
    service._watcher = _Watcher(ready, at_look=3)
    service.run()
    assert service.served.version == "2"
    assert transport.reads == [{TP0: 0}, {TP0: 4}]
    versions = {d["offset"]: d["model_version"] for d in transport.results()}
    assert versions == {o: "1" if o < 4 else "2" for o in range(8)}


def test_a_partition_revoked_before_its_first_record_is_restored_when_it_comes_back(
    monkeypatch, detector
):
    """Assigned, then revoked and given back in a rebalance before it sent a record: no
    state was made for its keys, so none was kept, and its first record still brings the
    restore (eager rebalancing revokes every partition at each member change: a quiet
    partition would otherwise miss it at every rolling deploy)."""
    holder: list[ScoringService] = []

    def revoked_and_given_back():
        holder[0].partitions_revoking({TP0})
        holder[0].partitions_revoked({TP0}, 0)
        holder[0].partitions_assigned({TP0})
        return []

    script = [revoked_and_given_back, _records(detector, 10, 4)]
    service, transport = _scripted_service(
        monkeypatch, detector, script, alarms=AlarmConfig(method="conformal")
    )
    holder.append(service)
    service.run()
    assert transport.reads == [{TP0: 10}]


def test_records_read_again_that_the_alarm_stage_refuses_start_the_keys_afresh_not_stop(
    monkeypatch, caplog, detector
):
    """A record before the committed offset whose score the alarm stage refuses (NaN):
    live, such a batch stops the service (``test_a_batch_that_fails_on_its_way_out``);
    read again, it would stop every start, and the offset cannot move past it meanwhile.
    Its partition starts afresh instead, logged, and the live records are scored."""
    _nan_for_rows_marked_minus_one(monkeypatch, detector)
    caplog.set_level("INFO", logger="anomaly.stream")
    service, transport = _scripted_service(
        monkeypatch, detector, [_records(detector, 4, 4)], alarms=AlarmConfig(method="conformal")
    )
    transport.before = _records(detector, 0, 4, mark=-1.0)
    service.run()
    assert sorted(d["offset"] for d in transport.results()) == [4, 5, 6, 7]
    assert "event=key_state_not_restored on=assignment" in caplog.text
    assert "action=start_afresh" in caplog.text


@pytest.mark.parametrize("budget_s", [60.0, 0.0])
def test_a_restore_takes_its_records_in_a_batch_at_a_time_within_its_budget(
    monkeypatch, caplog, detector, budget_s
):
    """The 10 records before the first one polled are read again and taken in a batch (4)
    at a time, each counted as progress for ``/healthz``; with no time left, none is taken
    in: the partition starts afresh, logged, and its records are scored all the same."""
    monkeypatch.setattr(service_module, "RESTORE_S", budget_s)
    caplog.set_level("INFO", logger="anomaly.stream")
    service, transport = _scripted_service(
        monkeypatch,
        detector,
        [_records(detector, 10, 4)],
        alarms=AlarmConfig(method="conformal"),
    )
    transport.before = _records(detector, 0, 10)
    scored: list[int] = []
    score = detector.score
    monkeypatch.setattr(detector, "score", lambda rows: scored.append(len(rows)) or score(rows))
    service.run()
    assert transport.reads == [{TP0: 10}]
    assert sorted(d["offset"] for d in transport.results()) == list(range(10, 14))
    if budget_s:
        assert scored == [4, 4, 2, 4] and "records=10" in caplog.text
    else:
        assert scored == [4] and "reason=not_done_in_0s" in caplog.text


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_a_rebalance_while_a_batch_is_scored_leaves_each_record_one_result_in_order(
    client, kafka_bootstrap, kafka_topic_factory, detector, tiny_bundle_mixing, monkeypatch
):
    """A backlog, so every poll fills a batch and one is always being scored; scoring a
    batch takes 40 ms more than it would. Another member joins the group and leaves:
    each rebalance finds a batch in flight, and every record still gets exactly one
    result, results of an input partition in offset order (kafka-python keeps the position
    of a partition given straight back; librdkafka starts it at its committed offset)."""
    t = {
        "input_topic": kafka_topic_factory(2, prefix="in"),
        "output_topic": kafka_topic_factory(2, prefix="out"),
        "dlq_topic": kafka_topic_factory(1, prefix="dlq"),
    }
    score = detector.score

    def slower(rows):
        time.sleep(0.04)
        return score(rows)

    monkeypatch.setattr(detector, "score", slower)
    rows = np.random.default_rng(3).normal(size=(6000, 3)) @ tiny_bundle_mixing
    messages = [
        (b"e%d" % (i % 13), orjson.dumps({"id": i, "features": row.tolist()}))
        for i, row in enumerate(rows)
    ]
    sent = _produce(kafka_bootstrap, t["input_topic"], messages)
    config = _config(kafka_bootstrap, t, client=client, max_batch_size=32)
    in_flight_at_revoke: list[bool] = []
    with _running(detector, config) as service:
        revoking = service.partitions_revoking

        def watched(revoked):
            in_flight_at_revoke.append(service._in_flight is not None)
            return revoking(revoked)

        service.partitions_revoking = watched
        wait_for(lambda: service.stats()["consumed"] > 0, 30, "the backlog to be read")
        member = _group_member(kafka_bootstrap, config.group_id, t["input_topic"])
        member.close(autocommit=False)
        results = _read(kafka_bootstrap, t["output_topic"], covers=set(sent))
    assert any(in_flight_at_revoke), f"no rebalance met a batch in flight: {in_flight_at_revoke}"
    decoded = [(r.partition, orjson.loads(r.value)) for r in results]
    counts = Counter((d["partition"], d["offset"]) for _, d in decoded)
    assert set(counts) == set(sent), f"{len(set(sent) - set(counts))} records without a result"
    twice = sorted(place for place, n in counts.items() if n > 1)
    assert not twice, f"{len(twice)} records with more than one result, e.g. {twice[:5]}"
    offsets = defaultdict(list)  # (output partition, input partition) -> input offsets
    for out, d in decoded:
        offsets[out, d["partition"]].append(d["offset"])
    for (_, partition), seen in offsets.items():
        assert seen == sorted(seen), f"results of input partition {partition} out of order"
