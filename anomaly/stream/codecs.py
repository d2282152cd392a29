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

import gzip
import io
import struct
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


def _bounded(read, codec: str) -> bytes:
    data = read(MAX_BATCH_BYTES + 1)
    if len(data) > MAX_BATCH_BYTES:
        raise DecompressionBombError(codec)
    return data


def gzip_decode(payload: bytes) -> bytes:
    with gzip.GzipFile(fileobj=io.BytesIO(payload), mode="rb") as reader:
        return _bounded(reader.read, "gzip")


def zstd_decode(payload: bytes) -> bytes:
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    with decompressor.stream_reader(io.BytesIO(payload), read_across_frames=True) as reader:
        return _bounded(reader.read, "zstd")


def lz4_decode(payload: bytes) -> bytes:
    import lz4.frame

    decompressor = lz4.frame.LZ4FrameDecompressor()
    return _bounded(lambda limit: decompressor.decompress(payload, max_length=limit), "lz4")


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
