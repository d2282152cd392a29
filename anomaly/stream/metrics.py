"""The service's Prometheus metrics, in a registry of its own per service instance.

The names are a contract: the alert rules in ``deploy/prometheus/alerts.yml`` are written
against them. Counters end in ``_total``, durations are in seconds, and the only labels are
small fixed sets (rejection reason, input topic and partition, model version).

Per-record histograms are filled a whole batch at a time (``BatchHistogram``: one NumPy
``searchsorted`` per batch instead of one locked ``observe`` per record), so metrics cost
the scoring loop microseconds per batch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from anomaly.drift import DriftMonitor
from anomaly.stream.messages import REASONS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
END_TO_END_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
#: Score buckets as multiples of the model's threshold (so ``le`` = threshold is a bucket).
SCORE_BUCKET_RATIOS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


class BatchHistogram(Collector):
    """A Prometheus histogram observed with arrays of values at once."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ):
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(sorted(set(float(b) for b in buckets)), dtype=np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, values) -> None:
        """Observe each value of an array (or one number)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        if not len(values):
            return
        counts = np.bincount(
            np.searchsorted(self.bounds, values, side="left"), minlength=len(self._counts)
        )
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def observe_repeated(self, value: float, count: int) -> None:
        """Observe ``value`` ``count`` times (e.g. one batch's latency for each record)."""
        if count <= 0:
            return
        index = int(np.searchsorted(self.bounds, value, side="left"))
        with self._lock:
            self._counts[index] += count
            self._sum += value * count

    def snapshot(self) -> tuple[int, float]:
        """(count, sum) observed so far."""
        with self._lock:
            return int(self._counts.sum()), self._sum

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self):
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        buckets = [
            (floatToGoString(b), c) for b, c in zip(self.bounds.tolist(), cumulative, strict=False)
        ]
        buckets.append(("+Inf", cumulative[-1]))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family


