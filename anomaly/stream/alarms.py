"""Conformal alarms of the stream: one ``anomaly.conformal.ConformalAlarm`` per Kafka key.

With ``serve.alarm_history`` set, each key's score components are ranked against that key's
own recent components and a record alarms when ``serve.alarm_quorum`` of them reach the
alarm level (or, with no quorum, its combined score is ranked), so a key whose normal level
drifts away from the training data stops flagging every record, and one event raises one
alarm (the quiet period). A key's history starts as half as many of the model's held-out
normal values (``ScoringParams.reference_components`` or ``reference_scores``, as evenly
spaced quantiles) and grows with the key's records, as on the Numenta benchmark, where the
reference is a series' first rows: so its first records are judged against normal data,
not against nothing.

Like the time-series windows, a key's alarm state belongs to the partition it was last seen
on and is dropped with that partition at a rebalance; beyond ``max_entities`` keys, the key
seen least recently is dropped (and starts afresh if it comes back).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from anomaly.config import COMPONENTS, ServeConfig
from anomaly.conformal import DEFAULT_HISTORY_GROWTH, ConformalAlarm
from anomaly.errors import ConfigError
from anomaly.scoring import ScoringParams


class KeyedAlarms:
    """Per-key conformal p-values and alarms for scored records, in arrival order.

    ``reference`` holds normal values: one score per row, or one column per component
    (then ``quorum`` columns must reach ``alarm_level`` together)."""

    def __init__(
        self,
        reference: np.ndarray,
        history: int,
        alarm_level: float,
        quiet_rows: int | None,
        max_entities: int,
        quorum: int = 1,
    ):
        reference = np.asarray(reference, np.float64)
        seeded = history // DEFAULT_HISTORY_GROWTH  # ConformalAlarm grows it to `history`
        self._seed = np.quantile(reference, (np.arange(seeded) + 0.5) / seeded, axis=0)
        self._settings = {
            "history": history,
            "alarm_level": alarm_level,
            "quiet_rows": quiet_rows,
            "quorum": quorum,
        }
        self.by_component = reference.ndim == 2
        self.max_entities = max_entities
        self._alarms: dict[bytes, ConformalAlarm] = {}
        self._partition_of: dict[bytes, int] = {}

    @classmethod
    def for_model(cls, params: ScoringParams, config: ServeConfig) -> KeyedAlarms:
        """The alarms ``config`` asks for, seeded with the model's held-out normal values:
        each component's with ``alarm_quorum`` set, else the combined score's."""
        settings = (config.alarm_history, config.alarm_level, config.alarm_quiet_rows)
        if config.alarm_quorum is None:
            return cls(params.reference_scores, *settings, config.max_entities)
        if not params.reference_components:
            raise ConfigError(
                "serve.alarm_quorum ranks score components, but this model bundle has no "
                "per-component reference (it was saved by an older version): retrain it, or "
                "set serve.alarm_quorum to null to rank the combined score"
            )
        reference = np.stack([params.reference_components[name] for name in COMPONENTS], axis=1)
        return cls(reference, *settings, config.max_entities, config.alarm_quorum)

    def columns(self, result) -> np.ndarray:
        """What these alarms rank of a ``ScoreResult``: its components, or its scores."""
        if not self.by_component:
            return result.scores
        return np.stack([result.components[name] for name in COMPONENTS], axis=1)

    def update(
        self, scores: np.ndarray, keys: list[bytes | None], partitions: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """p-values and alarms of ``scores`` (rows of the reference's shape, one key and
        partition each, in arrival order)."""
        scores = np.asarray(scores, np.float64)
        p_values = np.empty(len(scores))
        alarms = np.zeros(len(scores), bool)
        rows_of: dict[bytes, list[int]] = {}
        for row, key in enumerate(keys):
            rows_of.setdefault(b"" if key is None else key, []).append(row)
        for key, rows in rows_of.items():
            self._partition_of.pop(key, None)  # re-inserted last: the most recently seen
            self._partition_of[key] = partitions[rows[-1]]
            alarm = self._alarms.get(key)
            if alarm is None:
                alarm = self._alarms[key] = ConformalAlarm(self._seed, **self._settings)
            result = alarm.update(scores[rows])
            p_values[rows] = result.p_values
            alarms[rows] = result.alarms
        while len(self._partition_of) > self.max_entities:
            oldest = next(iter(self._partition_of))
            del self._partition_of[oldest], self._alarms[oldest]
        return p_values, alarms

    def forget_partitions(self, partitions: Iterable[int]) -> int:
        """Drop the state of every key last seen on one of ``partitions``; return how many."""
        partitions = set(partitions)
        keys = [key for key, partition in self._partition_of.items() if partition in partitions]
        for key in keys:
            del self._partition_of[key], self._alarms[key]
        return len(keys)

    def __len__(self) -> int:
        return len(self._alarms)
