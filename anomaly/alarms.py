"""The adaptive alarm stage: thresholds that follow each stream, one code for every caller.

A model's threshold is calibrated once, on held-out normal data; a long stream drifts away
from it and the threshold then fires on every row or on none. The ``[alarms]`` section
(``anomaly.config.AlarmConfig``) picks what decides instead: the model's threshold, or an
adaptive method that learns each stream's normal range from the stream's own past, a level
per row and score column (``anomaly.conformal``: conformal p-values; ``anomaly.spot``:
drift-aware peaks over threshold), the level that ``quorum`` columns reach together, and
one alarm per event or a flagged state (``anomaly.decision``).

``AlarmStage`` keeps one such stream per key, in arrival order. The same class serves the
Kafka service (a stream per Kafka key), ``anomaly score`` and ``anomaly evaluate`` (a
stream per file, or per value of the entity column) and Python users and benchmark
harnesses (any keys, or one stream)::

    stage = AlarmStage.for_model(detector, config.alarms)  # None: the threshold decides
    result = stage.update(detector.score(windows), keys=entities)  # levels, alarms, quiet

Every stream of a model starts from the model's held-out normal values: half of ``history``
evenly spaced quantiles of each component (``ScoringParams.reference_components``; of the
combined score, ``reference_scores``, when ``quorum`` is None or an older bundle has no
component references), so a new key's first rows
are judged against normal data, not against nothing. The bundle keeps only quantiles, whose
order is lost; DSPOT's residuals need a sequence, so a stream takes them in one fixed
shuffled order, the residuals of exchangeable normal rows (and a conformal history sliding
past them drops them evenly, not the lowest first).

With partitions (the service), a key's stream belongs to the partition it was last seen on
and ``forget_partitions`` drops it at a rebalance, like the key's time-series window;
beyond ``max_streams`` keys (``AlarmConfig.max_streams``, where its memory per stream is
measured) the key seen least recently is dropped (and starts afresh if it comes back), so a
file or topic with millions of entities cannot grow the stage without bound.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from anomaly.config import COMPONENTS, AlarmConfig
from anomaly.conformal import DEFAULT_HISTORY_GROWTH, ConformalLevels
from anomaly.decision import (
    AlarmResult,
    EventSemantics,
    StateSemantics,
    StreamAlarm,
    default_quiet_rows,
)
from anomaly.errors import ConfigError
from anomaly.spot import DriftSpot

if TYPE_CHECKING:
    from anomaly.detector import Detector
    from anomaly.scoring import ScoringParams

#: Seed of the fixed order in which a model's reference quantiles start each stream.
_SEED_ORDER = 0


class AlarmWarning(UserWarning):
    """Something about the alarm stage a user should know (the command line prints each as
    one ``warning:`` line)."""


class StreamsDroppedWarning(AlarmWarning):
    """More keys than ``max_streams``: streams were dropped, and start afresh."""


class UnusedAlarmSettingsWarning(AlarmWarning):
    """Settings of the adaptive stage given where the model's threshold decides."""