class ServiceMetrics:
    """Every metric the scoring service exports, registered in ``self.registry``."""

    def __init__(
        self,
        *,
        model_version: str,
        formulation: str,
        threshold: float,
        target_fpr: float,
        max_batch_size: int,
    ):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.consumed = Counter(
            "anomaly_records_consumed_total",
            "Records read from the input topic.",
            registry=registry,
        )
        self.scored = Counter(
            "anomaly_records_scored_total",
            "Records scored by the model (in time-series mode: records that completed a window).",
            registry=registry,
        )
        self.unscored = Counter(
            "anomaly_records_unscored_total",
            "Records answered without a score (time-series mode: their key's window is not "
            "yet complete); with scored and rejected, every record consumed (a result the "
            "broker refuses later is counted again, as rejected with reason send_failed).",
            registry=registry,
        )
        self.rejected = Counter(
            "anomaly_records_rejected_total",
            "Records rejected and written to the dead-letter topic, by reason "
            f"({', '.join(REASONS)}).",
            ["reason"],
            registry=registry,
        )
        for reason in REASONS:
            self.rejected.labels(reason)
        self.flagged = Counter(
            "anomaly_anomalies_flagged_total",
            "Scored records flagged as anomalies.",
            registry=registry,
        )
        self.alarms = Counter(
            "anomaly_alarms_total",
            "Records with alarm true from the adaptive alarm stage ([alarms] method conformal "
            "or dspot): with event semantics one per event (the first record of a key reaching "
            "alarms.level outside a quiet period), with state semantics every record of a key "
            "in the flagged state.",
            registry=registry,
        )
        self.alarm_states = Gauge(
            "anomaly_alarm_states",
            "Keys in the flagged state now ([alarms] semantics = state): above 0 from the "
            "record that enters a state to the one that leaves it; always 0 with event "
            "semantics or without the adaptive stage.",
            registry=registry,
        )
        self.batch_size = BatchHistogram(
            "anomaly_batch_size_records",
            "Records per micro-batch taken from the input topic.",
            _powers_of_two(max_batch_size),
            registry,
        )
        self.processing_latency = BatchHistogram(
            "anomaly_processing_latency_seconds",
            "Per record: time from the consumer handing it over to its result being handed to "
            "the producer (decode, score, encode and send of its micro-batch).",
            LATENCY_BUCKETS,
            registry,
        )
        self.end_to_end_latency = BatchHistogram(
            "anomaly_end_to_end_latency_seconds",
            "Per record: time from the input record's Kafka timestamp to its result being "
            "acknowledged by Kafka (0 for a timestamp ahead of the service's clock).",
            END_TO_END_BUCKETS,
            registry,
        )
        self.lag = Gauge(
            "anomaly_consumer_lag_records",
            "Records in the input partition after the last one consumed (its end offset minus "
            "the position), per assigned partition. kafka-python asks the broker for the end "
            "every 5 s, so it grows while the input is paused; librdkafka's is as last fetched.",
            ["topic", "partition"],
            registry=registry,
        )
        self.last_commit = Gauge(
            "anomaly_last_commit_timestamp_seconds",
            "Unix time of the last successful offset commit (0: none yet).",
            registry=registry,
        )
        self.model_info = Info("anomaly_model", "The model being served.", registry=registry)
        self.threshold = Gauge(
            "anomaly_model_threshold", "Score above which a record is flagged.", registry=registry
        )
        self.target_fpr = Gauge(
            "anomaly_model_target_false_positive_rate",
            "False-positive rate on normal data that the threshold was calibrated for.",
            registry=registry,
        )
        self.key_state_restores = Counter(
            "anomaly_key_state_restores_total",
            "Input partitions whose keys' per-key state was rebuilt from the records before "
            "where they are read (serve.restore_records), by cause: assignment (windows and "
            "alarm streams of a newly assigned partition) or model_swap (the new version's "
            "alarm streams); and by outcome: restored, or started_afresh (the records could "
            "not be read or taken in whole in time, or were refused, and those keys start "
            "afresh).",
            ["cause", "outcome"],
            registry=registry,
        )
        for cause in ("assignment", "model_swap"):  # exported at 0 from the start, so a rate
            for outcome in ("restored", "started_afresh"):  # or an alert has a series at once
                self.key_state_restores.labels(cause, outcome)
        self.model_swaps = Counter(
            "anomaly_model_swaps_total",
            "Times a new version from the model store took over scoring (serve.model_poll_s).",
            registry=registry,
        )
        self.model_load_failures = Counter(
            "anomaly_model_load_failures_total",
            "Versions of the model store refused: not loadable (checksum, bundle version, "
            "damaged file) or not fit for the stream (features, window, no threshold); the "
            "version in service goes on scoring.",
            registry=registry,
        )
        self.feature_drift = Gauge(
            "anomaly_feature_drift_psi",
            "Population stability index of each feature over the latest serve.drift_window "
            "records against the model's normal training data (below 0.1 stable, 0.1-0.25 "
            "moderate, above 0.25 a significant shift); absent for a model saved without "
            "a feature summary.",
            ["feature"],
            registry=registry,
        )
        self.score_drift = Gauge(
            "anomaly_score_drift_psi",
            "Population stability index of the anomaly score over the latest "
            "serve.drift_window records against the model's held-out normal (calibration) "
            "scores.",
            registry=registry,
        )
        self.recent_flagged = Gauge(
            "anomaly_recent_flagged_ratio",
            "Share of the scored records among the latest serve.drift_window that the model "
            "flagged; near anomaly_model_target_false_positive_rate on normal data.",
            registry=registry,
        )
        self.drift_window_records = Gauge(
            "anomaly_drift_window_records",
            "Records the drift figures cover now (serve.drift_window once the stream has "
            "filled it; fewer after a start or a model swap).",
            registry=registry,
        )
        self.record_score: BatchHistogram | None = None
        self.serve_model(model_version, formulation, threshold, target_fpr)
        self.backpressure_pauses = Counter(
            "anomaly_backpressure_pauses_total",
            "Times the input partitions were paused: too many results unacknowledged, or a "
            "result or dead letter waiting to be sent again.",
            registry=registry,
        )
        self.output_unavailable = Gauge(
            "anomaly_output_unavailable",
            "1 while a result, alert or dead letter waits to be sent again (its topic deleted, "
            "writes denied by the cluster's ACLs, no leader): the input is paused meanwhile "
            "and nothing is lost; the log line event=output_unavailable names the topic and "
            "the error.",
            registry=registry,
        )
        self.fetch_errors = Counter(
            "anomaly_fetch_errors_total",
            "Polls of the input topic that failed, by error type: a batch that could not be "
            "unpacked (its records dead-lettered as unreadable and skipped) or another fetch "
            "error (polled again).",
            ["error"],
            registry=registry,
        )
        self.broker_reachable = Gauge(
            "anomaly_broker_reachable",
            "1 while the consumer is connected to the Kafka cluster, 0 once it has been "
            "without a connection for a few seconds (the service is then not ready).",
            registry=registry,
        )
        self.broker_reachable.set(1)
        self.assigned_partitions = Gauge(
            "anomaly_assigned_partitions",
            "Input partitions this instance holds. Summed over the job, 0 means no instance "
            "reads the input (an input topic deleted, a group stuck rebalancing): the "
            "per-partition lag series are then gone too.",
            registry=registry,
        )
        self.rejoins = Counter(
            "anomaly_consumer_rejoins_total",
            "Times the consumer subscribed afresh because a rebalance left it without partitions "
            "for longer than the session timeout.",
            registry=registry,
        )

    def serve_model(
        self, model_version: str, formulation: str, threshold: float, target_fpr: float
    ) -> None:
        """Describe the model now serving. The score histogram starts afresh, its buckets
        multiples of this model's threshold (``rate()`` reads the restart as a reset)."""
        self.model_info.info({"model_version": model_version, "formulation": formulation})
        self.feature_drift.clear()
        self.threshold.set(threshold)
        self.target_fpr.set(target_fpr)
        if self.record_score is not None:
            self.registry.unregister(self.record_score)
        ratios = SCORE_BUCKET_RATIOS if threshold > 0 else (0.0,)
        self.record_score = BatchHistogram(
            "anomaly_record_score",
            "Anomaly score of each scored record; buckets are multiples of the threshold of the "
            f"model serving ({threshold:.6g}), so le equal to it counts the records under it.",
            [0.0, *(r * threshold for r in ratios)] if threshold > 0 else [0.0, 1.0, 10.0, 100.0],
            self.registry,
        )

    def show_drift(self, monitor: DriftMonitor) -> None:
        """Set the drift gauges from ``monitor``'s window."""
        for feature, value in monitor.feature_psi().items():
            self.feature_drift.labels(feature).set(value)
        self.score_drift.set(monitor.score_psi())
        self.recent_flagged.set(monitor.flagged_share())
        self.drift_window_records.set(monitor.records)


def _powers_of_two(limit: int) -> list[float]:
    bounds, b = [], 1
    while b < limit:
        bounds.append(float(b))
        b *= 2
    bounds.append(float(limit))
    return bounds
