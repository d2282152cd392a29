"""The scoring loop: consume a micro-batch, score it in one call, produce results, commit.

Delivery is at-least-once. Offsets are committed only for records whose results (and
dead-letter and alert records) Kafka has acknowledged:

1. poll up to ``max_batch_size`` records, waiting at most ``max_wait_ms`` for the batch to
   fill once its first record is in;
2. validate and decode them (``messages``), score the accepted ones with a single
   ``detector.score`` call, encode one result per record and hand them to the producer, and
   rejected records to the dead-letter topic;
3. keep the batch's producer futures; a batch is *settled* once all of them succeeded, in
   batch order, and only settled batches' offsets are committed (asynchronously, at most
   every ``commit_interval_ms``; synchronously on rebalance and shutdown). A failed delivery
   stops the service (``DeliveryError``) without committing that batch: a restart scores it
   again.

The producer works in its own thread while the loop polls and scores the next batch. When
more than ``max_pending_results`` results are unacknowledged, the input partitions are
paused (back-pressure) until half of them are.

Rebalances: before partitions are revoked the producer is flushed and what is settled is
committed, so the next owner starts right after the last result produced here; records
polled but not yet processed for those partitions are dropped (the next owner reads them).
The per-key state of the keys of revoked partitions (time-series windows,
``anomaly.stream.windowing``; conformal alarms, ``anomaly.stream.alarms``) is dropped, unless
the same partitions are assigned straight back.

``stop()`` (SIGTERM/SIGINT in ``anomaly.stream.serve``) lets the batch in hand finish, then
flushes, commits, leaves the group and closes, within ``shutdown_timeout_s``.
"""

from __future__ import annotations

import base64
import gc
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING

import numpy as np
from kafka import TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from anomaly.config import COMPONENTS, ServeConfig
from anomaly.stream.alarms import KeyedAlarms
from anomaly.stream.clients import check_broker, make_consumer, make_producer
from anomaly.stream.endpoints import MetricsServer
from anomaly.stream.errors import DeliveryError, StreamError
from anomaly.stream.messages import RecordDecoder, ResultEncoder, encode_rejection
from anomaly.stream.metrics import ServiceMetrics
from anomaly.stream.partitioning import KeyPartitions
from anomaly.stream.windowing import KeyedWindows

if TYPE_CHECKING:
    from anomaly.detector import Detector

log = logging.getLogger("anomaly.stream")

#: How long an idle poll waits for records. Kept short: kafka-python's poll can sleep
#: through its whole timeout when it has no fetch in flight, even if records arrive.
IDLE_POLL_MS = 25
#: Poll timeout while results await acknowledgement, so they are settled (and committed)
#: promptly without blocking the loop on the producer.
PENDING_POLL_MS = 5
#: Longest a blocking wait for acknowledgements lasts (while paused by back-pressure).
FLUSH_WAIT_S = 1.0
#: Seconds between consumer-lag updates.
LAG_INTERVAL_S = 1.0
#: The loop counts as alive (``/healthz``) if an iteration began this recently; generous
#: because a rebalance can hold a poll for up to the session timeout (45 s).
ALIVE_STALE_S = 120.0

PROFILE_STAGES = ("poll", "decode", "score", "encode", "send", "flush", "commit", "bookkeeping")


@dataclass
class _Batch:
    """Results of one micro-batch handed to the producer, not yet acknowledged."""

    futures: list
    offsets: dict[TopicPartition, int]
    """Next offset per input partition: what to commit once the futures succeeded."""
    kafka_timestamps_ms: list[int]


