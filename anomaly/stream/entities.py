"""What the stream keeps per-key state under: the key, or a digest of a long one.

A Kafka key is whatever its producer sends, up to a message's size (1 MiB by default). The
service keeps state for up to ``serve.max_entities`` keys (window tails, alarm streams, the
output partition of each key); holding each key's bytes would let 100,000 one-MiB keys take
100 GB. A key longer than ``MAX_KEY_BYTES`` is kept as its SHA-256 instead: a tuple, never
equal to a key, so a short key cannot pose as a long one. A record without a key (null) is
kept under ``NO_KEY``, also a tuple: Kafka tells a null key from an empty one, and so does
every per-key state here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

#: Longer keys are kept as their digest.
MAX_KEY_BYTES = 256

#: What records without a key share their state under: not a key's bytes, and not missing
#: (a window grouping drops None and NaN as "no entity").
NO_KEY = ("no key",)


def entity_of(key: bytes | None) -> Hashable:
    """The identity ``key``'s state is kept under (``NO_KEY`` for no key)."""
    if key is None:
        return NO_KEY
    if len(key) <= MAX_KEY_BYTES:
        return key
    return ("sha256", hashlib.sha256(key).digest())
