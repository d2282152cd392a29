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
            # Taken out and put back last: the entity seen least recently goes first.
            tail = self._tails.pop(entity, np.empty((0, self.n_features), np.float32))
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


class SeriesCuts:
    """Cuts a series where rows were taken out of it (invalid rows skipped, anomalies
    labelled in training data), so that no window joins the rows on either side of a gap
    as if they were consecutive. Each kept row gets the key of its piece of the series: its
    entity while none of the entity's rows was taken out, then ``(entity, cuts so far)``.
    Keeps the count per entity across calls, for a file read in chunks."""

    def __init__(self) -> None:
        self._cuts: dict[Hashable, int] = {}

    def pieces(
        self, entities: np.ndarray | None, kept: np.ndarray
    ) -> tuple[np.ndarray | None, list]:
        """The piece of each kept row (``entities[kept]`` while nothing was taken out), and
        the pieces that ended here, whose window state can go (``WindowBuffer.forget``)."""
        if kept.all() and not self._cuts:
            return (None if entities is None else entities[kept]), []
        if entities is None:
            entities = np.zeros(len(kept), np.int8)  # one series, as WindowBuffer keys it
        codes, uniques = _factorized(entities)
        uniques = uniques.tolist()
        before = np.array([self._cuts.get(u, 0) for u in uniques] + [0], np.int64)
        taken = pd.Series(~kept).groupby(codes).cumsum().to_numpy()
        cuts = before[codes] + taken  # code -1 (no entity) reads the 0 appended
        keys = np.empty(len(kept), dtype=object)
        keys[:] = list(entities)
        cut = np.flatnonzero(kept & (cuts > 0) & (codes >= 0))
        keys[cut] = [(entities[i], int(cuts[i])) for i in cut]
        ended = []
        for code in np.unique(codes[~kept & (codes >= 0)]):
            entity, first = uniques[code], int(before[code])
            last = first + int(np.count_nonzero(~kept & (codes == code)))
            ended += [entity if n == 0 else (entity, n) for n in range(first, last)]
            self._cuts[entity] = last
        return keys[kept], ended


def _rows_by_entity(entities) -> list[tuple[Hashable, np.ndarray]]:
    """Each entity with the positions of its rows, in order of first appearance. Grouped by
    hashing (one pass), not by sorting: values of mixed types (numbers and text in a JSON
    column) cannot be sorted, and comparing every row with every entity took seconds per
    chunk of a file of thousands of entities. A missing value (None, NaN) names no series."""
    codes, uniques = _factorized(entities)
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


def _factorized(entities) -> tuple[np.ndarray, pd.Index]:
    """``pd.factorize`` of the entity values; a ``DataError`` where one cannot name a series
    (a JSON object or array, a Parquet list or struct: only values that hash can), which
    gave a ``TypeError`` traceback."""
    values = np.asarray(entities)
    if values.ndim != 1:  # lists of one length, which numpy makes a table of
        raise DataError(
            "the entity of a row is a list or an array, which cannot name a series: give "
            "each row's entity as text or a number"
        )
    try:
        return pd.factorize(values)
    except TypeError:
        for value in values:
            try:
                hash(value)
            except TypeError:
                kind = "an object" if isinstance(value, dict) else "a list or an array"
                raise DataError(
                    f"the entity of a row is {kind} ({type(value).__name__}), which cannot "
                    "name a series: give each row's entity as text or a number"
                ) from None
        raise
