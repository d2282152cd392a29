"""Decompression with a ceiling, for the record batches the consumer reads.

kafka-python unpacks a compressed batch in one unbounded call: a batch of a few kilobytes
of zstd (or gzip, or lz4) can unpack to gigabytes, and the service would run out of memory
on it, and again after every restart, since its offset is never committed. kafka-python
has no option for a limit, so ``install`` replaces the decoders its record-batch readers
call with ones that stop at ``MAX_BATCH_BYTES`` and raise ``DecompressionBombError``. The
consumer then raises it from ``poll``, and the service dead-letters the batch's records one
by one (reason ``unreadable``) like any batch it cannot read.

``MAX_BATCH_BYTES`` is far above what a producer makes: producers fill a batch up to their
``batch.size`` (16 KB in the Java client, 1 MB in librdkafka) before compressing, and a
broker's ``message.max.bytes`` bounds the compressed batch. Snappy is left as it is: its
format cannot expand more than about 21 times, so a 1 MB batch stays near 21 MB.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import struct
import threading
import zlib

import kafka.record.default_records as default_records
import kafka.record.legacy_records as legacy_records

#: Most bytes one record batch may unpack to.
MAX_BATCH_BYTES = 64 * 1024 * 1024


class DecompressionBombError(ValueError):
    """A compressed batch unpacks to more than ``MAX_BATCH_BYTES``."""

    def __init__(self, codec: str):
        super().__init__(
            f"a {codec} record batch unpacks to more than {MAX_BATCH_BYTES // 2**20} MiB "
            "(a decompression bomb, or a batch far larger than any producer makes)"
        )


class _KnownBombs:
    """Fingerprints of the last payloads found to unpack past the ceiling.

    The service dead-letters a batch it cannot read one record at a time, seeking past each;
    every seek fetches the same batch again, and each fetch unpacked it again up to the
    ceiling: 2,000 records of one 18 KB zstd batch stalled their partition for 96 s. A
    payload seen to be a bomb is refused without being unpacked again; only payloads of a
    length already seen in a bomb are hashed, so other batches cost a set lookup. A bomb is
    remembered with the ceiling it was found past (a lower one in tests). Locked: whatever
    thread polls the consumer may decode."""

    def __init__(self, size: int = 64):
        self._fingerprints: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        self._lengths: collections.Counter[int] = collections.Counter()
        self._size = size
        self._lock = threading.Lock()

    def __contains__(self, payload: bytes) -> bool:
        with self._lock:
            if len(payload) not in self._lengths:
                return False
        fingerprint = _fingerprint(payload)
        with self._lock:
            return fingerprint in self._fingerprints

    def add(self, payload: bytes) -> None:
        fingerprint = _fingerprint(payload)
        with self._lock:
            if fingerprint in self._fingerprints:
                return
            self._fingerprints[fingerprint] = None
            self._lengths[len(payload)] += 1
            if len(self._fingerprints) > self._size:
                (length, *_), _ = self._fingerprints.popitem(last=False)
                self._lengths[length] -= 1
                if not self._lengths[length]:
                    del self._lengths[length]


def _fingerprint(payload: bytes) -> tuple[int, int, bytes]:
    """The payload's length, the ceiling and a digest of its bytes."""
    return len(payload), MAX_BATCH_BYTES, hashlib.blake2b(payload, digest_size=16).digest()


_KNOWN_BOMBS = _KnownBombs()


def _bounded(payload: bytes, codec: str, unpack) -> bytes:
    """``unpack(payload, limit)``, refused past ``MAX_BATCH_BYTES`` (at once, unpacking
    nothing, for a payload already refused: ``_KnownBombs``)."""
    if payload in _KNOWN_BOMBS:
        raise DecompressionBombError(codec)
    data = unpack(payload, MAX_BATCH_BYTES + 1)
    if len(data) > MAX_BATCH_BYTES:
        _KNOWN_BOMBS.add(payload)
        raise DecompressionBombError(codec)
    return data


def _gzip_unpack(payload: bytes, limit: int) -> bytes:
    with gzip.GzipFile(fileobj=io.BytesIO(payload), mode="rb") as reader:
        return reader.read(limit)


def _zstd_unpack(payload: bytes, limit: int) -> bytes:
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    with decompressor.stream_reader(io.BytesIO(payload), read_across_frames=True) as reader:
        return reader.read(limit)


def _lz4_unpack(payload: bytes, limit: int) -> bytes:
    import lz4.frame

    return lz4.frame.LZ4FrameDecompressor().decompress(payload, max_length=limit)


def gzip_decode(payload: bytes) -> bytes:
    """A gzip batch unpacked, up to ``MAX_BATCH_BYTES`` (``DecompressionBombError`` past
    it, and at once for a batch refused before)."""
    return _bounded(payload, "gzip", _gzip_unpack)


def zstd_decode(payload: bytes) -> bytes:
    """A zstd batch unpacked, up to ``MAX_BATCH_BYTES`` (``DecompressionBombError`` past
    it, and at once for a batch refused before)."""
    return _bounded(payload, "zstd", _zstd_unpack)


def lz4_decode(payload: bytes) -> bytes:
    """A lz4 batch unpacked, up to ``MAX_BATCH_BYTES`` (``DecompressionBombError`` past
    it, and at once for a batch refused before)."""
    return _bounded(payload, "lz4", _lz4_unpack)


def is_unpacking_error(error: BaseException) -> bool:
    """Whether ``error``, raised by the consumer's ``poll``, means a fetched batch could not
    be unpacked (a failed checksum, a payload its codec cannot decompress, a bomb), as
    opposed to a problem of the connection, the group or the client."""
    from kafka.errors import CorruptRecordError

    codec_errors: tuple[type[BaseException], ...] = (
        CorruptRecordError,
        DecompressionBombError,
        gzip.BadGzipFile,
        zlib.error,
        EOFError,
        struct.error,
    )
    try:
        import zstandard

        codec_errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    try:
        import cramjam  # python-snappy's backend

        codec_errors += (cramjam.DecompressionError,)
    except (ImportError, AttributeError):
        pass
    if isinstance(error, codec_errors):
        return True
    # lz4.frame raises a bare RuntimeError ("LZ4F_decompress failed ...").
    return type(error) is RuntimeError and "LZ4" in str(error)


def install() -> None:
    """Make kafka-python's record-batch readers use the bounded decoders (idempotent)."""
    for module in (default_records, legacy_records):
        module.gzip_decode = gzip_decode
        module.lz4_decode = lz4_decode
    default_records.zstd_decode = zstd_decode
