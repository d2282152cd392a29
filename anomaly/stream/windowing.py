"""Time-series state of the stream: one sliding window per Kafka key.

Records of each key (the entity) are windowed in the order they arrive, across batches, with
``anomaly.windows.WindowBuffer``; a record is scored once it completes a window of the model's
length. State is bounded: beyond ``max_entities`` keys the key seen least recently is dropped
(its next record starts a new window), as the alarm stage drops its streams.

Window state lives in the process. When partitions are revoked in a rebalance, the state of
their keys is dropped here; whoever gets them next (this process or another, after a
restart too) rebuilds it from the records before its starting offset
(``anomaly.stream.restore``). A dead letter cuts its key's series: its window starts afresh.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from anomaly.windows import WindowBuffer


class KeyedWindows:
    """Sliding windows per Kafka key, remembering which partition each key came from."""

    def __init__(self, length: int, n_features: int, max_entities: int):
        self.length = length
        self.max_entities = max_entities
        self._buffer = WindowBuffer(length, n_features, max_entities)
        # Mirrors the buffer's keys in the same least-recently-seen order, so it evicts the
        # same ones.
        self._partition_of: dict[Hashable, int] = {}

    def push(
        self,
        rows: np.ndarray,
        keys: list[Hashable],
        partitions: list[int],
        cuts: Sequence[tuple[int, Hashable]] = (),
    ) -> tuple[np.ndarray, list[int]]:
        """Add a batch's rows, of the entities ``keys`` (``entities.entity_of`` of each Kafka
        key); return the windows completed and the positions (in the batch) of the rows that
        completed them. ``cuts``: (position, key) of each record taken out of the stream
        before row ``position`` (a dead letter): that key's window starts afresh there, as
        ``anomaly.windows.SeriesCuts`` cuts a file's series, so that no window joins the
        records on either side of it."""
        made, positions, start = [], [], 0
        for position in sorted({p for p, _ in cuts}) + [len(rows)]:
            windows, completed = self._push_consecutive(
                rows[start:position], keys[start:position], partitions[start:position]
            )
            made.append(windows)
            positions += [start + p for p in completed]
            self._forget([key for p, key in cuts if p == position])
            start = position
        return np.concatenate(made), positions

    def _push_consecutive(
        self, rows: np.ndarray, keys: list[Hashable], partitions: list[int]
    ) -> tuple[np.ndarray, list[int]]:
        if not len(rows):
            return np.empty((0, self.length, rows.shape[1]), np.float32), []
        entities = np.empty(len(keys), dtype=object)
        entities[:] = keys
        known = self._partition_of
        # Each key once, in order of first appearance (as the buffer takes them), with the
        # partition of its last record.
        latest = dict(zip(entities.tolist(), partitions, strict=True))
        for entity, partition in latest.items():
            known.pop(entity, None)  # put back last: the most recently seen
            known[entity] = partition
            if len(known) > self.max_entities:
                known.pop(next(iter(known)))
        windows, positions = self._buffer.push(rows, entities)
        return windows, positions.tolist()

    def _forget(self, keys: list[Hashable]) -> None:
        self._buffer.forget(keys)
        for key in keys:
            self._partition_of.pop(key, None)

    def forget_partitions(self, partitions: Iterable[int]) -> int:
        """Drop the state of every key last seen on one of ``partitions``; return how many."""
        partitions = set(partitions)
        keys = [key for key, partition in self._partition_of.items() if partition in partitions]
        self._forget(keys)
        return len(keys)

    def __len__(self) -> int:
        return len(self._partition_of)
