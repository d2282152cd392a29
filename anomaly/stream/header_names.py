"""Header names that are not UTF-8, read as the Java client reads them.

A record header's name is a protocol string, but librdkafka (and so every client built on
it) sends whatever bytes its producer gives; the broker stores them unchecked. kafka-python
decodes each name strictly and raises ``CorruptRecordError`` for the whole batch, and it
decodes a batch from its start on every fetch, also one that starts past the bad record:
each record after it in the batch then fails too (it would be dead-lettered, unread, one
fetch at a time). The Java client replaces bytes it cannot decode, and the service never
reads headers, so ``install`` has kafka-python do the same: a record whose header name it
cannot decode is read again with its undecodable bytes replaced (U+FFFD). Records without
such a name take kafka-python's own path, unchanged and at its speed.

kafka-python has no option for this, and its record reader decodes the name inline, so the
fallback hands that one record's reader a copy of its bytes whose slices decode leniently.
"""

from __future__ import annotations

from typing import Any

import kafka.record.default_records as default_records
from kafka.record.util import decode_varint


class _LenientSlice(bytearray):
    """A slice of the batch whose ``decode`` replaces what it cannot decode."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return super().decode(encoding, "replace")


class _LenientBuffer(bytearray):
    """A batch's bytes whose slices are ``_LenientSlice``."""

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return _LenientSlice(item) if isinstance(index, slice) else item


_strict_read = default_records.DefaultRecordBatch._read_msg


def _read_msg(batch: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return _strict_read(batch, *args, **kwargs)
    except UnicodeDecodeError:  # a header name; nothing was consumed (``_pos`` is unchanged)
        # That record alone is read again, from a lenient copy of its bytes (a copy of the
        # whole batch for each such record made a batch of them quadratic); its offset and
        # timestamp come from the batch's header, not from the buffer.
        strict, start = batch._buffer, batch._pos
        length, body = decode_varint(strict, start)
        batch._buffer, batch._pos = _LenientBuffer(strict[start : body + length]), 0
        try:
            record = _strict_read(batch, *args, **kwargs)
            read = batch._pos
        finally:
            batch._buffer, batch._pos = strict, start
        batch._pos = start + read
        return record


def install() -> None:
    """Make kafka-python read header names it cannot decode as the Java client does
    (idempotent)."""
    default_records.DefaultRecordBatch._read_msg = _read_msg