class ScoringService:
    """Consumes records from Kafka, scores them with ``detector`` and produces results.

    ``start()`` checks the broker and topics, warms the model up and opens the metrics
    endpoint (raising ``StreamError`` with a clear message when something is wrong);
    ``run()`` loops until ``stop()`` is called (from any thread or a signal handler) and then
    shuts down cleanly. ``run()`` calls ``start()`` itself when needed.
    """

    def __init__(self, detector: Detector, config: ServeConfig, *, client_id: str | None = None):
        if not np.isfinite(detector.threshold):
            raise StreamError(f"model {detector.version} has no calibrated threshold; retrain it")
        self.detector = detector
        self.config = config
        self.client_id = client_id or f"{config.group_id}-{detector.version}"
        names = detector.feature_names
        window = detector.schema.window
        self._decoder = RecordDecoder(names, config.max_message_bytes)
        self._encoder = ResultEncoder(
            detector.version, detector.threshold, time_series=bool(window)
        )
        self._windows = KeyedWindows(window, len(names), config.max_entities) if window else None
        params = detector.engine.params
        self._alarms = KeyedAlarms.for_model(params, config) if config.alarm_history else None
        self.metrics = ServiceMetrics(
            model_version=detector.version,
            formulation=params.formulation,
            threshold=detector.threshold,
            target_fpr=params.target_fpr,
            max_batch_size=config.max_batch_size,
        )
        self._profile = dict.fromkeys(PROFILE_STAGES, 0.0)
        self._counts = {
            "batches": 0,
            "consumed": 0,
            "scored": 0,
            "rejected": 0,
            "flagged": 0,
            "commits": 0,
        }
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._consumer = None
        self._producer = None
        self._output_partition: KeyPartitions | None = None
        self._server: MetricsServer | None = None
        self._started = False
        self._running = False
        self._last_tick = 0.0
        self._pending: deque[_Batch] = deque()
        self._pending_results = 0
        self._settled: dict[TopicPartition, int] = {}  # acknowledged, not yet committed
        self._positions: dict[TopicPartition, int] = {}  # next offset after the last consumed
        self._assigned: set[TopicPartition] = set()
        self._rebalances = 0
        self._last_revoked: set[int] = set()
        self._forget_on_assign: set[int] = set()
        #: First record dropped at a revocation, per partition, to rewind to if it comes back.
        self._rewind: dict[TopicPartition, int] = {}
        self._fatal: BaseException | None = None
        self._paused = False
        #: When the consumer last lost its assignment (or subscribed), until one arrives.
        self._unassigned_since: float | None = None
        self._last_commit_attempt = 0.0
        self._last_lag_update = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Validate the model and broker, open the endpoint and the clients; fail fast."""
        if self._started:
            return
        shape = (1, *self.detector.schema.record_shape)
        self.detector.score(np.zeros(shape, np.float32))  # compiles the scoring graph now
        check_broker(self.config)
        self._server = MetricsServer(
            self.metrics.registry,
            self.config.metrics_host,
            self.config.metrics_port,
            self.alive,
            self.ready,
        )
        config = self.config
        try:
            self._producer = make_producer(config, self.client_id)
            for topic in (config.output_topic, config.dlq_topic, config.alerts_topic):
                if topic:  # fetch metadata now, not while the first batch waits
                    self._producer.partitions_for(topic)
            self._output_partition = KeyPartitions(self._producer, config.output_topic)
            self._consumer = make_consumer(config, self.client_id)
            # Known partitions before joining, or the first assignment can come back empty.
            if not self._consumer.partitions_for_topic(config.input_topic):
                raise StreamError(f"no partitions found for input topic {config.input_topic!r}")
            self._subscribe()
            # A blocking metadata refresh after subscribing: kafka-python's group coordinator
            # snapshots the topic's partitions from it. Without it the first assignment is made
            # from an empty snapshot and a second rebalance follows at once, which kafka-python
            # 3.0.12 can leave unfinished (see _rejoin_if_stalled).
            self._consumer.topics()
        except BaseException:
            self._close_clients(time.monotonic() + config.shutdown_timeout_s)
            self._server.close()
            self._server = None
            raise
        self._started = True
        # The model and its framework are long-lived objects: keep them out of the cyclic
        # garbage collector's full passes, which would otherwise pause the loop for tens of ms.
        gc.collect()
        gc.freeze()
        log.info(
            "event=started model_version=%s formulation=%s features=%d window=%s "
            "input_topic=%s output_topic=%s dlq_topic=%s alerts_topic=%s group_id=%s "
            "metrics=%s:%d max_batch_size=%d",
            self.detector.version,
            self.detector.engine.params.formulation,
            len(self.detector.feature_names),
            self.detector.schema.window,
            self.config.input_topic,
            self.config.output_topic,
            self.config.dlq_topic,
            self.config.alerts_topic,
            self.config.group_id,
            self.config.metrics_host,
            self.metrics_port,
            self.config.max_batch_size,
        )

    def _subscribe(self) -> None:
        """Join the group for the input topic (the join itself happens in ``poll``)."""
        self._consumer.subscribe([self.config.input_topic], listener=_RebalanceListener(self))
        self._unassigned_since = time.monotonic()

    def _rejoin_if_stalled(self) -> None:
        """Subscribe afresh if the consumer has been without an assignment for longer than the
        session timeout (after which the broker has given up on this member anyway).

        kafka-python 3.0.12 leaves a rebalance unfinished when a short poll times out while
        the group leader's SyncGroup is in flight and the rebalance began from a metadata
        change: its join loop never resumes, no assignment arrives and heartbeats stay off.
        No metadata refresh here: ``topics()`` has no timeout, and a broker outage is one
        way to get here.
        """
        if self._unassigned_since is None:
            return
        unassigned_s = time.monotonic() - self._unassigned_since
        if unassigned_s < self.config.session_timeout_ms / 1000:
            return
        log.warning("event=rebalance_stalled unassigned_s=%.1f action=resubscribe", unassigned_s)
        self.metrics.rejoins.inc()
        self._consumer.unsubscribe()
        self._subscribe()

    def run(self) -> None:
        """Score until ``stop()``; then finish the batch in hand, flush, commit and close."""
        self.start()
        self._running = True
        self._last_tick = time.monotonic()
        failure: BaseException | None = None
        try:
            while not self._stop.is_set():
                self._last_tick = time.monotonic()
                records, polled_at = self._collect()
                if self._fatal is not None:
                    raise self._fatal
                if records:
                    self._process(records, polled_at)
                self._settle(block=self._paused)
                self._commit_settled()
                self._apply_backpressure()
                self._update_lag()
                self._rejoin_if_stalled()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._shutdown(failure)

    def stop(self, reason: str = "requested") -> None:
        """Ask the loop to stop after the batch in hand; safe from any thread or a signal."""
        if not self._stop.is_set():
            self._stop_requested_at = time.monotonic()
            log.info("event=stopping reason=%s", reason)
        self._stop.set()

    # -- state for probes, tests and benchmarks ---------------------------------------------

    @property
    def metrics_port(self) -> int | None:
        return self._server.port if self._server else None

    def alive(self) -> bool:
        """The loop is running and began an iteration recently (``/healthz``)."""
        return self._running and time.monotonic() - self._last_tick < ALIVE_STALE_S

    def ready(self) -> bool:
        """The model is loaded and input partitions are assigned (``/readyz``)."""
        return self._running and bool(self._assigned) and not self._stop.is_set()

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def stats(self) -> dict[str, int]:
        """Counts so far: batches, consumed, scored, rejected, flagged, commits, and
        pending_results (handed to the producer, not yet acknowledged)."""
        return {**self._counts, "pending_results": self._pending_results}

    def profile(self) -> dict[str, float]:
        """Seconds the loop spent in each stage (``PROFILE_STAGES``) so far."""
        return dict(self._profile)

    # -- the loop ---------------------------------------------------------------------------

    def _collect(self) -> tuple[list, float]:
        """Poll one micro-batch: up to max_batch_size records, waiting at most max_wait_ms
        after the first one for it to fill."""
        start = perf_counter()
        consumer = self._consumer
        limit = self.config.max_batch_size
        timeout = PENDING_POLL_MS if self._pending else IDLE_POLL_MS
        polled = consumer.poll(timeout_ms=timeout, max_records=limit)
        records = (
            [r for part in polled.values() for r in part]
            if len(polled) != 1
            else next(iter(polled.values()))
        )
        polled_at = perf_counter()
        if records and len(records) < limit and self.config.max_wait_ms > 0:
            deadline = polled_at + self.config.max_wait_ms / 1000
            while len(records) < limit and not self._stop.is_set():
                remaining = deadline - perf_counter()
                if remaining <= 0:
                    break
                rebalances = self._rebalances
                more = consumer.poll(
                    timeout_ms=max(1, int(remaining * 1000)), max_records=limit - len(records)
                )
                fresh = [r for part in more.values() for r in part]
                if self._rebalances != rebalances:
                    records = self._drop_revoked(records, fresh)
                else:
                    records = records + fresh
                if not fresh:
                    break
        self._profile["poll"] += perf_counter() - start
        return records, polled_at

    def _drop_revoked(self, held: list, fresh: list) -> list:
        """The records in hand after a rebalance during a poll of the micro-batch.

        Those of revoked partitions are dropped: their offsets were not committed, so whoever
        owns the partition next scores them. A dropped partition that comes back to this
        consumer is rewound to its first dropped record, now or when it is assigned, because
        kafka-python keeps the fetch position of a partition it gets back and would skip
        them; records of it fetched past that point are dropped too and fetched again.
        """
        first_dropped: dict[int, int] = {}
        for record in held:
            if record.partition in self._last_revoked:
                first_dropped.setdefault(record.partition, record.offset)
        rewound = set()
        for partition, offset in first_dropped.items():
            tp = TopicPartition(self.config.input_topic, partition)
            if tp in self._assigned:
                self._consumer.seek(tp, offset)
                rewound.add(partition)
            elif self._unassigned_since is not None:  # the new assignment is still to come
                self._rewind[tp] = offset
        return [r for r in held if r.partition not in first_dropped] + [
            r for r in fresh if r.partition not in rewound
        ]

    def _process(self, records: list, polled_at: float) -> None:
        profile = self._profile
        config = self.config
        t0 = perf_counter()
        decoded = self._decoder.decode([r.value for r in records])
        accepted = decoded.accepted
        t1 = perf_counter()
        profile["decode"] += t1 - t0

        chosen = [records[i] for i in accepted]
        partitions = [r.partition for r in chosen]
        result = None
        scored_positions = None
        if accepted:
            if self._windows is None:
                result = self.detector.score(decoded.rows)
            else:
                windows, scored_positions = self._windows.push(
                    decoded.rows, [r.key for r in chosen], partitions
                )
                if len(windows):
                    result = self.detector.score(windows)
        t2 = perf_counter()
        profile["score"] += t2 - t1

        flags: list[bool] = []
        payloads: list[bytes] = []
        alarms = None
        if result is not None or accepted:
            if result is None:  # time-series mode, no window complete in this batch
                result = _EMPTY_RESULT
                scored_positions = []
            if self._alarms is not None:
                scored = range(len(chosen)) if scored_positions is None else scored_positions
                alarms = self._alarms.update(
                    self._alarms.columns(result),
                    [chosen[i].key for i in scored],
                    [partitions[i] for i in scored],
                )
            payloads, flags = self._encoder.encode(
                partitions,
                [r.offset for r in chosen],
                decoded.ids,
                decoded.timestamps,
                result,
                scored_positions,
                (t2 - polled_at) * 1000,
                alarms,
            )
        t3 = perf_counter()
        profile["encode"] += t3 - t2

        send = self._producer.send
        topic = config.output_topic
        partition_of = self._output_partition
        futures = [
            send(topic, value=v, key=r.key, partition=partition_of(r.key))
            for v, r in zip(payloads, chosen, strict=True)
        ]
        n_flagged = n_alerts = 0
        if result is not None and len(result):
            n_flagged = int(np.count_nonzero(result.is_anomaly))
            n_alerts = n_flagged if alarms is None else int(np.count_nonzero(alarms[1]))
            if n_alerts and config.alerts_topic:
                alerts = config.alerts_topic
                futures.extend(
                    send(alerts, value=v, key=r.key)
                    for v, r, f in zip(payloads, chosen, flags, strict=True)
                    if f
                )
        for index, reason, detail in decoded.rejected:
            record = records[index]
            self.metrics.rejected.labels(reason).inc()
            if config.dlq_topic:
                payload = encode_rejection(record, reason, detail, self.detector.version)
                futures.append(send(config.dlq_topic, value=payload, key=record.key))
            else:
                _log_rejection(record, reason, detail)
        t4 = perf_counter()
        profile["send"] += t4 - t3

        offsets = {}
        for r in records:
            offsets[r.partition] = r.offset + 1
        topic_in = config.input_topic
        next_offsets = {TopicPartition(topic_in, p): o for p, o in offsets.items()}
        self._positions.update(next_offsets)
        self._pending.append(_Batch(futures, next_offsets, [r.timestamp for r in records]))
        self._pending_results += len(futures)

        n, n_scored = len(records), (len(result) if result is not None else 0)
        m = self.metrics
        m.consumed.inc(n)
        m.batch_size.observe_repeated(n, 1)
        m.processing_latency.observe_repeated(t4 - polled_at, n)
        if n_scored:
            m.scored.inc(n_scored)
            m.record_score.observe(result.scores)
            if n_flagged:
                m.flagged.inc(n_flagged)
            if alarms is not None and n_alerts:
                m.alarms.inc(n_alerts)
        counts = self._counts
        counts["batches"] += 1
        counts["consumed"] += n
        counts["scored"] += n_scored
        counts["rejected"] += len(decoded.rejected)
        counts["flagged"] += n_flagged
        profile["bookkeeping"] += perf_counter() - t4

    def _settle(self, block: bool = False, raise_on_failure: bool = True) -> None:
        """Move acknowledged batches (in order) from pending to settled offsets."""
        if not self._pending:
            return
        if block:
            start = perf_counter()
            try:
                self._producer.flush(timeout=FLUSH_WAIT_S)
            except KafkaTimeoutError:
                log.warning(
                    "event=flush_slow pending_results=%d waited_s=%.1f",
                    self._pending_results,
                    FLUSH_WAIT_S,
                )
            self._profile["flush"] += perf_counter() - start
        start = perf_counter()
        now = time.time()
        stamps: list[int] = []
        while self._pending:
            batch = self._pending[0]
            futures = batch.futures
            if futures and not (futures[-1].is_done and all(f.is_done for f in futures)):
                break
            failed = [f for f in futures if f.exception is not None]
            if failed:
                error = DeliveryError(
                    f"Kafka did not acknowledge {len(failed)} of {len(futures)} results of a batch "
                    f"({failed[0].exception!r}); their input offsets are not committed and will be "
                    "scored again after a restart"
                )
                if raise_on_failure:
                    raise error
                log.error("event=delivery_failed %s", error)
                break
            self._pending.popleft()
            self._pending_results -= len(futures)
            self._settled.update(batch.offsets)
            stamps.extend(batch.kafka_timestamps_ms)
        if stamps:
            self.metrics.end_to_end_latency.observe(
                now - np.asarray(stamps, dtype=np.float64) / 1000.0
            )
        self._profile["bookkeeping"] += perf_counter() - start

    def _commit_settled(self, force: bool = False) -> None:
        """Commit settled offsets of assigned partitions asynchronously (rate-limited)."""
        if not self._settled:
            return
        now = time.monotonic()
        if not force and (now - self._last_commit_attempt) * 1000 < self.config.commit_interval_ms:
            return
        offsets = self._take_settled(self._assigned)
        if not offsets:
            return
        start = perf_counter()
        self._last_commit_attempt = now
        self._consumer.commit_async(offsets, callback=self._on_commit)
        self._profile["commit"] += perf_counter() - start

    def _take_settled(self, partitions) -> dict[TopicPartition, OffsetAndMetadata]:
        offsets = {
            tp: OffsetAndMetadata(o, "", -1) for tp, o in self._settled.items() if tp in partitions
        }
        for tp in offsets:
            del self._settled[tp]
        return offsets

    def _on_commit(self, offsets, response) -> None:
        if isinstance(response, BaseException):
            log.warning(
                "event=commit_failed error=%r partitions=%d (retried with the next commit)",
                response,
                len(offsets),
            )
            for tp, meta in offsets.items():
                if tp in self._assigned and self._settled.get(tp, -1) < meta.offset:
                    self._settled[tp] = meta.offset
            return
        self._counts["commits"] += 1
        self.metrics.last_commit.set(time.time())

    def _commit_sync(self, partitions, deadline: float) -> int:
        offsets = self._take_settled(partitions)
        if not offsets:
            return 0
        start = perf_counter()
        try:
            self._consumer.commit(
                offsets, timeout_ms=max(1, int((deadline - time.monotonic()) * 1000))
            )
            self._on_commit(offsets, None)
        except KafkaError as exc:
            log.warning("event=commit_failed error=%r partitions=%d", exc, len(offsets))
        self._profile["commit"] += perf_counter() - start
        return len(offsets)

    def _apply_backpressure(self) -> None:
        limit = self.config.max_pending_results
        if not self._paused and self._pending_results > limit:
            partitions = self._consumer.assignment()
            self._consumer.pause(*partitions)
            self._paused = True
            self.metrics.backpressure_pauses.inc()
            log.info(
                "event=paused pending_results=%d max_pending_results=%d",
                self._pending_results,
                limit,
            )
        elif self._paused and self._pending_results <= limit // 2:
            self._consumer.resume(*self._consumer.paused())
            self._paused = False
            log.info("event=resumed pending_results=%d", self._pending_results)

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_update < LAG_INTERVAL_S:
            return
        self._last_lag_update = now
        self._output_partition.refresh()  # the output topic may have grown
        consumer = self._consumer
        for tp in list(self._assigned):
            try:
                high = consumer.highwater(tp)
                position = self._positions.get(tp)
                if position is None:
                    position = consumer.position(tp, timeout_ms=50)
            except KafkaError:
                continue
            if high is not None and position is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - position))

    # -- rebalances (called by the consumer while the loop is blocked in poll or close) -----

    async def _partitions_revoked(self, revoked) -> None:
        revoked = set(revoked)
        self._begin_rebalance(revoked)
        if not revoked:
            return
        committed = 0
        if self._producer is not None:
            try:
                self._producer.flush(timeout=self.config.shutdown_timeout_s)
            except KafkaTimeoutError:
                log.warning("event=flush_slow on=revoke pending_results=%d", self._pending_results)
            try:
                self._settle(raise_on_failure=True)
            except DeliveryError as exc:
                self._fatal = exc
            offsets = self._take_settled(revoked)
            if offsets:
                try:
                    await self._consumer.commit_async(offsets, callback=self._on_commit)
                    committed = len(offsets)
                except Exception as exc:  # noqa: BLE001 (any failure: the next owner re-scores)
                    log.warning("event=commit_failed on=revoke error=%r", exc)
        self._drop(revoked, keep_key_state=not self._pending)
        log.info("event=partitions_revoked partitions=%s committed=%d", _names(revoked), committed)

    def _partitions_assigned(self, assigned) -> None:
        assigned = set(assigned)
        self._assigned |= assigned
        self._unassigned_since = None
        for tp in assigned & self._rewind.keys():
            self._consumer.seek(tp, self._rewind[tp])
        self._rewind = {}
        gone = self._forget_on_assign - {tp.partition for tp in assigned}
        if gone:
            self._forget_keys(gone)
        self._forget_on_assign = set()
        self._paused = False  # a new assignment starts unpaused
        log.info("event=partitions_assigned partitions=%s", _names(assigned))

    def _begin_rebalance(self, taken: set[TopicPartition]) -> None:
        """Note partitions revoked or lost: the poll in hand drops their records, and the
        consumer is without an assignment until the next one arrives."""
        self._rebalances += 1
        self._last_revoked = {tp.partition for tp in taken}
        if self._unassigned_since is None:
            self._unassigned_since = time.monotonic()

    def _partitions_lost(self, lost) -> None:
        lost = set(lost)
        self._begin_rebalance(lost)
        self._drop(lost, keep_key_state=False)
        log.warning(
            "event=partitions_lost partitions=%s (not committed; the next owner re-scores)",
            _names(lost),
        )

    def _drop(self, partitions: set[TopicPartition], keep_key_state: bool) -> None:
        self._assigned -= partitions
        for tp in partitions:
            self._settled.pop(tp, None)
            self._positions.pop(tp, None)
            try:
                self.metrics.lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        numbers = {tp.partition for tp in partitions}
        if keep_key_state:
            self._forget_on_assign |= numbers
        else:
            self._forget_keys(numbers)

    def _forget_keys(self, partitions: set[int]) -> None:
        """Drop the per-key state (windows, alarms) of the keys of ``partitions``."""
        for state in (self._windows, self._alarms):
            if state is not None:
                state.forget_partitions(partitions)

    # -- shutdown ---------------------------------------------------------------------------

    def _shutdown(self, failure: BaseException | None) -> None:
        started = self._stop_requested_at or time.monotonic()
        deadline = started + self.config.shutdown_timeout_s
        self._stop.set()
        try:
            if self._producer is not None and self._pending:
                start = perf_counter()
                try:
                    self._producer.flush(timeout=max(0.1, (deadline - time.monotonic()) * 0.6))
                except KafkaTimeoutError:
                    log.warning(
                        "event=flush_slow on=shutdown pending_results=%d", self._pending_results
                    )
                self._profile["flush"] += perf_counter() - start
            self._settle(raise_on_failure=False)
            if self._consumer is not None:
                self._commit_sync(set(self._assigned), deadline)
        except Exception as exc:  # noqa: BLE001 (closing must go on)
            log.warning("event=shutdown_error error=%r", exc)
        finally:
            self._close_clients(deadline)
            self._running = False
            if self._server is not None:
                self._server.close()
                self._server = None
            c = self._counts
            log.info(
                "event=stopped consumed=%d scored=%d rejected=%d flagged=%d "
                "uncommitted_batches=%d%s",
                c["consumed"],
                c["scored"],
                c["rejected"],
                c["flagged"],
                len(self._pending),
                f" error={failure!r}"
                if failure is not None and not isinstance(failure, KeyboardInterrupt)
                else "",
            )

    def _close_clients(self, deadline: float) -> None:
        remaining_ms = max(100, int((deadline - time.monotonic()) * 1000))
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False, timeout_ms=remaining_ms)
            except Exception as exc:  # noqa: BLE001
                log.warning("event=close_error client=consumer error=%r", exc)
            self._consumer = None
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                producer.close(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001
                log.warning("event=close_error client=producer error=%r", exc)


class _RebalanceListener(AsyncConsumerRebalanceListener):
    """Runs on the consumer's network thread; async so the revoke commit can be awaited."""

    def __init__(self, service: ScoringService):
        self._service = service

    async def on_partitions_revoked(self, revoked):
        await self._service._partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned):
        self._service._partitions_assigned(assigned)

    async def on_partitions_lost(self, lost):
        self._service._partitions_lost(lost)


class _EmptyResult:
    """Stands in for a ScoreResult when no record of a batch completed a window."""

    scores = is_anomaly = percentiles = np.empty(0)
    components = {name: np.empty(0) for name in COMPONENTS}
    top_features: list = []

    def __len__(self) -> int:
        return 0


_EMPTY_RESULT = _EmptyResult()


def _names(partitions) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions)) or "-"


def _log_rejection(record, reason: str, detail: str) -> None:
    value = record.value or b""
    log.warning(
        "event=rejected reason=%s topic=%s partition=%d offset=%d detail=%r value_base64=%s%s",
        reason,
        record.topic,
        record.partition,
        record.offset,
        detail,
        base64.b64encode(value[:4096]).decode(),
        " (truncated)" if len(value) > 4096 else "",
    )
