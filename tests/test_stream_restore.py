"""What a restore's reader collects (``anomaly.stream.restore.PartitionRanges``); the restore
itself runs on the real broker in ``test_stream_service.py``."""

from __future__ import annotations

from anomaly.stream.restore import PartitionRanges
from anomaly.stream.transport import Record, TopicPartition

A, B, C = (TopicPartition("records", p) for p in range(3))


def _records(tp: TopicPartition, offsets) -> list[Record]:
    return [Record(tp.topic, tp.partition, o, b"k", b"{}", None) for o in offsets]


def test_a_range_is_complete_at_its_last_offset_and_keeps_nothing_past_it():
    ranges = PartitionRanges({A: 8}, 3, {A: 0})
    ranges.take(A, _records(A, [5, 6]))
    assert ranges.open == {A}
    ranges.take(A, _records(A, [7, 8, 9]))  # 8 on: already the live consumer's
    assert ranges.open == set()
    records, unread = ranges.complete()
    assert [r.offset for r in records] == [5, 6, 7] and unread == set()


def test_offsets_that_skip_the_last_one_end_the_range_by_position_or_by_a_later_record():
    """A transaction marker (or a compacted record) at the range's last offset: no record
    has it, so the reader's position past it, or a record after it, ends the range."""
    ranges = PartitionRanges({A: 4, B: 4}, 4, {A: 0, B: 0})
    ranges.take(A, _records(A, [0, 1, 2]))  # 3 is a commit marker
    ranges.take(B, _records(B, [0, 2]))
    ranges.reached(A, 4)
    ranges.take(B, _records(B, [5]))
    assert ranges.open == set()
    records, unread = ranges.complete()
    assert [(r.partition, r.offset) for r in records] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2)]


def test_a_partition_not_read_whole_is_left_out_so_no_window_joins_across_a_gap():
    ranges = PartitionRanges({A: 3, B: 3, C: 3}, 3, {A: 0, B: 0, C: 3})
    assert C not in ranges.open  # nothing before its offset: nothing to read
    ranges.take(A, _records(A, [0, 1, 2]))
    ranges.take(B, _records(B, [0]))
    ranges.fail(B)  # a batch the reader cannot read
    records, unread = ranges.complete()
    assert [(r.partition, r.offset) for r in records] == [(0, 0), (0, 1), (0, 2)]
    assert unread == {B}
    timed_out = PartitionRanges({A: 3}, 3, {A: 0})
    timed_out.take(A, _records(A, [0, 1]))
    assert timed_out.complete() == ([], {A})


def test_records_past_the_byte_budget_leave_the_partitions_still_open_out():
    """A megabyte per record would be gigabytes at a start: once the restore holds its
    budget, the partitions still being read start afresh and their records are let go."""
    ranges = PartitionRanges({A: 2, B: 3}, 3, {A: 0, B: 0}, max_bytes=10)
    ranges.take(A, _records(A, [0, 1]))  # 2 x (1 + 2) bytes: complete
    ranges.take(B, _records(B, [0, 1]))  # 12 bytes in all: over
    assert ranges.open == set()
    records, unread = ranges.complete()
    assert [(r.partition, r.offset) for r in records] == [(0, 0), (0, 1)] and unread == {B}