class AlarmStage:
    """Adaptive alarms per key: a level and a decision per row, from each key's own past.

    ``reference`` holds normal scores every new stream starts from, in time order: one per
    row (the combined score) when ``config.quorum`` is None, else one column per score
    component (rows x columns). ``config.method`` is ``conformal`` or ``dspot`` (``auto``:
    the time-series default). At most ``config.max_streams`` streams are kept, fewer where
    the caller bounds its keys too (``max_keys``: the service's ``serve.max_entities``,
    which bounds its partial windows as well).
    """

    def __init__(self, reference, config: AlarmConfig, *, max_keys: int | None = None):
        self.config = config
        self.method = config.resolved_method(time_series=True)
        if self.method == "threshold":
            raise ConfigError(
                "alarms.method = 'threshold' has no adaptive stage: the model's is_anomaly "
                "flag is the decision"
            )
        reference = np.asarray(reference, np.float64)
        columns = 1 if reference.ndim == 1 else reference.shape[-1]
        if config.quorum is None and reference.ndim != 1:
            raise ConfigError(
                f"alarms.quorum is None (one column, the combined score), but the reference "
                f"has shape {reference.shape}: pass one score per row, or set a quorum"
            )
        if config.quorum is not None and (reference.ndim != 2 or columns < config.quorum):
            raise ConfigError(
                f"alarms.quorum = {config.quorum} needs at least {config.quorum} score columns "
                f"(rows x columns), but the reference has shape {reference.shape}: set "
                "alarms.quorum to None (0 in TOML) to rank one score per row"
            )
        if self.method == "conformal":
            if len(reference) > config.history:
                raise ConfigError(
                    f"alarms.history ({config.history}) is shorter than the reference's "
                    f"{len(reference)} rows: raise it, or start from the last rows"
                )
            levels = ConformalLevels(reference, config.history)
        else:
            levels = DriftSpot(
                reference,
                level=config.level,
                drift_depth=config.drift_depth,
                max_peaks=config.max_peaks,
            )
        if config.semantics == "event":
            quiet = config.quiet_rows
            semantics = EventSemantics(
                config.level, default_quiet_rows(len(reference)) if quiet is None else quiet
            )
        else:
            semantics = StateSemantics(config.level, config.resolved_exit_level, config.exit_rows)
        self._start = StreamAlarm(levels, config.quorum or 1, semantics)
        self.max_streams = (
            config.max_streams if max_keys is None else min(max_keys, config.max_streams)
        )
        self._streams: dict[Hashable, StreamAlarm] = {}  # least recently seen first
        self._partition_of: dict[Hashable, int] = {}
        self._in_state = 0
        # A caller that bounds its keys itself (the service: serve.max_entities, which also
        # drops partial windows) documents the bound; files and Python callers are warned.
        self._dropped_a_stream = max_keys is not None

    @classmethod
    def for_model(
        cls, detector: Detector, config: AlarmConfig, *, max_keys: int | None = None
    ) -> AlarmStage | None:
        """The stage ``config`` asks for on ``detector``'s scores, every stream starting from
        the model's held-out normal values; None when the method is the model's threshold
        (``auto`` for a model of independent rows)."""
        return cls.for_params(
            detector.engine.params,
            config,
            time_series=bool(detector.schema.window),
            max_keys=max_keys,
        )

    @classmethod
    def for_params(
        cls,
        params: ScoringParams,
        config: AlarmConfig,
        *,
        time_series: bool,
        max_keys: int | None = None,
    ) -> AlarmStage | None:
        """``for_model`` from a model's scoring parameters (its held-out normal values) and
        whether it scores time-series windows. A bundle saved before per-component
        references ranks its combined score instead of ``quorum`` components, with a
        warning, so it still scores as it did; one with no reference at all has no stage
        (``ConfigError``)."""
        if config.resolved_method(time_series=time_series) == "threshold":
            _warn_of_unused_settings(config)
            return None
        if config.quorum is not None and not params.reference_components:
            warnings.warn(
                f"alarms.quorum = {config.quorum} ranks score components, but this model bundle "
                "has no per-component reference (it was saved by an older version): its alarm "
                "stage ranks the combined score instead; retrain it to rank components, or set "
                "alarms.quorum = 0 to say so",
                stacklevel=2,
            )
            config = config.updated({"quorum": None})
        if config.quorum is None:
            reference = np.asarray(params.reference_scores, np.float64)
            if not len(reference):
                raise ConfigError(
                    "this model bundle has no reference of held-out normal scores for the "
                    "adaptive alarm stage to start from: retrain it, or set "
                    "alarms.method = 'threshold'"
                )
        else:
            reference = np.stack(
                [params.reference_components[name] for name in COMPONENTS], axis=1
            ).astype(np.float64)
        rows = config.history // DEFAULT_HISTORY_GROWTH  # a conformal history grows to twice
        seed = np.quantile(reference, (np.arange(rows) + 0.5) / rows, axis=0)
        seed = seed[np.random.default_rng(_SEED_ORDER).permutation(rows)]
        return cls(seed, config, max_keys=max_keys)

    def columns(self, result) -> np.ndarray:
        """What the stage takes of a ``ScoreResult``: its components (rows x components),
        or its combined scores when ``quorum`` is None."""
        if self.config.quorum is None:
            return np.asarray(result.scores, np.float64)
        return np.stack([result.components[name] for name in COMPONENTS], axis=1)

    def update(
        self,
        scores,
        keys: Sequence[Hashable] | None = None,
        partitions: Sequence[int] | None = None,
    ) -> AlarmResult:
        """Levels and decisions of the next rows, in arrival order.

        ``scores``: a ``ScoreResult`` (see :meth:`columns`) or rows shaped like the
        reference. ``keys``: the stream of each row (any hashable values; None: every row of
        one stream). ``partitions``: the Kafka partition of each row, for
        :meth:`forget_partitions`. Rows not shaped like the reference, a score that is NaN,
        infinite or beyond ``anomaly.decision.MAX_SCORE``, and keys or partitions that do not
        give one per row are refused (``ValueError``) before any stream moves.
        """
        if hasattr(scores, "components"):
            scores = self.columns(scores)
        scores = self._start.checked(scores)
        n = len(scores)
        for name, given in (("keys", keys), ("partitions", partitions)):
            if given is not None and len(given) != n:
                raise ValueError(f"{len(given)} {name} for {n} rows: give one per row")
        if not n:
            return AlarmResult(np.empty(0), np.zeros(0, bool), np.zeros(0, bool))
        levels = np.empty(n)
        alarms = np.zeros(n, bool)
        quiet = np.zeros(n, bool)
        if keys is None:
            groups = [(None, np.arange(n))]
        elif len(self._streams) + len(set(keys) - self._streams.keys()) > self.max_streams:
            # streams are dropped within these rows; keys by position (a pandas Series too)
            groups = self._in_arrival_order(list(keys))
        else:
            groups = _by_last_row(keys)
        for key, rows in groups:
            stream = self._streams.pop(key, None)  # re-inserted last: the most recently seen
            if stream is None:
                stream = self._start.fresh()
            self._streams[key] = stream
            if partitions is not None:
                self._partition_of[key] = partitions[rows[-1]]
            was_in_state = stream.in_state
            result = stream.update(scores[rows])
            self._in_state += stream.in_state - was_in_state
            levels[rows], alarms[rows], quiet[rows] = result.levels, result.alarms, result.quiet
            while len(self._streams) > self.max_streams:
                self._drop(next(iter(self._streams)))
                self._warn_of_dropped_streams()
        return AlarmResult(levels, alarms, quiet)

    def forget_partitions(self, partitions: Iterable[int]) -> int:
        """Drop the streams of the keys last seen on one of ``partitions``; return how many."""
        partitions = set(partitions)
        keys = [key for key, partition in self._partition_of.items() if partition in partitions]
        for key in keys:
            self._drop(key)
        return len(keys)

    @property
    def states(self) -> int:
        """Streams in the flagged state now (state semantics; always 0 with event)."""
        return self._in_state

    def __len__(self) -> int:
        return len(self._streams)

    def _in_arrival_order(self, keys: Sequence[Hashable]) -> Iterator[tuple[Hashable, np.ndarray]]:
        """The rows in groups that drop the same streams as row by row, however rows are
        batched: a row whose key has no stream alone (its stream is made and the least
        recently seen one dropped), and each run of rows whose keys all have streams at once
        (which drops none). Lazy: each run is found after the rows before it were taken."""
        start = 0
        while start < len(keys):
            end = start + 1
            if keys[start] in self._streams:
                while end < len(keys) and keys[end] in self._streams:
                    end += 1
            for key, rows in _by_last_row(keys[start:end]):
                yield key, rows + start
            start = end

    def _warn_of_dropped_streams(self) -> None:
        """Once per stage (none with ``max_keys``): a stream dropped for the bound starts
        afresh if its key comes back, which changes that key's alarms; a file of more
        entities than the bound did so without a word."""
        if self._dropped_a_stream:
            return
        self._dropped_a_stream = True
        warnings.warn(
            f"more than {self.max_streams} keys (entities) have alarm streams: the one seen "
            "least recently is dropped each time, and starts afresh from the model's "
            "reference if its key comes back; raise alarms.max_streams to keep them all",
            StreamsDroppedWarning,
            stacklevel=3,
        )

    def _drop(self, key: Hashable) -> None:
        self._in_state -= self._streams.pop(key).in_state
        self._partition_of.pop(key, None)


