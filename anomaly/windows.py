"""Sliding windows for time-series mode.

Ordered rows (optionally of several entities, interleaved) become windows of ``length``
consecutive rows of the same entity; each window is scored and reported at its last row.
``WindowBuffer`` keeps the last ``length - 1`` rows of each entity between calls, so a file
read in chunks, or a Kafka stream, gives the same windows as the whole series at once.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import pandas as pd

from anomaly.errors import DataError


def sliding_windows(rows: np.ndarray, length: int) -> np.ndarray:
    """All windows of ``length`` consecutive rows, shape (n - length + 1, length, d); no copy."""
    if len(rows) < length:
        return np.empty((0, length, rows.shape[1]), rows.dtype)
    windows = np.lib.stride_tricks.sliding_window_view(rows, length, axis=0)
    return windows.transpose(0, 2, 1)


def records_of(rows: np.ndarray, window: int | None, entities=None) -> np.ndarray:
    """What a model of ``window`` (None: independent rows) takes from rows in time order:
    the rows themselves, or every full window, each entity's series apart."""
    if window is None:
        return rows
    windows, _ = WindowBuffer(window, rows.shape[1]).push(rows, entities)
    return windows


class WindowBuffer:
    """Turns rows arriving in order into complete windows, per entity, across calls."""

    def __init__(self, length: int, n_features: int, max_entities: int | None = None):
        self.length = length
        self.n_features = n_features
        self.max_entities = max_entities
        self._tails: dict[Hashable, np.ndarray] = {}

    def push(
        self, rows: np.ndarray, entities: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add rows; return (windows, positions): one window for each row that completes
        one, and that row's position in ``rows``. Rows of an entity that has not yet seen
        ``length`` rows get no window."""
        rows = np.asarray(rows, np.float32)
        if entities is None:
            entities = np.zeros(len(rows), np.int8)
        windows, positions = [], []
        for entity, index in _rows_by_entity(entities):
            tail = self._tails.get(entity, np.empty((0, self.n_features), np.float32))
            series = np.concatenate([tail, rows[index]])
            made = sliding_windows(series, self.length)
            windows.append(made)
            positions.append(index[len(index) - len(made) :])
            self._tails[entity] = series[max(0, len(series) - (self.length - 1)) :].copy()
            self._evict()
        if not windows:
            return np.empty((0, self.length, self.n_features), np.float32), np.empty(0, np.int64)
        positions = np.concatenate(positions)
        order = np.argsort(positions, kind="stable")
        return np.concatenate(windows)[order], positions[order]

    def forget(self, entities) -> None:
        """Drop the state of some entities (e.g. partitions revoked in a rebalance)."""
        for entity in entities:
            self._tails.pop(entity, None)

    def _evict(self) -> None:
        if self.max_entities is not None:
            while len(self._tails) > self.max_entities:
                self._tails.pop(next(iter(self._tails)))


def _rows_by_entity(entities) -> list[tuple[Hashable, np.ndarray]]:
    """Each entity with the positions of its rows, in order of first appearance. Grouped by
    hashing (one pass), not by sorting: values of mixed types (numbers and text in a JSON
    column) cannot be sorted, and comparing every row with every entity took seconds per
    chunk of a file of thousands of entities. A missing value (None, NaN) names no series."""
    codes, uniques = pd.factorize(np.asarray(entities))
    if not len(codes):
        return []
    missing = np.flatnonzero(codes < 0)
    if len(missing):
        listed = ", ".join(str(i) for i in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(
            f"{len(missing)} row(s) have no entity (None or NaN): index {listed}{more}; "
            "give every row the entity whose series it belongs to"
        )
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(uniques)))[:-1]
    return list(zip(uniques.tolist(), np.split(order, bounds), strict=True))
