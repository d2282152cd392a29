"""Per-key state rebuilt from the input topic when partitions change hands.

The service keeps state per Kafka key: the partial window of each key (time-series mode)
and its alarm stream (``[alarms]``). It lives in the process, so a restart, a deploy or a
rebalance used to start every moved key afresh: the first ``window - 1`` records of each key
got no score, every alarm stream started again from the model's reference, and a key in the
flagged state left it, resolving its alert in the middle of an incident.

The state is a function of the key's records, and the records are still in the topic. So
when a partition with no state kept in this process sends its first record, the loop reads
the last ``serve.restore_records`` records before it again (``Transport.read_before``, a
consumer of its own outside the group) and runs them through the same windows, scoring and
alarm stage, sending nothing: the live records then continue the keys' series where the
previous owner left them. With at least as many records as a key's history needs, its state
is the one an uninterrupted service would hold (a test checks this on the real broker); with
fewer, its oldest rows are missing, as for a key seen first then.

At a model swap the alarm streams are the new version's, made from its held-out normal
scores; they are rebuilt the same way from the records before where the loop is, scored by
the new version in windows of their own (the live windows, kept across the swap, hold those
records already).

Nothing here can lose or repeat a result: the records read again are before the offset the
group's consumer starts from, which is untouched, and they are not sent. A partition whose
range cannot be read whole in time (a slow broker, a batch that cannot be read) or within
``RESTORE_MAX_BYTES``, or is not taken in by ``RESTORE_S``, starts afresh as before, with a
log line, so no window joins records across a gap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from anomaly.stream.transport import TopicPartition

log = logging.getLogger("anomaly.stream")

#: Longest a restore may read for, before the partitions not read whole start afresh.
RESTORE_READ_S = 30.0
#: Longest a restore may take, reading and then scoring a batch at a time: the partitions not
#: taken in by then start afresh. The loop polls nothing meanwhile, and the group removes a
#: member that does not poll for ``max.poll.interval.ms``, so a restore takes at most a
#: third of it; ``/healthz`` counts each batch taken in as progress.
RESTORE_S = 60.0
#: The Kafka clients' default ``max.poll.interval.ms`` (kafka-python's and librdkafka's).
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000
#: Most bytes of keys and values a restore holds (records of a megabyte each, 1,000 per
#: partition, would otherwise be gigabytes at a start); the Python objects holding small
#: records take about 6 times their bytes. The partitions still being read when it is
#: reached start afresh.
RESTORE_MAX_BYTES = 32 * 2**20


class PartitionRanges:
    """What a reader collects: for each partition, its records of the last ``count`` offsets
    before its offset in ``ends`` (from its first offset in ``firsts``, where the log begins
    later), complete once a record or the reader's position reaches the end (offsets can
    skip: transaction markers, compaction). ``starts`` holds where to read each partition
    from, those with nothing before their end left out."""

    def __init__(
        self,
        ends: dict[TopicPartition, int],
        count: int,
        firsts: dict[TopicPartition, int],
        max_bytes: int = RESTORE_MAX_BYTES,
    ):
        starts = {tp: max(firsts[tp], end - count) for tp, end in ends.items()}
        self.starts = {tp: start for tp, start in starts.items() if start < ends[tp]}
        self.ends = ends
        self.open = set(self.starts)
        self._failed: set[TopicPartition] = set()
        self._records: dict[TopicPartition, list] = {tp: [] for tp in self.starts}
        self._bytes_left = max_bytes

    def reading(self, deadline: float, cancelled: Callable[[], bool]) -> bool:
        """Whether to read on: a partition still open, ``deadline`` (``time.monotonic()``)
        not passed, and no stop (``cancelled()``)."""
        return bool(self.open) and time.monotonic() < deadline and not cancelled()

    def take(self, partition: TopicPartition, records: Iterable) -> None:
        """Records the reader returned for ``partition``, in offset order."""
        if partition not in self.open:
            return
        end = self.ends[partition]
        kept = self._records[partition]
        for record in records:
            if record.offset >= end:
                self.open.discard(partition)
                return
            self._bytes_left -= len(record.key or b"") + len(record.value or b"")
            if self._bytes_left < 0:
                log.warning(
                    "event=restore_read_failed partitions=%s reason=over_%d_bytes "
                    "action=start_afresh",
                    ",".join(str(tp.partition) for tp in sorted(self.open)),
                    RESTORE_MAX_BYTES,
                )
                for tp in list(self.open):
                    self.fail(tp)
                return
            kept.append(record)
        if kept and kept[-1].offset >= end - 1:
            self.open.discard(partition)

    def reached(self, partition: TopicPartition, position: int | None) -> None:
        """The reader's next offset in ``partition`` is ``position``."""
        if partition in self.open and position is not None and position >= self.ends[partition]:
            self.open.discard(partition)

    def fail(self, partition: TopicPartition) -> None:
        """The reader cannot go on in ``partition`` (a batch it cannot read)."""
        if partition in self.open:
            self.open.discard(partition)
            self._failed.add(partition)
            self._records[partition] = []

    def complete(self) -> tuple[list, set[TopicPartition]]:
        """The records of the partitions read whole, in order per partition, and the
        partitions that were not."""
        unread = self.open | self._failed
        records = [r for tp, kept in self._records.items() if tp not in unread for r in kept]
        return records, unread
