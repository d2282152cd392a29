"""The scoring loop: consume a micro-batch, score it in one call, produce results, commit.

Delivery is at-least-once. Offsets are committed only for records whose results (and
dead-letter and alert records) Kafka has acknowledged:

1. poll up to ``max_batch_size`` records, waiting at most ``max_wait_ms`` for the batch to
   fill once its first record is in;
2. validate and decode them (``messages``), score the accepted ones with a single
   ``detector.score`` call, encode one result per record and hand them to the producer, and
   rejected records to the dead-letter topic. The scoring runs in a thread of its own, one
   batch at a time: while it scores a batch, the loop sends the results of the one before
   and polls and decodes the next (the model's frameworks compute outside Python's lock).
   Batches are still sent in the order they were polled, the in-flight one is sent before
   a rebalance and at shutdown, and a new model version takes over with none in flight;
3. the batch then waits in ``delivery.Delivery`` until Kafka has acknowledged all of its
   messages; only then are its offsets committed (asynchronously, at most every
   ``commit_interval_ms``; synchronously on rebalance and shutdown).

**A record's failure is that record's.** Whatever stage fails for one record (decoding,
validation, scoring, encoding its result, Kafka refusing the result) sends that record to
the dead-letter topic with the reason, and the stream goes on. What cannot be written for a
while (the broker, the output or dead-letter topic unavailable) is sent again, with the
input paused meanwhile; nothing is dropped.

The producer works in its own thread(s) while the loop polls and scores the next batch.
When more than ``max_pending_results`` results are unacknowledged the input partitions are
paused (back-pressure) until half of them are.

**The client library** is behind a ``transport.Transport`` (``[serve] client``:
kafka-python, the default, or confluent-kafka on librdkafka): making and configuring the
clients, what a record looks like, acknowledgements, commits, pauses, seeks, rebalances and
unreadable batches. The loop, its rules and its metrics are the same for both.

**The broker.** The loop watches the consumer's connections (``broker_watch``): when none
has been up for a few seconds it logs ``event=broker_lost`` once and ``/readyz`` answers
503; when one is back it logs ``event=broker_back``. The clients reconnect by themselves
(their reconnect backoff is capped, see ``clients`` and ``confluent_transport``).

Rebalances (``rebalance.Assignment`` holds the rules): before partitions are revoked the
producer is flushed and what is settled is committed, so the next owner starts right after
the last result produced here; records polled but not yet processed for those partitions
are dropped (the next owner reads them). The per-key state of the keys of revoked
partitions (time-series windows, ``anomaly.stream.windowing``; alarm streams,
``anomaly.alarms``) is dropped, unless the same partitions are assigned straight back.

**The model.** Serving a model store, a new version (or a pinned one) is loaded, checked
and warmed in a thread of its own and takes over between two batches (``reload``); each
result names the version that scored it.

``stop()`` (SIGTERM/SIGINT in ``anomaly.stream.serve``) lets the batch in hand finish, then
flushes, commits, leaves the group and closes, within ``shutdown_timeout_s``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from time import perf_counter
from typing import TYPE_CHECKING

import numpy as np

from anomaly.alarms import AlarmStage
from anomaly.config import COMPONENTS, AlarmConfig, ServeConfig
from anomaly.drift import DriftMonitor
from anomaly.stream import codecs, kafka_options, listener_probe
from anomaly.stream.broker_watch import BrokerWatch
from anomaly.stream.client_logs import Throttle
from anomaly.stream.delivery import GIVEN_UP, Delivery, Outgoing
from anomaly.stream.endpoints import MetricsServer
from anomaly.stream.entities import entity_of
from anomaly.stream.errors import BrokerUnreachable, StreamError, describe_error
from anomaly.stream.kafka_options import check_tls_files
from anomaly.stream.messages import (
    RECORD_OVERHEAD_BYTES,
    DecodedBatch,
    RecordDecoder,
    ResultEncoder,
    encode_rejection,
)
from anomaly.stream.metrics import ServiceMetrics
from anomaly.stream.rebalance import Assignment, partition_names
from anomaly.stream.reload import ServedModel, StoreWatcher, warm_up
from anomaly.stream.restore import DEFAULT_MAX_POLL_INTERVAL_MS, RESTORE_READ_S, RESTORE_S
from anomaly.stream.transport import TopicPartition, Transport, Unreadable, make_transport
from anomaly.stream.windowing import KeyedWindows

if TYPE_CHECKING:
    from anomaly.detector import Detector, ScoreResult

log = logging.getLogger("anomaly.stream")
codecs.install()  # kafka-python's batches unpack to at most codecs.MAX_BATCH_BYTES

#: How long an idle poll waits for records. Kept short: kafka-python's poll can sleep
#: through its whole timeout when it has no fetch in flight, even if records arrive.
IDLE_POLL_MS = 25
#: Poll timeout while results await acknowledgement, so they are settled (and committed)
#: promptly without blocking the loop on the producer.
PENDING_POLL_MS = 5
#: Longest a blocking wait for acknowledgements lasts (while paused by back-pressure).
FLUSH_WAIT_S = 1.0
#: Most of ``shutdown_timeout_s`` kept, at the end, for what follows the last wait for the
#: broker: destroying the clients and closing the metrics server (about 0.4 s idle, more
#: under load). Without it the waits took the whole timeout and, with the broker down, the
#: stop ran past the exit watchdog (``process.WATCHDOG_GRACE_S`` later).
SHUTDOWN_RESERVE_S = 1.0
#: Seconds between consumer-lag updates and broker-connection checks.
LAG_INTERVAL_S = 1.0
#: Seconds between asking the broker for the input partitions' end offsets, and the
#: longest the loop waits for its answer (the partitions not answered by then keep the
#: high watermark the consumer saw last).
END_OFFSETS_INTERVAL_S, END_OFFSETS_TIMEOUT_S = 5.0, 0.25
#: The loop counts as alive (``/healthz``) if an iteration began this recently; generous
#: because a rebalance can hold a poll for up to the session timeout.
ALIVE_STALE_S = 120.0
#: Seconds between start-up's tries to reach a broker that did not answer (each try itself
#: waits up to the bootstrap timeout).
BROKER_RETRY_S = 2.0
#: Seconds a listener that cannot be reached is given to answer what it speaks, each way.
LISTENER_PROBE_S = 3.0
#: Times the clients may fail to open while the broker answers before the start stops: the
#: first may be a broker that came back during the attempt.
OPEN_TRIES_WHILE_ANSWERING = 2
#: Most a dead letter Kafka refused is cut to (its original key and value mostly cut away);
#: refused again, it is cut to a quarter of its size, until nothing is left to cut.
HARD_CUT_BYTES = 16 * 1024

PROFILE_STAGES = ("poll", "decode", "score", "encode", "send", "flush", "commit", "bookkeeping")


class ScoringService:
    """Consumes records from Kafka, scores them with ``detector`` and produces results.

    ``start()`` checks the broker and topics, warms the model up and opens the metrics
    endpoint (raising ``StreamError`` with a clear message when something is wrong);
    ``run()`` loops until ``stop()`` is called (from any thread or a signal handler) and then
    shuts down cleanly. ``run()`` calls ``start()`` itself when needed.

    ``model`` is a ``Detector`` or a ``reload.ServedModel`` (a store's version, which the
    service then follows: ``anomaly.stream.reload``). ``alarms`` (default: the model's
    ``[alarms]``; a function of the model to resolve them for each version served) chooses
    what decides a record's alert: the model's threshold, or an adaptive method per Kafka
    key (``anomaly.alarms``), whose level and decision then join each result as
    ``p_value`` and ``alarm``.
    """

    def __init__(
        self,
        model: Detector | ServedModel,
        config: ServeConfig,
        *,
        alarms: AlarmConfig | Callable[[Detector], AlarmConfig] | None = None,
        client_id: str | None = None,
    ):
        served = model if isinstance(model, ServedModel) else ServedModel(model, model.version)
        detector = served.detector
        if not np.isfinite(detector.threshold):
            raise StreamError(f"model {served.version} has no calibrated threshold; retrain it")
        self.served = served
        self.config = config
        self.client_id = client_id or f"{config.group_id}-{detector.version}"
        names = detector.feature_names
        window = detector.schema.window
        self._decoder = RecordDecoder(names, config.max_message_bytes)
        self._encoder: ResultEncoder | None = None  # needs the producer's size limit
        self._max_bytes = 0
        self._windows = KeyedWindows(window, len(names), config.max_entities) if window else None
        if callable(alarms):
            self._alarms_for = alarms
        else:
            self._alarms_for = lambda d: d.config.alarms if alarms is None else alarms
        self._alarms, self._drift = self._model_state(detector)
        self.metrics = ServiceMetrics(
            model_version=served.version,
            formulation=detector.engine.params.formulation,
            threshold=detector.threshold,
            target_fpr=detector.engine.params.target_fpr,
            max_batch_size=config.max_batch_size,
        )
        self._watcher = None
        if served.store_version is not None and config.model and config.model_poll_s > 0:
            self._watcher = StoreWatcher(
                config.model,
                served,
                poll_s=config.model_poll_s,
                pinned=config.model_version,
                prepare=self._model_state,
                warm_batch=config.max_batch_size,
                on_refused=lambda version, reason: self.metrics.model_load_failures.inc(),
            )
        self.metrics.model_load_failures.inc(len(served.refused))
        self._profile = dict.fromkeys(PROFILE_STAGES, 0.0)
        self._counts = {
            "batches": 0,
            "consumed": 0,
            "scored": 0,
            "unscored": 0,
            "rejected": 0,
            "flagged": 0,
            "commits": 0,
        }
        self._scorer: ThreadPoolExecutor | None = None  # the scoring thread
        self._in_flight: _Batch | None = None  # the batch it scores
        self._unsent: Exception | None = None  # why the batch in flight could not be sent
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._transport: Transport | None = None
        self._output_partition = None  # the transport's partitioner of the output topic
        self._server: MetricsServer | None = None
        self._started = False
        self._starting = False  # opening the clients (``_open_transport``): alive
        self._running = False
        self._last_tick = 0.0
        self._delivery = Delivery(
            self._send,
            self._reroute,
            is_record_error=lambda error: self._transport.is_record_error(error),
            describe=lambda error: self._transport.describe(error),
        )
        self._assignment = Assignment(config.input_topic)
        self._positions: dict[TopicPartition, int] = {}  # next offset after the last consumed
        # Assigned partitions whose keys' state is rebuilt at their first record (restore).
        self._restoring: set[TopicPartition] = set()
        self._paused = False
        self._broker = BrokerWatch(
            lambda: self._transport is not None and self._transport.connected(),
            config.bootstrap_servers,
        )
        # A fetch or a commit is tried again at once: its error is logged once a while.
        self._error_logs = Throttle()
        self._last_commit_attempt = 0.0
        self._last_lag_update = 0.0
        self._last_end_offsets = 0.0
        self._end_offsets: dict[TopicPartition, int] = {}  # asked of the broker

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Validate the model and broker, open the endpoint and the clients; fail fast."""
        if self._started:
            return
        check_tls_files(self.config.kafka, self.config.client)
        warm_up(self.detector, self.config.max_batch_size)
        config = self.config
        # The endpoint first, so that probes and scrapes are answered while start-up waits
        # for the broker.
        self._server = MetricsServer(
            self.metrics.registry,
            config.metrics_host,
            config.metrics_port,
            self.alive,
            self.ready,
            certfile=config.metrics_certfile,
            keyfile=config.metrics_keyfile,
            basic_auth_username=config.metrics_basic_auth_username,
            basic_auth_password_file=config.metrics_basic_auth_password_file,
            idle_timeout_s=config.metrics_idle_timeout_s,
            max_connections=config.metrics_max_connections,
        )
        try:
            self._assignment.subscribed()
            transport = self._open_transport()
            self._max_bytes = transport.max_message_bytes - RECORD_OVERHEAD_BYTES
            self._encoder = self._result_encoder()
            self._output_partition = transport.partitioner(config.output_topic)
        except BaseException:
            if self._transport is not None:
                self._transport.close(time.monotonic() + config.shutdown_timeout_s)
            self._server.close()
            self._server = None
            raise
        self._started = True
        self._scorer = ThreadPoolExecutor(1, thread_name_prefix="anomaly-scoring")
        if self._watcher is not None:
            self._watcher.start()
        # The model and its framework are long-lived objects: keep them out of the cyclic
        # garbage collector's full passes, which would otherwise pause the loop for tens of ms.
        gc.collect()
        gc.freeze()
        log.info(
            "event=started model_version=%s formulation=%s features=%d window=%s model_poll_s=%s "
            "input_topic=%s output_topic=%s dlq_topic=%s alerts_topic=%s group_id=%s "
            "metrics=%s:%d max_batch_size=%d client=%s",
            self.served.version,
            self.detector.engine.params.formulation,
            len(self.detector.feature_names),
            self.detector.schema.window,
            self._watcher.poll_s if self._watcher else "off",
            self.config.input_topic,
            self.config.output_topic,
            self.config.dlq_topic,
            self.config.alerts_topic,
            self.config.group_id,
            self.config.metrics_host,
            self.metrics_port,
            self.config.max_batch_size,
            transport.name,
        )

    def _open_transport(self) -> Transport:
        """The transport, its clients open (the producer, then the consumer, subscribed)
        once the broker answers (``_wait_for_broker``). Clients that fail to open are closed
        and made afresh, and the broker waited for again within the same ``broker_wait_s``:
        a broker lost between its check and the clients' opening (a restart at that moment:
        kafka-python's metadata timeout, librdkafka's transport failure) used to stop the
        start, with a traceback on kafka-python. A second failure while the broker answers
        is not an outage, and stops the start (``OPEN_TRIES_WHILE_ANSWERING``)."""
        waited_from, failed_while_answering = time.monotonic(), 0
        self._starting = True  # /healthz: alive meanwhile, however long each try takes
        try:
            while True:
                self._transport = transport = make_transport(self.config, self.client_id, self)
                self._wait_for_broker(transport, waited_from)
                self._last_tick = time.monotonic()
                try:
                    transport.open()
                    return transport
                except Exception as exc:  # noqa: BLE001 (each client library raises its own)
                    self._transport = None
                    transport.close(time.monotonic() + FLUSH_WAIT_S)
                    answering = not self._stop.is_set() and self._broker_answers(transport)
                    failed_while_answering += answering
                    if self._stop.is_set() or failed_while_answering >= OPEN_TRIES_WHILE_ANSWERING:
                        if isinstance(exc, StreamError):
                            raise
                        raise StreamError(
                            f"cannot open the Kafka clients for {self.config.bootstrap_servers}: "
                            f"{describe_error(exc)}"
                        ) from exc
                    log.warning(
                        "event=clients_not_opened broker_answers=%s error=%s action=try_again",
                        str(answering).lower(),
                        describe_error(exc),
                    )
        finally:
            self._starting = False

    @staticmethod
    def _broker_answers(transport: Transport) -> bool:
        """Whether the broker answers ``transport``'s check (``BrokerUnreachable`` if not;
        any other failure of the check is raised)."""
        try:
            transport.check()
        except BrokerUnreachable:
            return False
        return True

    def _wait_for_broker(self, transport: Transport, waited_from: float) -> None:
        """Check the broker, topics and credentials (``Transport.check``), again and again
        while no broker answers, for up to ``broker_wait_s`` from ``waited_from``: meanwhile
        ``/healthz`` says alive, ``/readyz`` not ready and ``anomaly_broker_reachable`` is 0.
        Any other failure (credentials, TLS, a missing topic) stops the start at once, and
        so does a listener that answers but speaks another protocol than the one set (TLS
        sent to a SASL_SSL listener, plain text to a TLS one, a SASL mechanism it does not
        offer), which the clients take for no broker: the listener is asked what it speaks
        (``listener_probe``) and the error names the setting to change. Where some bootstrap
        servers did not answer, the mismatch of those that did is only likely (brokers
        restarting beside a leftover server of another kind): it is named in the log line,
        and stops the start only once ``broker_wait_s`` is over. The listeners are asked at
        the first failure and then as often as the failure is logged (every half minute),
        not at every try: each question is an authentication the broker may count as
        failed."""
        waited = False
        while True:
            self._last_tick = time.monotonic()
            try:
                transport.check()
                break
            except BrokerUnreachable as exc:
                if self._stop.is_set():
                    raise
                said = self._error_logs.admit("broker_unreachable") is not None
                wrong = self._listener_mismatch() if said else None
                waited_s = time.monotonic() - waited_from
                if wrong is not None and (wrong.certain or waited_s >= self.config.broker_wait_s):
                    raise StreamError(
                        f"cannot talk to Kafka at {self.config.bootstrap_servers}: {wrong.reason}"
                    ) from exc
                if waited_s >= self.config.broker_wait_s:
                    raise
                self.metrics.broker_reachable.set(0)
                waited = True
                if said:
                    log.warning(
                        "event=broker_unreachable waited_s=%.0f error=%s%s (start-up waits "
                        "for it; broker_wait_s bounds the wait)",
                        waited_s,
                        exc,
                        "" if wrong is None else f"; the servers that answer: {wrong.reason}",
                    )
                if self._stop.wait(BROKER_RETRY_S):
                    raise
        if waited:
            log.info("event=broker_back unreachable_s=%.1f", time.monotonic() - waited_from)
        self.metrics.broker_reachable.set(1)

    def _listener_mismatch(self) -> listener_probe.Mismatch | None:
        """Why the clients' security settings cannot talk to the listeners they reach; None
        where one agrees, or none answers (an outage)."""
        protocol, mechanism = kafka_options.security(self.config.kafka, self.config.client)
        return listener_probe.mismatch(
            self.config.bootstrap_servers, protocol, mechanism, LISTENER_PROBE_S
        )

    def _rejoin_if_stalled(self) -> None:
        """Subscribe afresh if the consumer has been without an assignment for longer than the
        session timeout (after which the broker has given up on this member anyway).

        kafka-python 3.0.12 leaves a rebalance unfinished when a short poll times out while
        the group leader's SyncGroup is in flight and the rebalance began from a metadata
        change: its join loop never resumes, no assignment arrives and heartbeats stay off.
        Not while the broker is lost: an outage is one way to get here.
        """
        if not self._transport.stalls:
            return
        unassigned_s = self._assignment.unassigned_for()
        if unassigned_s < self.config.session_timeout_ms / 1000 or self._broker.lost:
            return
        log.warning("event=rebalance_stalled unassigned_s=%.1f action=resubscribe", unassigned_s)
        self.metrics.rejoins.inc()
        self._transport.resubscribe()
        self._assignment.subscribed()

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
                if self._unsent is not None:
                    raise self._unsent
                self._advance(self._prepare(records, polled_at) if records else None)
                self._settle(block=self._paused)
                self._commit_settled()
                self._apply_backpressure()
                self._watch_broker_and_lag()
                self._rejoin_if_stalled()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._shutdown(failure)

    @property
    def detector(self) -> Detector:
        """The model scoring now."""
        return self.served.detector

    def _result_encoder(self) -> ResultEncoder:
        return ResultEncoder(
            self.served.version,
            self.detector.threshold,
            time_series=bool(self.detector.schema.window),
            max_bytes=self._max_bytes,
        )

    def _swap_model(self, ready: ServedModel) -> None:
        """Between batches, none in flight: let the version the store watcher has ready take
        over.

        Windows of records (time-series mode) are kept: they hold records, which the new
        version reads the same way (same features, same window). Alarm streams are the new
        version's, made afresh from its held-out normal scores (a p-value or a tail fitted on
        one model's scores says nothing about another's) and then rebuilt from the recent
        records (``_rebuild_alarm_streams``). The drift window starts afresh: the new
        version's normal data is the reference now.
        """
        previous_version, self.served = self.served.version, ready
        detector = ready.detector
        self._encoder = self._result_encoder()
        self._alarms, self._drift = ready.prepared
        params = detector.engine.params
        self.metrics.serve_model(
            ready.version, params.formulation, detector.threshold, params.target_fpr
        )
        self.metrics.alarm_states.set(0)
        self.metrics.model_swaps.inc()
        # The previous model is garbage in reference cycles that start()'s gc.freeze() put
        # out of the collector's reach: one full collection frees it, once per swap.
        started = perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.info(
            "event=model_swapped from_version=%s to_version=%s threshold=%.6g gc_s=%.3f",
            previous_version,
            ready.version,
            detector.threshold,
            perf_counter() - started,
        )

    def _model_state(self, detector: Detector) -> tuple[AlarmStage | None, DriftMonitor]:
        """What the service keeps per model: the alarm stage its ``[alarms]`` settings make
        (a conflict among them is a ``ConfigError``) and its drift window."""
        alarms = AlarmStage.for_model(
            detector, self._alarms_for(detector), max_keys=self.config.max_entities
        )
        return alarms, DriftMonitor(detector.drift_summary, self.config.drift_window)

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
        """The loop is running and began an iteration recently, or start-up is waiting for
        the broker and tried it recently (``/healthz``)."""
        return (self._running or self._starting) and (
            time.monotonic() - self._last_tick < ALIVE_STALE_S
        )

    def ready(self) -> bool:
        """The model is loaded, the broker is reachable and input partitions are assigned
        (``/readyz``)."""
        return (
            self._running
            and bool(self._assignment.assigned)
            and not self._broker.lost
            and not self._stop.is_set()
        )

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment.assigned)

    def stats(self) -> dict[str, int]:
        """Counts so far: batches, consumed, scored, unscored (a window not yet complete),
        rejected, flagged, commits, and pending_results (handed to the producer, not yet
        acknowledged)."""
        return {**self._counts, "pending_results": self._delivery.pending_messages}

    def profile(self) -> dict[str, float]:
        """Seconds the loop spent in each stage (``PROFILE_STAGES``) so far."""
        return dict(self._profile)

    # -- the loop ---------------------------------------------------------------------------

    def fetch_failed(self, kind: str, detail: str, unreadable: Unreadable | None) -> None:
        """A poll met an error (``transport.Listener``): counted by ``kind``; a record
        dead-lettered in its place is logged where it was, any other error at most once
        per ``client_logs.REPEAT_S`` (the poll is tried again next time)."""
        self.metrics.fetch_errors.labels(kind).inc()
        if unreadable is not None:
            log.error(
                "event=fetch_failed topic=%s partition=%d offset=%d error=%s "
                "action=dead_lettered_and_skipped",
                unreadable.topic,
                unreadable.partition,
                unreadable.offset,
                detail,
            )
            return
        if self._error_logs.admit(("fetch_failed", detail)) is not None:
            log.error("event=fetch_failed error=%s action=fetch_again", detail)

    def _collect(self) -> tuple[list, float]:
        """Poll one micro-batch: up to max_batch_size records, waiting at most max_wait_ms
        after the first one for it to fill."""
        start = perf_counter()
        limit = self.config.max_batch_size
        busy = self._delivery.pending or self._in_flight is not None
        timeout = PENDING_POLL_MS if busy else IDLE_POLL_MS
        poll = self._transport.poll
        records = poll(timeout, limit)
        polled_at = perf_counter()
        if records and len(records) < limit and self.config.max_wait_ms > 0:
            # Records come slower than a batch fills: the batch in flight is sent now rather
            # than after the wait.
            self._profile["poll"] += perf_counter() - start
            self._finish_in_flight()
            start = perf_counter()
            deadline = polled_at + self.config.max_wait_ms / 1000
            while len(records) < limit and not self._stop.is_set():
                remaining = deadline - perf_counter()
                if remaining <= 0:
                    break
                rebalances = self._assignment.rebalances
                fresh = poll(max(1, int(remaining * 1000)), limit - len(records))
                if self._assignment.rebalances != rebalances:
                    records, seeks = self._assignment.drop_revoked(records, fresh)
                    for tp, offset in seeks.items():
                        self._transport.seek(tp, offset)
                else:
                    records = records + fresh
                if not fresh:
                    break
        self._profile["poll"] += perf_counter() - start
        return records, polled_at

    def _prepare(self, records: list, polled_at: float) -> _Batch:
        """Decode and validate a polled batch; in time-series mode, add its rows to their
        keys' windows (in order, on the loop's thread) and take the windows they complete.
        A newly assigned partition's keys get their state back first (``_restore``)."""
        if self._restoring:
            self._restore(records)
        return self._decode(records, polled_at, self._windows)

    def _decode(self, records: list, polled_at: float, windows: KeyedWindows | None) -> _Batch:
        """``_prepare`` past the restore: decode, validate, and add the rows to ``windows``
        (time-series mode)."""
        start = perf_counter()
        decoded = self._decoder.decode([r.value for r in records])
        rejected = [
            (i, "unreadable", records[i].detail)
            if type(records[i]) is Unreadable
            else (i, reason, detail)
            for i, reason, detail in decoded.rejected
        ]
        chosen = [records[i] for i in decoded.accepted]
        batch = _Batch(records, polled_at, decoded, rejected, chosen)
        if windows is not None:  # dead letters alone cut windows too
            batch.inputs, batch.scored_positions = windows.push(
                decoded.rows, batch.entities, batch.partitions, batch.cuts
            )
        elif chosen:
            batch.inputs = decoded.rows
        self._profile["decode"] += perf_counter() - start
        return batch

    def _advance(self, batch: _Batch | None) -> None:
        """Hand ``batch`` to the scoring thread and send the results of the one it scored
        before, so that one batch is scored while the loop sends the previous one and polls
        and decodes the next. A new model version takes over in between, with no batch in
        flight."""
        previous, self._in_flight = self._in_flight, None
        if previous is not None:
            self._await_scores(previous)
        ready = self._watcher.take() if self._watcher is not None else None
        if ready is not None:
            if previous is not None:
                self._finish(previous)
                previous = None
            self._swap_model(ready)
            self._rebuild_alarm_streams(batch)
        if batch is not None and batch.inputs is not None and len(batch.inputs):
            batch.scoring = self._scorer.submit(_score, self.detector, batch.inputs)
        if previous is not None:
            # Should this fail, ``batch`` is not in flight: nothing past ``previous`` is sent
            # and committed at shutdown.
            self._finish(previous)
        self._in_flight = batch

    def _finish_in_flight(self) -> None:
        """Send the results of the batch being scored (before a rebalance, a wait for a
        batch to fill, or shutdown)."""
        batch, self._in_flight = self._in_flight, None
        if batch is not None:
            try:
                self._await_scores(batch)
                self._finish(batch)
            except Exception as exc:
                # Raised in a rebalance callback, the client may keep it from the loop
                # (kafka-python's poll raises it, which the transport takes for a fetch
                # error): the loop stops on it after the poll, committing nothing past it.
                self._unsent = exc
                raise

    def _await_scores(self, batch: _Batch) -> None:
        """Wait for the scoring thread's result of ``batch`` (the loop's ``score`` stage)."""
        if batch.scoring is None:
            return
        start = perf_counter()
        batch.result, failed, batch.scored_at = batch.scoring.result()
        batch.scoring = None
        if batch.scored_positions is not None:  # positions of windows -> positions of records
            failed = [batch.scored_positions[w] for w in failed]
            unscored = set(failed)
            batch.scored_positions = [p for p in batch.scored_positions if p not in unscored]
        elif failed:
            batch.scored_positions = np.setdiff1d(np.arange(len(batch.chosen)), failed).tolist()
        accepted = batch.decoded.accepted
        batch.rejected += [
            (accepted[p], "score_failed", "the model could not score this record") for p in failed
        ]
        self._profile["score"] += perf_counter() - start

    def _finish(self, batch: _Batch) -> None:
        """Encode and send the results and dead letters of a scored batch, hand its offsets
        to ``Delivery`` and count it."""
        profile = self._profile
        config = self.config
        t2 = perf_counter()
        records, decoded, chosen = batch.records, batch.decoded, batch.chosen
        rejected = batch.rejected
        accepted = decoded.accepted
        partitions = batch.partitions
        result = batch.result
        scored_positions = batch.scored_positions
        payloads: list = []
        flags: list[bool] = []
        alarms = None
        if chosen:
            if result is None:  # nothing scored in this batch
                result = _EMPTY_RESULT
                scored_positions = []
            alarms = self._decide(batch, result, scored_positions)
            payloads, flags, failures = self._encoder.encode(
                [r.key for r in chosen],
                partitions,
                [r.offset for r in chosen],
                decoded.ids,
                decoded.timestamps,
                result,
                scored_positions,
                ((batch.scored_at or t2) - batch.polled_at) * 1000,
                alarms,
            )
            already = {index for index, _, _ in rejected}  # one dead letter per record
            rejected += [
                (accepted[p], "encode_failed", detail)
                for p, detail in failures
                if accepted[p] not in already
            ]
        t3 = perf_counter()
        profile["encode"] += t3 - t2

        dead = {index for index, _, _ in rejected}
        outgoing: list[Outgoing] = []
        topic = config.output_topic
        alerts = config.alerts_topic
        partition_of = self._output_partition
        for p, (value, record) in enumerate(zip(payloads, chosen, strict=True)):
            if value is None or accepted[p] in dead:
                continue
            key = record.key
            outgoing.append(Outgoing(topic, key, value, record, partition_of(key)))
            if alerts and flags[p]:
                outgoing.append(Outgoing(alerts, key, value, record))
        n_alerts = sum(flag for p, flag in enumerate(flags) if accepted[p] not in dead)
        for index, reason, detail in sorted(rejected):
            outgoing.extend(self._dead_letter(records[index], reason, detail))
        t4 = perf_counter()
        profile["send"] += t4 - t3

        last = {r.partition: r.offset for r in records}  # records are in order per partition
        input_topic = config.input_topic
        next_offsets = {TopicPartition(input_topic, p): o + 1 for p, o in last.items()}
        self._positions.update(next_offsets)
        # -1 is Kafka's "no timestamp" (kafka-python and librdkafka pass it on as it is).
        stamps = [r.timestamp for r in records if r.timestamp is not None and r.timestamp >= 0]
        self._delivery.add(outgoing, next_offsets, stamps)
        t5 = perf_counter()
        profile["send"] += t5 - t4

        # Each record counted once: scored, unscored (time-series mode: its key's window not
        # yet complete) or rejected (a scored record whose result could not be encoded too).
        n = len(records)
        live = [p for p in range(len(chosen)) if accepted[p] not in dead]
        with_score = set(range(len(chosen)) if scored_positions is None else scored_positions)
        n_scored = sum(p in with_score for p in live)
        n_unscored = len(live) - n_scored
        scored_any = result is not None and len(result) > 0
        n_flagged = int(np.count_nonzero(result.is_anomaly)) if scored_any else 0
        m = self.metrics
        m.consumed.inc(n)
        m.batch_size.observe_repeated(n, 1)
        m.processing_latency.observe_repeated(t5 - batch.polled_at, n)
        if chosen:
            self._drift.observe(decoded.rows, result.scores, result.is_anomaly)
        if n_unscored:
            m.unscored.inc(n_unscored)
        if n_scored:
            m.scored.inc(n_scored)
        if scored_any:
            m.record_score.observe(result.scores)
            if n_flagged:
                m.flagged.inc(n_flagged)
            if alarms is not None and n_alerts:
                m.alarms.inc(n_alerts)
        counts = self._counts
        counts["batches"] += 1
        counts["consumed"] += n
        counts["scored"] += n_scored
        counts["unscored"] += n_unscored
        counts["rejected"] += len(rejected)
        counts["flagged"] += n_flagged
        profile["bookkeeping"] += perf_counter() - t5

    def _decide(
        self, batch: _Batch, result, scored_positions: list[int] | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The alarm stage's levels and alarms of the scored records of ``batch``, each
        key's stream moved past them; None without an adaptive stage."""
        if self._alarms is None:
            return None
        scored = range(len(batch.chosen)) if scored_positions is None else scored_positions
        entities, partitions = batch.entities, batch.partitions
        decided = self._alarms.update(
            result, [entities[i] for i in scored], [partitions[i] for i in scored]
        )
        self.metrics.alarm_states.set(self._alarms.states)
        return decided.levels, decided.alarms

    # -- per-key state restored (``anomaly.stream.restore``) ---------------------------------

    def _restore(self, records: list) -> None:
        """Before the first records of newly assigned partitions are windowed: their keys'
        windows and alarm streams go on where they were (``_replay``)."""
        due: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if tp in self._restoring and tp not in due:
                due[tp] = record.offset
        if not due:
            return
        self._restoring -= due.keys()
        if self._windows is not None or self._alarms is not None:
            # The batch being scored is sent first: its results do not wait on the restore,
            # and its rows reach their keys' state before the older rows read again.
            self._finish_in_flight()
            self._replay(due, self._windows, "assignment")

    def _rebuild_alarm_streams(self, batch: _Batch | None) -> None:
        """After a model swap: the new version's alarm streams of the keys read so far, from
        the records before where the loop is in each partition (the first record of
        ``batch``, the next to score, or past the last batch sent), scored by the new
        version (in windows of their own: the live windows hold those records already).

        Partitions revoked in a rebalance still under way, whose keys' state is kept in case
        they come back, are not read now: their state is dropped, so that the next owner,
        this instance too, rebuilds windows and alarm streams from their records."""
        if not self.config.restore_records or self._alarms is None:
            return
        revoked = self._assignment.drop_kept_state()
        if revoked:
            self._forget_keys(revoked)
        starts = dict(self._positions)
        for record in batch.records if batch is not None else ():
            starts.setdefault(TopicPartition(record.topic, record.partition), record.offset)
        for tp in self._assignment.assigned - starts.keys() - self._restoring:
            # given back with its state in a rebalance, nothing read from it since
            position = self._transport.position(tp)
            if position is not None:
                starts[tp] = position
        starts = {
            tp: offset
            for tp, offset in starts.items()
            if tp in self._assignment.assigned and tp not in self._restoring
        }
        if not starts:
            return
        windows = None
        if self._windows is not None:
            features = len(self.detector.feature_names)
            windows = KeyedWindows(self._windows.length, features, self.config.max_entities)
        self._replay(starts, windows, "model_swap")

    def _replay(
        self, starts: dict[TopicPartition, int], windows: KeyedWindows | None, cause: str
    ) -> None:
        """Read the ``restore_records`` records before each partition's offset in
        ``starts`` again and run them through ``windows``, the model and the alarm stage,
        sending nothing (``anomaly.stream.restore``), within ``_restore_budget_s``: a
        partition not taken in whole by then, or by a ``stop()``, starts afresh (what was
        taken in of it is dropped), so the group never waits on this loop for long."""
        started = perf_counter()
        budget_s = self._restore_budget_s()
        deadline = time.monotonic() + budget_s
        try:
            replayed, unread = self._transport.read_before(
                starts,
                self.config.restore_records,
                min(RESTORE_READ_S, budget_s / 2),
                self._stop.is_set,
            )
        except Exception as exc:  # noqa: BLE001 (a reader that cannot be made or asked)
            # The next partitions' reads would most likely wait as long for nothing (a
            # broker out of reach): they start afresh too.
            given_up = set(starts) | self._restoring
            self._restoring = set()
            self.metrics.key_state_restores.labels(cause, "started_afresh").inc(len(given_up))
            log.warning(
                "event=key_state_not_restored on=%s partitions=%s error=%s action=start_afresh",
                cause,
                partition_names(given_up),
                describe_error(exc),
            )
            return
        by_partition: dict[TopicPartition, list] = {}
        for record in replayed:
            by_partition.setdefault(TopicPartition(record.topic, record.partition), []).append(
                record
            )
        taken, late, failed = 0, set(), set()
        for tp, records in by_partition.items():
            try:
                done = self._take_in(tp, records, windows, deadline)
            except Exception as exc:  # noqa: BLE001 (the records are old: the stream goes on)
                # A record before the committed offset that the model or the alarm stage
                # refuses (a score that is not finite) would otherwise stop every start.
                self._drop_partition_state(tp, windows)
                failed.add(tp)
                log.warning(
                    "event=key_state_not_restored on=%s partitions=%s error=%s action=start_afresh",
                    cause,
                    partition_names({tp}),
                    describe_error(exc),
                )
                continue
            if done:
                taken += len(records)
            else:
                late.add(tp)
        if failed:
            self.metrics.key_state_restores.labels(cause, "started_afresh").inc(len(failed))
        restored = set(starts) - unread - late - failed
        if restored:
            self.metrics.key_state_restores.labels(cause, "restored").inc(len(restored))
            log.info(
                "event=key_state_restored on=%s partitions=%s records=%d seconds=%.3f",
                cause,
                partition_names(restored),
                taken,
                perf_counter() - started,
            )
        late_reason = "stopping" if self._stop.is_set() else f"not_done_in_{budget_s:.3g}s"
        for left, reason in ((unread, "not_read_whole"), (late, late_reason)):
            if left:
                self.metrics.key_state_restores.labels(cause, "started_afresh").inc(len(left))
                log.warning(
                    "event=key_state_not_restored on=%s partitions=%s reason=%s "
                    "action=start_afresh",
                    cause,
                    partition_names(left),
                    reason,
                )

    def _drop_partition_state(self, tp: TopicPartition, windows: KeyedWindows | None) -> None:
        """What a restore took in of ``tp`` before it gave up: its keys start afresh."""
        for state in (windows, self._alarms):
            if state is not None:
                state.forget_partitions({tp.partition})
        if self._alarms is not None:
            self.metrics.alarm_states.set(self._alarms.states)

    def _restore_budget_s(self) -> float:
        """How long one restore may hold the loop: ``RESTORE_S``, and no more than a third
        of the consumer's ``max_poll_interval_ms`` (the group drops a member that does not
        poll for that long, and its partitions would come back without state, to be
        restored again)."""
        options = self.config.kafka
        interval_ms = options.get("max_poll_interval_ms", options.get("max.poll.interval.ms"))
        return min(RESTORE_S, float(interval_ms or DEFAULT_MAX_POLL_INTERVAL_MS) / 1000 / 3)

    def _take_in(
        self,
        tp: TopicPartition,
        records: list,
        windows: KeyedWindows | None,
        deadline: float,
    ) -> bool:
        """Records of ``tp`` read again: into ``windows`` and, scored, into the alarm stage,
        ``max_batch_size`` at a time, as the loop takes batches. False, with what was taken
        in of ``tp`` dropped, if ``deadline`` passes or the service is stopping first."""
        size = self.config.max_batch_size
        for first in range(0, len(records), size):
            if time.monotonic() >= deadline or self._stop.is_set():
                self._drop_partition_state(tp, windows)
                return False
            batch = self._decode(records[first : first + size], perf_counter(), windows)
            if self._alarms is not None and batch.inputs is not None and len(batch.inputs):
                batch.scoring = self._scorer.submit(_score, self.detector, batch.inputs)
                self._await_scores(batch)
                if batch.result is not None:
                    self._decide(batch, batch.result, batch.scored_positions)
            self._last_tick = time.monotonic()  # progress: the loop is alive (``alive``)
        return True

    # -- dead letters -----------------------------------------------------------------------

    def _dead_letter(self, record, reason: str, detail: str, max_bytes: int | None = None):
        """The dead letter of ``record`` as a list of zero or one ``Outgoing``, counted; with
        no dead-letter topic, one log line instead (never the message's content)."""
        self.metrics.rejected.labels(reason).inc()
        if not self.config.dlq_topic:
            log.warning(
                "event=rejected reason=%s topic=%s partition=%d offset=%d value_bytes=%d "
                "detail=%r action=dropped_no_dlq_topic",
                reason,
                record.topic,
                record.partition,
                record.offset,
                len(record.value or b""),
                detail,
            )
            return []
        key, value = encode_rejection(
            record, reason, detail, self.served.version, max_bytes or self._max_bytes
        )
        return [Outgoing(self.config.dlq_topic, key, value, record, dead_letter=True)]

    def _send(self, message: Outgoing) -> None:
        self._transport.send(message)

    def _reroute(self, message: Outgoing, error) -> Outgoing | None:
        """What to send instead of a message Kafka refused for what it is (``Delivery``):
        for a result or an alert, its record's dead letter (``send_failed``); for a dead
        letter, the same cut to ``HARD_CUT_BYTES`` or a quarter of its size, whichever is
        less (a topic may allow less than ``HARD_CUT_BYTES``). None when there is nothing
        smaller to send (the message is then retried). Without a dead-letter topic the
        record is logged as rejected instead, and the message given up: retrying it would
        pause the input for ever."""
        detail = f"Kafka refused the message to {message.topic}: {self._transport.describe(error)}"
        if not message.dead_letter:
            self._counts["rejected"] += 1
            letters = self._dead_letter(message.origin, "send_failed", detail)
            return letters[0] if letters else GIVEN_UP
        size = len(message.key or b"") + len(message.value)
        key, value = encode_rejection(
            message.origin,
            "send_failed",
            detail,
            self.served.version,
            min(HARD_CUT_BYTES, size // 4),
        )
        if len(key or b"") + len(value) >= size:
            return None
        return Outgoing(self.config.dlq_topic, key, value, message.origin, dead_letter=True)

    # -- settling, committing, back-pressure ------------------------------------------------

    def _settle(self, block: bool = False) -> None:
        """Move acknowledged batches (in order) from pending to settled offsets."""
        delivery = self._delivery
        start = perf_counter()
        self._transport.serve()  # librdkafka's delivery reports (kafka-python: its own thread)
        self._profile["send"] += perf_counter() - start
        if not delivery.pending:
            return
        if block:
            start = perf_counter()
            # What is still unacknowledged after it: back-pressure and the broker watch say why.
            self._transport.flush(FLUSH_WAIT_S)
            self._profile["flush"] += perf_counter() - start
        start = perf_counter()
        stamps = delivery.settle()
        if stamps:
            # A record stamped by a producer whose clock is ahead took no less than 0 s: a
            # negative value would make the histogram's sum fall (Prometheus sees a restart).
            latency = time.time() - np.asarray(stamps, dtype=np.float64) / 1000.0
            self.metrics.end_to_end_latency.observe(np.maximum(latency, 0.0))
        self._profile["bookkeeping"] += perf_counter() - start

    def _commit_settled(self, force: bool = False) -> None:
        """Commit settled offsets of assigned partitions asynchronously (rate-limited)."""
        if not self._delivery.settled:
            return
        now = time.monotonic()
        if not force and (now - self._last_commit_attempt) * 1000 < self.config.commit_interval_ms:
            return
        offsets = self._delivery.take_settled(self._assignment.assigned)
        if not offsets:
            return
        start = perf_counter()
        self._last_commit_attempt = now
        self._transport.commit(offsets)
        self._profile["commit"] += perf_counter() - start

    def committed(self, offsets: dict[TopicPartition, int], error) -> None:
        """The outcome of a commit (``transport.Listener``): offsets whose commit failed are
        committed again with the next ones (each error logged at most once per
        ``client_logs.REPEAT_S``)."""
        if error is not None:
            described = self._transport.describe(error)
            # While the broker is lost, broker_lost says it all.
            lost = self._broker.lost
            if not lost and self._error_logs.admit(("commit_failed", described)) is not None:
                log.warning(
                    "event=commit_failed error=%s partitions=%d (retried with the next commit)",
                    described,
                    len(offsets),
                )
            self._delivery.restore(offsets, self._assignment.assigned)
            return
        self._counts["commits"] += 1
        self.metrics.last_commit.set(time.time())

    def _commit_sync(self, partitions, deadline: float) -> int:
        offsets = self._delivery.take_settled(partitions)
        if not offsets:
            return 0
        start = perf_counter()
        try:
            self._transport.commit_sync(offsets, max(0.001, deadline - time.monotonic()))
            self.committed(offsets, None)
        except Exception as exc:  # noqa: BLE001 (the client's error; the next owner re-scores)
            log.warning(
                "event=commit_failed error=%s partitions=%d",
                self._transport.describe(exc),
                len(offsets),
            )
        self._profile["commit"] += perf_counter() - start
        return len(offsets)

    def _apply_backpressure(self) -> None:
        self.metrics.output_unavailable.set(1 if self._delivery.blocked else 0)
        limit = self.config.max_pending_results
        pending = self._delivery.pending_messages
        why = self._delivery.pause_reason(limit, self._paused)
        if why is not None and not self._paused:
            self._transport.pause()
            self._paused = True
            self.metrics.backpressure_pauses.inc()
            log.info(
                "event=paused pending_results=%d max_pending_results=%d reason=%s",
                pending,
                limit,
                why,
            )
        elif why is None and self._paused:
            self._transport.resume()
            self._paused = False
            log.info("event=resumed pending_results=%d", pending)

    def _watch_broker_and_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_update < LAG_INTERVAL_S:
            return
        self._last_lag_update = now
        self.metrics.show_drift(self._drift)
        change = self._broker.check()
        if change is not None:
            self.metrics.broker_reachable.set(1 if change else 0)
        if self._broker.lost:
            return
        transport = self._transport
        transport.tick()  # e.g. the output topic may have grown
        assigned = list(self._assignment.assigned)
        if now - self._last_end_offsets >= END_OFFSETS_INTERVAL_S:
            self._last_end_offsets = now
            # A transport answers what it could; the lag is best-effort and never stops the loop.
            self._end_offsets = transport.end_offsets(assigned, END_OFFSETS_TIMEOUT_S)
        in_hand = {r.partition for r in self._in_flight.records} if self._in_flight else set()
        for tp in assigned:
            # The consumer's high watermark moves only with its fetches: while the input is
            # paused (back-pressure, the output topic gone) it froze, and the lag with it.
            known = (transport.high_watermark(tp), self._end_offsets.get(tp))
            high = max((end for end in known if end is not None), default=None)
            position = self._positions.get(tp)
            if tp.partition not in in_hand:
                position = self._past_skipped(tp, position)
            if high is not None and position is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - position))

    def _past_skipped(self, tp: TopicPartition, position: int | None) -> int | None:
        """Where the loop is in ``tp``, none of whose records it holds, counting what the
        consumer skipped: a read_committed consumer never returns transaction markers or
        records of aborted transactions, but its position moves past them. Without this the
        lag stayed above 0 after them for good, and so did the group's committed offsets,
        so that position is settled (committed) too once the partition's results are."""
        skipped_to = self._transport.position(tp)
        if skipped_to is None or (position is not None and skipped_to <= position):
            return position
        if self._delivery.skipped_to(tp, skipped_to):
            self._positions[tp] = skipped_to
        return skipped_to

    # -- rebalances (transport.Listener: while the loop is in poll, or closing) --------------

    def partitions_revoking(self, revoked: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Before ``revoked`` go: flush the producer (bounded), settle, and return the
        settled offsets of ``revoked`` for the transport to commit on the way."""
        if not revoked:
            return {}
        self._finish_in_flight()
        if not self._transport.flush(self._flush_budget_s()):
            log.warning(
                "event=flush_slow on=revoke pending_results=%d", self._delivery.pending_messages
            )
        self._delivery.settle()
        return self._delivery.take_settled(revoked)

    def partitions_revoked(self, revoked: set[TopicPartition], committed: int) -> None:
        if not revoked:
            self._assignment.release(revoked, keep_key_state=True)
            return
        self._release(revoked, keep_key_state=not self._delivery.pending)
        log.info(
            "event=partitions_revoked partitions=%s committed=%d",
            partition_names(revoked),
            committed,
        )

    def _flush_budget_s(self) -> float:
        """How long a flush before revoking may take. It runs inside the consumer's poll,
        which sends no heartbeat meanwhile (kafka-python): a third of the session timeout in a
        rebalance, and no more than what is left of ``shutdown_timeout_s`` when stopping
        (the consumer's close revokes too). What is not acknowledged by then is not
        committed, and the next owner scores it again."""
        rebalance_s = self.config.session_timeout_ms / 1000 / 3
        if self._stop_requested_at is None:
            return rebalance_s
        return max(0.1, min(rebalance_s, (self._shutdown_deadline() - time.monotonic()) * 0.5))

    def _shutdown_deadline(self) -> float:
        """When a stop must be done waiting for the broker: ``shutdown_timeout_s`` after it
        was asked, less what closing needs after that (``SHUTDOWN_RESERVE_S``)."""
        timeout = self.config.shutdown_timeout_s
        return self._stop_requested_at + timeout - min(SHUTDOWN_RESERVE_S, timeout / 4)

    def partitions_assigned(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        """``assigned`` are ours; returns where to start reading those dropped from records
        in hand and given back (see ``rebalance``). Those whose keys have no state here get
        it back at their first record (``_restore``)."""
        if self.config.restore_records:
            self._restoring |= self._assignment.without_state(set(assigned))
        seeks, gone = self._assignment.grant(set(assigned))
        self.metrics.assigned_partitions.set(len(self._assignment.assigned))
        if gone:
            self._forget_keys(gone)
        self._paused = False  # a new assignment starts unpaused
        log.info("event=partitions_assigned partitions=%s", partition_names(assigned))
        return seeks

    def partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._finish_in_flight()  # its results are sent; those of ``lost`` are not committed
        lost = set(lost)
        self._release(lost, keep_key_state=False)
        log.warning(
            "event=partitions_lost partitions=%s (not committed; the next owner re-scores)",
            partition_names(lost),
        )

    def _release(self, partitions: set[TopicPartition], keep_key_state: bool) -> None:
        stateless = partitions & self._restoring  # no record read since assigned
        forget = self._assignment.release(partitions, keep_key_state, stateless)
        self.metrics.assigned_partitions.set(len(self._assignment.assigned))
        self._restoring -= partitions
        self._delivery.forget(partitions)
        for tp in partitions:
            self._positions.pop(tp, None)
            try:
                self.metrics.lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        if forget:
            self._forget_keys(forget)

    def _forget_keys(self, partitions: set[int]) -> None:
        """Drop the per-key state (windows, alarms) of the keys of ``partitions``."""
        for state in (self._windows, self._alarms):
            if state is not None:
                state.forget_partitions(partitions)
        if self._alarms is not None:
            self.metrics.alarm_states.set(self._alarms.states)

    # -- shutdown ---------------------------------------------------------------------------

    def _shutdown(self, failure: BaseException | None) -> None:
        if self._stop_requested_at is None:  # stopping on an error, not on request
            self._stop_requested_at = time.monotonic()
        deadline = self._shutdown_deadline()
        self._stop.set()
        transport = self._transport
        try:
            self._finish_in_flight()
            if transport is not None and self._delivery.pending:
                start = perf_counter()
                if not transport.flush(max(0.1, (deadline - time.monotonic()) * 0.6)):
                    log.warning(
                        "event=flush_slow on=shutdown pending_results=%d",
                        self._delivery.pending_messages,
                    )
                self._profile["flush"] += perf_counter() - start
            self._delivery.settle()
            if transport is not None:
                self._commit_sync(set(self._assignment.assigned), deadline)
        except Exception as exc:  # noqa: BLE001 (closing must go on)
            log.warning("event=shutdown_error error=%r", exc)
        finally:
            if self._watcher is not None:
                self._watcher.close()
            if self._scorer is not None:
                self._scorer.shutdown(cancel_futures=True)
            if transport is not None:
                transport.close(deadline)
            self._running = False
            if self._server is not None:
                self._server.close()
                self._server = None
            c = self._counts
            log.info(
                "event=stopped consumed=%d scored=%d unscored=%d rejected=%d flagged=%d "
                "uncommitted_batches=%d%s",
                c["consumed"],
                c["scored"],
                c["unscored"],
                c["rejected"],
                c["flagged"],
                len(self._delivery.pending),
                f" error={failure!r}"
                if failure is not None and not isinstance(failure, KeyboardInterrupt)
                else "",
            )


def _score(detector: Detector, rows: np.ndarray):
    """``_score_rows`` on the scoring thread, and when its scores were ready (the end of a
    result's ``processing_time_ms``, not when the loop comes for them)."""
    result, failed = _score_rows(detector, rows)
    return result, failed, perf_counter()


def _score_rows(detector: Detector, rows: np.ndarray):
    """Score ``rows`` in one call. If the call fails, find the rows that fail on their own;
    return the result of the others and the positions (in ``rows``) of those."""
    try:
        return detector.score(rows), []
    except Exception:  # noqa: BLE001 (found row by row below; the stream goes on)
        log.exception("event=score_failed rows=%d action=score_row_by_row", len(rows))
    failed = []
    for position in range(len(rows)):
        try:
            detector.score(rows[position : position + 1])
        except Exception:  # noqa: BLE001
            failed.append(position)
    good = np.setdiff1d(np.arange(len(rows)), failed)
    if len(good):
        try:
            return detector.score(rows[good]), failed
        except Exception:  # noqa: BLE001 (fails only together: none of them is scored)
            log.exception("event=score_failed rows=%d action=dead_letter_all", len(good))
    return None, list(range(len(rows)))


@dataclass
class _Batch:
    """A polled batch on its way through the loop: decoded, then scored (on the scoring
    thread), then sent."""

    records: list
    polled_at: float
    decoded: DecodedBatch
    rejected: list[tuple[int, str, str]]
    """(index in ``records``, reason, explanation) of each record to dead-letter."""
    chosen: list
    """The accepted records (``decoded.accepted``)."""
    inputs: np.ndarray | None = None
    """What the model scores: the accepted rows, or the windows they complete."""
    scored_positions: list[int] | None = None
    """Positions in ``chosen`` of the records ``result`` scores (None: all of them)."""
    scoring: Future | None = None
    result: ScoreResult | None = None
    scored_at: float | None = None

    @cached_property
    def partitions(self) -> list[int]:
        return [r.partition for r in self.chosen]

    @cached_property
    def entities(self) -> list[Hashable]:
        """What each accepted record's per-key state is kept under (``entity_of``)."""
        return [entity_of(r.key) for r in self.chosen]

    @property
    def cuts(self) -> list[tuple[int, Hashable]]:
        """(position in ``chosen`` of the next accepted record, entity) of each record taken
        out of the stream as a dead letter whose key is known (an unreadable record's is
        not): its key's window is cut there."""
        return [
            (bisect_left(self.decoded.accepted, i), entity_of(self.records[i].key))
            for i, _, _ in self.rejected
            if type(self.records[i]) is not Unreadable
        ]


class _EmptyResult:
    """Stands in for a ScoreResult when no record of a batch was scored."""

    scores = is_anomaly = percentiles = np.empty(0)
    components = {name: np.empty(0) for name in COMPONENTS}
    top_features: list = []

    def __len__(self) -> int:
        return 0


_EMPTY_RESULT = _EmptyResult()