#: ``[alarms]`` keys only the adaptive methods use.
ADAPTIVE_SETTINGS = (
    "semantics",
    "level",
    "exit_level",
    "exit_rows",
    "quiet_rows",
    "quorum",
    "history",
    "drift_depth",
    "max_peaks",
)


def _warn_of_unused_settings(config: AlarmConfig) -> None:
    """Where the model's threshold decides (``is_anomaly``, no alarm column): a warning
    when ``config`` sets what only the adaptive methods use (a flagged state with
    hysteresis, a quiet period, a level), which was ignored without a word. Judged against the
    defaults, not the keys given: a bundle's saved configuration gives every key."""
    default = AlarmConfig()
    asked = [key for key in ADAPTIVE_SETTINGS if getattr(config, key) != getattr(default, key)]
    if not asked:
        return
    why = (
        "alarms.method is 'threshold'"
        if config.method == "threshold"
        else "alarms.method 'auto' is the model's threshold for a model of independent rows"
    )
    warnings.warn(
        f"alarms.{', alarms.'.join(asked)} set, but {why}: each row is flagged by the "
        "model's threshold alone (is_anomaly), with no level, state or quiet period; set "
        "alarms.method = 'conformal' or 'dspot' for them",
        UnusedAlarmSettingsWarning,
        stacklevel=3,
    )


def _by_last_row(keys: Sequence[Hashable]) -> list[tuple[Hashable, np.ndarray]]:
    """Each key with the positions of its rows, in the order of their last rows: taken in
    that order, keys go back into the streams' recency order as row by row."""
    grouped: dict[Hashable, list[int]] = {}
    for row, key in enumerate(keys):
        grouped.setdefault(key, []).append(row)
    return sorted(
        ((key, np.asarray(rows)) for key, rows in grouped.items()), key=lambda g: g[1][-1]
    )
