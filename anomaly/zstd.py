"""Zstandard files that say when they were cut short.

``zstandard.open`` reads a file whose last frame ends early as if it were complete: the
rows up to the cut come back and nothing says the rest is missing, so a truncated download
or an interrupted copy would be scored (or trained on) in part, silently. gzip, bz2 and
xz raise ``EOFError`` there; this reader does the same for ``.zst``, frame by frame, so a
file of several frames (``zstd`` on concatenated files, ``pzstd``) is read whole.
Writing is ``zstandard.open``'s.
"""

from __future__ import annotations

import io
import os
from typing import IO

import zstandard

#: Compressed bytes decompressed at a time. The decompressor has no output limit, so this
#: bounds what one step holds: a zstd block of 128 KiB can be 4 bytes (a run of one byte),
#: so 1 KiB unpacks to 32 MiB at most (1 MiB of a repetitive CSV unpacked to 100 MB at once).
#: Reading in such steps cost nothing measurable (28 MB of CSV: 0.05 s either way).
_READ_BYTES = 1 << 10


def open_zstd(path: str | os.PathLike[str], mode: str = "rb", **text_options) -> IO:
    """``path`` opened as ``open`` would (``"rb"``, ``"rt"``, ``"wt"``, ...), through
    Zstandard; reading raises ``EOFError`` where the file ends inside a frame."""
    if "r" not in mode:
        return zstandard.open(path, mode, **text_options)
    binary = io.BufferedReader(_FramesReader(path))
    return binary if "b" in mode else io.TextIOWrapper(binary, **text_options)


class _FramesReader(io.RawIOBase):
    """Every frame of a ``.zst`` file, decompressed in turn."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file = open(path, "rb", buffering=1 << 16)  # noqa: SIM115 (closed by close())
        self._frame = None  # the decompressor of the frame under way, None between frames
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            compressed = self._file.read(_READ_BYTES)
            if not compressed:
                if self._frame is not None:
                    raise EOFError(
                        "Compressed file ended before the end-of-frame marker was reached"
                    )
                return 0
            self._pending = memoryview(self._decompressed(compressed))
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _decompressed(self, compressed: bytes) -> bytes:
        out = []
        while compressed:
            if self._frame is None:
                self._frame = zstandard.ZstdDecompressor().decompressobj()
            out.append(self._frame.decompress(compressed))
            if not self._frame.eof:
                break
            compressed, self._frame = self._frame.unused_data, None
        return b"".join(out)

    def close(self) -> None:
        self._file.close()
        super().close()
