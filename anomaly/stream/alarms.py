"""Conformal alarms of the stream: one ``anomaly.conformal.ConformalAlarm`` per Kafka key.

With ``serve.alarm_history`` set, each key's scores are ranked against that key's own recent
scores, so a key whose normal level drifts away from the training data stops flagging every
record, and one event raises one alarm (the quiet period). A key's history starts as the
model's held-out normal scores (``ScoringParams.reference_scores``, spread over the history's
length), so its first records are judged against normal data, not against nothing.

Like the time-series windows, a key's alarm state belongs to the partition it was last seen
on and is dropped with that partition at a rebalance; beyond ``max_entities`` keys, the key
seen least recently is dropped (and starts afresh if it comes back).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from anomaly.conformal import ConformalAlarm


class KeyedAlarms:
    """Per-key conformal p-values and alarms for scored records, in arrival order."""

    def __init__(
        self,
        reference_scores: np.ndarray,
        history: int,
        alarm_level: float,
        quiet_rows: int | None,
        max_entities: int,
    ):
        reference = np.asarray(reference_scores, np.float64)
        self._seed = np.quantile(reference, (np.arange(history) + 0.5) / history)
        self._settings = {"alarm_level": alarm_level, "quiet_rows": quiet_rows}
        self.max_entities = max_entities
        self._alarms: dict[bytes, ConformalAlarm] = {}
        self._partition_of: dict[bytes, int] = {}

    def update(
        self, scores: np.ndarray, keys: list[bytes | None], partitions: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """p-values and alarms of ``scores`` (one per key and partition, in arrival order)."""
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
