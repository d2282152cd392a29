"""The consumer's bounded decoders (``anomaly.stream.codecs``), without a broker: a batch
that unpacks past the ceiling is refused, and refused again without being unpacked again."""

from __future__ import annotations

import gzip

import lz4.frame
import pytest
import zstandard

from anomaly.stream import codecs

CEILING = 1024 * 1024


@pytest.fixture(autouse=True)
def low_ceiling(monkeypatch):
    monkeypatch.setattr(codecs, "MAX_BATCH_BYTES", CEILING)


@pytest.mark.parametrize(
    ("decode", "compress", "unpacker"),
    [
        (codecs.zstd_decode, zstandard.compress, (zstandard, "ZstdDecompressor")),
        (codecs.gzip_decode, gzip.compress, (gzip, "GzipFile")),
        (codecs.lz4_decode, lz4.frame.compress, (lz4.frame, "LZ4FrameDecompressor")),
    ],
    ids=["zstd", "gzip", "lz4"],
)
def test_a_bomb_fetched_again_is_refused_without_being_unpacked_again(
    monkeypatch, decode, compress, unpacker
):
    """The service dead-letters a batch it cannot read one record at a time, and each seek
    fetches the batch again: 2,000 records of one 18 KB zstd batch were unpacked 2,000
    times up to the 64 MiB ceiling, and stalled their partition for 96 s."""
    bomb = compress(b"0" * (CEILING + 1) + b"%d" % id(decode))  # a payload of its own
    with pytest.raises(codecs.DecompressionBombError):
        decode(bomb)
    module, name = unpacker
    real = getattr(module, name)
    unpacked = []
    monkeypatch.setattr(module, name, lambda *a, **k: unpacked.append(1) or real(*a, **k))

    with pytest.raises(codecs.DecompressionBombError):
        decode(bomb)
    assert unpacked == []
    assert decode(compress(b"a batch within the ceiling")) == b"a batch within the ceiling"
    assert unpacked == [1]


def test_the_bombs_remembered_are_the_latest_few():
    bombs = codecs._KnownBombs(size=2)
    payloads = [b"x" * 10, b"y" * 10, b"z" * 11]
    for payload in payloads:
        bombs.add(payload)

    assert [payload in bombs for payload in payloads] == [False, True, True]
    assert b"w" * 10 not in bombs  # a length seen, other bytes
    assert dict(bombs._lengths) == {10: 1, 11: 1}


def test_a_payload_refused_under_a_lower_ceiling_is_unpacked_under_a_higher_one(monkeypatch):
    payload = zstandard.compress(b"1" * (CEILING + 1))
    with pytest.raises(codecs.DecompressionBombError):
        codecs.zstd_decode(payload)

    monkeypatch.setattr(codecs, "MAX_BATCH_BYTES", 2 * CEILING)

    assert len(codecs.zstd_decode(payload)) == CEILING + 1
