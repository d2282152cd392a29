"""Which input partitions the service owns, and what a rebalance does to records in hand.

The rules, each a method of ``Assignment``:

- **Revoked** (``release``): the partitions are no longer ours. Records already polled for
  them but not yet processed are dropped: their offsets were not committed, so the next
  owner reads them. The per-key state of their keys (time-series windows, alarm streams)
  is kept until the next assignment shows whether the partitions came straight back, and
  then dropped for those that did not; but when results of theirs were still unacknowledged
  (``keep_key_state=False``), their records will be scored again, so it is dropped at once.
- **Lost** (``release`` with ``keep_key_state=False``): the same, at once.
- **Assigned** (``grant``): the partitions are ours. A partition dropped from records in
  hand and now given back is rewound to its first dropped record, because kafka-python keeps
  the fetch position of a partition it gets back and would skip them. Those whose keys have
  no state kept (``without_state``) get it rebuilt from the records before their offset
  (``anomaly.stream.restore``).
- **Records in hand at a rebalance** (``drop_revoked``): a rebalance during the polls of one
  micro-batch drops the records of the revoked partitions from it, rewinding at once those
  already assigned again.
- **Stalled** (``unassigned_for``): how long the consumer has been without partitions since
  it subscribed or lost them, so the service can subscribe afresh when a rebalance never
  finishes.

``Assignment`` holds no client: it returns the seeks to make, and the service makes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kafka import TopicPartition


class Assignment:
    """The input partitions this consumer owns, and the rebalance rules above."""

    def __init__(self, topic: str, clock: Callable[[], float] = time.monotonic):
        self.topic = topic
        self._clock = clock
        self.assigned: set[TopicPartition] = set()
        self.rebalances = 0
        """Rebalances that took partitions away so far (a poll compares it before/after)."""
        self._last_revoked: set[int] = set()
        self._forget_on_grant: set[int] = set()
        #: First record dropped at a revocation, per partition, to rewind to if it comes back.
        self._rewind: dict[TopicPartition, int] = {}
        self._unassigned_since: float | None = None

    def subscribed(self) -> None:
        """The consumer (re)joined the group: it owns nothing until an assignment arrives."""
        self._unassigned_since = self._clock()

    def unassigned_for(self) -> float:
        """Seconds without an assignment since subscribing or losing partitions (0 when
        partitions are assigned)."""
        if self._unassigned_since is None:
            return 0.0
        return self._clock() - self._unassigned_since

    def release(
        self,
        partitions: set[TopicPartition],
        keep_key_state: bool,
        stateless: frozenset[TopicPartition] | set[TopicPartition] = frozenset(),
    ) -> set[int]:
        """Partitions revoked or lost. Returns the partition numbers whose per-key state to
        drop now (the rest is decided at the next ``grant``). Those of ``stateless`` have
        no state to keep (assigned, and no record read since): given back, they count as
        without state (``without_state``)."""
        self.rebalances += 1
        self._last_revoked = {tp.partition for tp in partitions}
        if self._unassigned_since is None:
            self._unassigned_since = self._clock()
        self.assigned -= partitions
        numbers = {tp.partition for tp in partitions}
        if keep_key_state:
            self._forget_on_grant |= numbers - {tp.partition for tp in stateless}
            return set()
        return numbers

    def without_state(self, partitions: set[TopicPartition]) -> set[TopicPartition]:
        """Those of ``partitions``, about to be granted, whose keys have no state kept here:
        not owned before, their state dropped when they went, or none made before they went
        (``release``'s ``stateless``)."""
        return {tp for tp in partitions if tp.partition not in self._forget_on_grant}

    def drop_kept_state(self) -> set[int]:
        """The partition numbers whose keys' state is kept until the next assignment (revoked,
        not yet given back), now counted as without state: the caller drops it."""
        kept, self._forget_on_grant = self._forget_on_grant, set()
        return kept

    def grant(self, partitions: set[TopicPartition]) -> tuple[dict[TopicPartition, int], set[int]]:
        """Partitions assigned. Returns the seeks to make (partition -> offset) and the
        partition numbers whose per-key state to drop (released, and not given back)."""
        self.assigned |= partitions
        self._unassigned_since = None
        seeks = {tp: self._rewind[tp] for tp in partitions & self._rewind.keys()}
        self._rewind = {}
        gone = self._forget_on_grant - {tp.partition for tp in partitions}
        self._forget_on_grant = set()
        return seeks, gone

    def drop_revoked(self, held: list, fresh: list) -> tuple[list, dict[TopicPartition, int]]:
        """The records in hand after a rebalance during a poll of the micro-batch: ``held``
        (polled before it) and ``fresh`` (polled during it). Returns the records to keep
        and the seeks to make now.

        Records of revoked partitions are dropped. A dropped partition already assigned
        again is rewound to its first dropped record now, and its fresh records (fetched
        past that point) are dropped too; one whose assignment is still to come is rewound
        when it arrives.
        """
        first_dropped: dict[int, int] = {}
        for record in held:
            if record.partition in self._last_revoked:
                first_dropped.setdefault(record.partition, record.offset)
        seeks: dict[TopicPartition, int] = {}
        for partition, offset in first_dropped.items():
            tp = TopicPartition(self.topic, partition)
            if tp in self.assigned:
                seeks[tp] = offset
            elif self._unassigned_since is not None:
                self._rewind[tp] = offset
        rewound = {tp.partition for tp in seeks}
        kept = [r for r in held if r.partition not in first_dropped]
        return kept + [r for r in fresh if r.partition not in rewound], seeks


def partition_names(partitions: Any) -> str:
    """``topic[p],...`` for a log line, or ``-``."""
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions)) or "-"
