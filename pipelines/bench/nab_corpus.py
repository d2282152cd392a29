"""The Numenta Anomaly Benchmark (NAB) corpus: its series, their anomaly windows (inclusive
row ranges) and the probationary period NAB does not score. The rules that use them, the
upstream files they were read from, the licence of the data and the citations are in
:mod:`pipelines.bench.nab_scorer`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.bench.tabular import datasets_dir

__all__ = [
    "DEFAULT_NAB_ROOT",
    "Series",
    "check_windows",
    "load_corpus",
    "probationary_length",
]

#: Where the shared copy of the NAB data lives: ``nab/`` of the shared datasets beside the
#: checkout (``$ANOMALY_DATASETS`` moves them); ``$NAB_ROOT`` overrides it.
DEFAULT_NAB_ROOT = datasets_dir() / "nab"

PROBATION_FRACTION = 0.15
#: Upstream caps the probationary period at ``0.15 * 5000`` rows.
PROBATION_CAP = PROBATION_FRACTION * 5000


@dataclass(frozen=True, eq=False)
class Series:
    """One NAB series: its rows and its anomaly windows as inclusive row ranges."""

    name: str  # path relative to data/, e.g. "realKnownCause/nyc_taxi.csv"
    timestamps: np.ndarray  # datetime64[ns]
    values: np.ndarray  # float64
    windows: tuple[tuple[int, int], ...]  # (first row, last row), sorted, disjoint

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def probation(self) -> int:
        return probationary_length(len(self))


def probationary_length(n: int) -> int:
    """Rows at the start of an ``n``-row series whose detections NAB ignores."""
    return int(min(math.floor(PROBATION_FRACTION * n), PROBATION_CAP))


def _nab_root(root: str | os.PathLike | None) -> Path:
    if root is not None:
        return Path(root)
    return Path(os.environ.get("NAB_ROOT", DEFAULT_NAB_ROOT))


def load_corpus(
    root: str | os.PathLike | None = None, names: Iterable[str] | None = None
) -> list[Series]:
    """Load the NAB series and their windows (all 58 series unless ``names`` picks some).

    ``root`` is the folder holding ``data/`` and ``labels/`` (default ``$NAB_ROOT`` or
    :data:`DEFAULT_NAB_ROOT`). Series come in sorted name order.
    """
    root = _nab_root(root)
    labels_path = root / "labels" / "combined_windows.json"
    if not labels_path.is_file():
        raise FileNotFoundError(f"NAB window labels not found at {labels_path}")
    with open(labels_path) as fh:
        all_windows: dict[str, list[list[str]]] = json.load(fh)
    wanted = sorted(all_windows) if names is None else list(names)
    corpus = []
    for name in wanted:
        if name not in all_windows:
            raise KeyError(f"{name!r} is not a series of the NAB corpus")
        frame = pd.read_csv(root / "data" / name, header=0)
        ts = pd.to_datetime(frame["timestamp"]).to_numpy(dtype="datetime64[ns]")
        values = frame["value"].to_numpy(dtype=np.float64)
        windows = []
        for start, end in all_windows[name]:
            s, e = (_row_of(ts, t, name) for t in (start, end))
            if e < s:
                raise ValueError(f"{name}: window [{start}, {end}] ends before it starts")
            windows.append((s, e))
        corpus.append(Series(name, ts, values, check_windows(windows, len(values), name)))
    return corpus


def _row_of(timestamps: np.ndarray, when: str, name: str) -> int:
    """First row whose timestamp equals ``when`` exactly (as upstream requires)."""
    t = pd.Timestamp(when).to_datetime64().astype("datetime64[ns]")
    hits = np.flatnonzero(timestamps == t)
    if hits.size == 0:
        raise ValueError(f"{name}: window timestamp {when} is not a row of the series")
    return int(hits[0])


def check_windows(
    windows: Iterable[Sequence[int]], n: int, name: str = "series"
) -> tuple[tuple[int, int], ...]:
    out = tuple(sorted((int(s), int(e)) for s, e in windows))
    for k, (s, e) in enumerate(out):
        if not 0 <= s <= e < n:
            raise ValueError(f"{name}: window rows {(s, e)} outside 0..{n - 1} or reversed")
        if k and s <= out[k - 1][1]:
            raise ValueError(f"{name}: windows {out[k - 1]} and {(s, e)} overlap")
    return out
