"""Numenta Anomaly Benchmark (NAB) scorer; the corpus is in :mod:`pipelines.bench.nab_corpus`,
the windowed-Gaussian baseline in :mod:`pipelines.bench.nab_baselines`.

This is an independent reimplementation of the scoring rules of NAB
(https://github.com/numenta/NAB, files ``nab/sweeper.py``, ``nab/scorer.py``,
``nab/optimizer.py``, ``nab/runner.py``, ``nab/util.py``, ``config/profiles.json`` and
``nab/detectors/gaussian/windowedGaussian_detector.py`` at commit ``ea702d7``). No upstream
code is copied; the rules were read from those files and rewritten with numpy.

Licence and citation
--------------------
NAB (code, data and labels) is "Copyright 2014-2024 Numenta Inc." and released under the MIT
licence (``LICENSE.txt`` next to the data in ``shared/datasets/nab`` beside the checkout).
The data are read from there at run time and are not part of this repository. If you
publish NAB numbers, cite

* Lavin, A. & Ahmad, S. (2015). Evaluating Real-time Anomaly Detection Algorithms -- the
  Numenta Anomaly Benchmark. IEEE ICMLA 2015.
* Ahmad, S., Lavin, A., Purdy, S. & Agha, Z. (2017). Unsupervised real-time anomaly detection
  for streaming data. Neurocomputing 262, 134-147. doi:10.1016/j.neucom.2017.04.070

The rules (as in upstream)
--------------------------
For a series of ``n`` rows:

* The probationary period is the first ``min(floor(0.15 * n), 750)`` rows; detections there
  are ignored and those rows are not counted at all.
* Windows come from ``labels/combined_windows.json``; a window ``[s, e]`` covers rows ``s..e``
  (inclusive, found by exact timestamp match) and has width ``w = e - s + 1``.
* ``sigma(p) = 2 / (1 + exp(5 p)) - 1`` for ``p <= 3`` and ``-1`` for ``p > 3``
  ("scaled sigmoid").
* A detection at row ``i`` inside a window scores ``A_TP * sigma(-(e - i + 1) / w) /
  sigma(-1)``: ``A_TP`` at the window's first row, falling to ``~A_TP * 0.1`` at its last row.
  Only the best (that is, the earliest) detection of a window counts.
* A window without a detection scores ``-A_FN``.
* A detection at row ``i`` outside every window is a false positive scoring
  ``A_FP * sigma(|e_prev - i| / (w_prev - 1))`` where ``e_prev``/``w_prev`` are the last row and
  width of the closest preceding window (so ~0 right after a window, ``-A_FP`` from three
  window widths on), or ``-A_FP`` when no window precedes it. Every such row counts.
  (Upstream divides by zero for a one-row preceding window; here that case scores ``-A_FP``.)
* A series' raw score is the sum of the above; the corpus' raw score is the sum over series.
* The threshold is optimised per profile over the whole corpus (upstream ``optimizer.py`` /
  ``Sweeper.calcScoreByThreshold``): every distinct anomaly score ``t`` is a candidate, rows
  with ``score >= t`` are detections, and "no detection at all" is a candidate too; the
  candidate with the highest corpus raw score wins (ties: the highest threshold).
* Normalised score ``= 100 * (raw - null) / (perfect - null)`` with ``null = -A_FN * #windows``
  (the detector that flags nothing) and ``perfect = A_TP * #windows`` (each window flagged at
  its first row). Windows lying entirely inside a probationary period (none in the real corpus)
  are ignored.

Counts reported (``tp``, ``fp``, ``fn``, ``tn``) are *row* counts over the scorable rows, as
upstream reports them (``tp``: detected rows inside windows, ``fn``: undetected rows inside
windows, ...); ``windows_detected`` / ``windows_missed`` count windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from anomaly.conformal import ConformalResult
from pipelines.bench.nab_corpus import Series, check_windows, load_corpus, probationary_length

__all__ = [
    "PROFILES",
    "PROFILE_NAMES",
    "CorpusScore",
    "Profile",
    "SeriesScore",
    "alarm_scores",
    "scaled_sigmoid",
    "score_corpus",
    "score_corpus_at_threshold",
    "score_detections",
    "sweep_corpus",
]


@dataclass(frozen=True)
class Profile:
    """Weights of one NAB application profile (upstream ``config/profiles.json``)."""

    name: str
    tp: float
    fp: float
    fn: float
    tn: float = 1.0  # unused by the NAB score, kept for completeness


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
}
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def _profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown NAB profile {profile!r}; known: {', '.join(PROFILES)}") from None


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """NAB's scaled sigmoid: ``2 / (1 + exp(5 p)) - 1``, and ``-1`` for ``p > 3``."""
    p = np.asarray(position, dtype=np.float64)
    with np.errstate(over="ignore"):
        val = 2.0 * (1.0 / (1.0 + np.exp(5.0 * p))) - 1.0
    return np.where(p > 3.0, -1.0, val)


_MAX_TP = float(scaled_sigmoid(-1.0))  # 2*sigmoid(5) - 1 = 0.98661...


def _row_units(n: int, windows: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the unweighted sigmoid value of a detection there, and its window (-1: none).

    Inside window ``k`` the value is ``sigma(-(e - i + 1) / w)`` (to be scaled by
    ``A_TP / sigma(-1)``); outside it is ``sigma(distance past the preceding window)`` or
    ``-1`` (to be scaled by ``A_FP``).
    """
    rows = np.arange(n)
    win = np.full(n, -1, dtype=np.intp)
    unit = np.empty(n, dtype=np.float64)
    for k, (s, e) in enumerate(windows):
        win[s : e + 1] = k
        width = float(e - s + 1)
        unit[s : e + 1] = scaled_sigmoid(-(e - rows[s : e + 1] + 1) / width)
    outside = win < 0
    if windows:
        ends = np.array([e for _, e in windows])
        widths = np.array([e - s + 1 for s, e in windows], dtype=np.float64)
        prev = np.searchsorted(ends, rows[outside], side="left") - 1  # last window ending < i
        has_prev = prev >= 0
        prev_c = np.where(has_prev, prev, 0)
        denom = widths[prev_c] - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.where(denom > 0, np.abs(ends[prev_c] - rows[outside]) / denom, np.inf)
        unit[outside] = np.where(has_prev, scaled_sigmoid(dist), -1.0)
    else:
        unit[outside] = -1.0
    return unit, win


@dataclass(frozen=True)
class SeriesScore:
    """NAB score of one series' binary detections under one profile."""

    raw: float
    tp: int  # detected rows inside windows
    fp: int  # detected rows outside windows
    fn: int  # undetected rows inside windows
    tn: int  # undetected rows outside windows
    windows_detected: int
    windows_missed: int


def score_detections(
    detections: np.ndarray,
    windows: Sequence[Sequence[int]],
    profile: str | Profile = "standard",
    probation: int | None = None,
) -> SeriesScore:
    """Score one series' binary detections (one bool per row) for one profile.

    ``windows`` are inclusive ``(first row, last row)`` pairs. ``probation`` defaults to
    :func:`probationary_length` of the series' length; rows before it are ignored.
    """
    prof = _profile(profile)
    det = np.asarray(detections, dtype=bool)
    if det.ndim != 1:
        raise ValueError("detections must be one-dimensional")
    n = det.shape[0]
    wins = check_windows(windows, n)
    probation = probationary_length(n) if probation is None else int(probation)
    unit, win = _row_units(n, wins)
    scorable = np.arange(n) >= probation
    hit = det & scorable
    in_win = win >= 0
    fp_rows = hit & ~in_win
    raw = float(np.sum(unit[fp_rows] * prof.fp))
    detected = missed = 0
    for k in np.unique(win[scorable & in_win]):
        rows = hit & (win == k)
        if rows.any():
            best = float(np.max(unit[rows] * prof.tp / _MAX_TP))
            raw += max(-prof.fn, best)
            detected += 1
        else:
            raw -= prof.fn
            missed += 1
    return SeriesScore(
        raw=raw,
        tp=int(np.sum(hit & in_win)),
        fp=int(np.sum(fp_rows)),
        fn=int(np.sum(scorable & in_win & ~det)),
        tn=int(np.sum(scorable & ~in_win & ~det)),
        windows_detected=detected,
        windows_missed=missed,
    )


@dataclass(frozen=True)
class CorpusScore:
    """Corpus-wide NAB result of one profile at its optimised threshold."""

    profile: str
    score: float  # normalised: null detector 0, perfect detector 100
    raw: float
    null: float
    perfect: float
    threshold: float  # detections are anomaly scores >= threshold (inf: none)
    tp: int
    fp: int
    fn: int
    tn: int
    windows_detected: int
    n_windows: int


class _Sweep:
    """All scorable rows of a corpus sorted once by anomaly score, shared by the profiles."""

    def __init__(self, scores: Mapping[str, np.ndarray], corpus: Sequence[Series]):
        a_parts, u_parts, w_parts = [], [], []
        offset = 0
        for series in corpus:
            if series.name not in scores:
                raise KeyError(f"no anomaly scores for series {series.name!r}")
            a = np.asarray(scores[series.name], dtype=np.float64)
            if a.shape != (len(series),):
                raise ValueError(
                    f"{series.name}: {a.shape[0] if a.ndim == 1 else a.shape} "
                    f"anomaly scores for {len(series)} rows"
                )
            if not np.isfinite(a).all():
                raise ValueError(f"{series.name}: anomaly scores must be finite (NaN/inf found)")
            unit, win = _row_units(len(series), series.windows)
            keep = slice(series.probation, None)
            a_parts.append(a[keep])
            u_parts.append(unit[keep])
            w = win[keep]
            w_parts.append(np.where(w >= 0, w + offset, -1))
            offset += len(series.windows)
        a = np.concatenate(a_parts) if a_parts else np.empty(0)
        order = np.argsort(-a, kind="stable")  # descending anomaly score
        self.a = a[order]
        self.unit = np.concatenate(u_parts)[order] if u_parts else np.empty(0)
        self.win = np.concatenate(w_parts)[order] if w_parts else np.empty(0, np.intp)
        self.in_win = self.win >= 0
        m = self.a.shape[0]
        # index of the last row of each run of equal scores: the candidate thresholds
        self.cut = (
            np.flatnonzero(np.r_[self.a[1:] != self.a[:-1], True]) if m else np.empty(0, np.intp)
        )
        # rows inside windows, grouped by window (stable: still in descending score order)
        self.win_pos = np.flatnonzero(self.in_win)
        grp = self.win[self.win_pos]
        by_win = np.argsort(grp, kind="stable")
        self.win_pos = self.win_pos[by_win]
        grp = grp[by_win]
        self.win_bounds = (
            np.flatnonzero(np.r_[True, grp[1:] != grp[:-1], True]) if grp.size else np.array([0])
        )
        self.n_windows = self.win_bounds.size - 1
        self.first_hit = self.win_pos[self.win_bounds[:-1]]  # earliest sorted position per window
        self.cum_in = np.cumsum(self.in_win)
        self.cum_out = np.cumsum(~self.in_win)

    def curve(self, prof: Profile) -> tuple[np.ndarray, np.ndarray]:
        """Thresholds (descending, ``inf`` first = no detection) and corpus raw scores."""
        contrib = np.where(self.in_win, 0.0, self.unit * prof.fp)
        tp_vals = self.unit[self.win_pos] * prof.tp / _MAX_TP
        deltas = np.empty_like(tp_vals)
        for lo, hi in zip(self.win_bounds[:-1], self.win_bounds[1:], strict=True):
            run = np.maximum.accumulate(np.r_[-prof.fn, tp_vals[lo:hi]])
            deltas[lo:hi] = np.diff(run)
        contrib[self.win_pos] = deltas
        base = -prof.fn * self.n_windows
        raw = base + np.cumsum(contrib)[self.cut]
        return np.r_[np.inf, self.a[self.cut]], np.r_[base, raw]

    def best(self, prof: Profile) -> CorpusScore:
        thresholds, raws = self.curve(prof)
        j = int(np.argmax(raws))  # first maximum: the highest threshold among ties
        null = -prof.fn * self.n_windows
        perfect = prof.tp * self.n_windows
        if j == 0:
            tp = fp = windows_detected = 0
        else:
            k = self.cut[j - 1]
            tp, fp = int(self.cum_in[k]), int(self.cum_out[k])
            windows_detected = int(np.sum(self.first_hit <= k))
        total_in = int(self.cum_in[-1]) if self.a.size else 0
        total_out = int(self.cum_out[-1]) if self.a.size else 0
        raw = float(raws[j])
        normalised = 100.0 * (raw - null) / (perfect - null) if perfect != null else math.nan
        return CorpusScore(
            profile=prof.name,
            score=normalised,
            raw=raw,
            null=null,
            perfect=perfect,
            threshold=float(thresholds[j]),
            tp=tp,
            fp=fp,
            fn=total_in - tp,
            tn=total_out - fp,
            windows_detected=windows_detected,
            n_windows=self.n_windows,
        )


def sweep_corpus(
    scores: Mapping[str, np.ndarray], corpus: Sequence[Series], profile: str | Profile = "standard"
) -> tuple[np.ndarray, np.ndarray]:
    """The whole threshold curve: (thresholds descending with ``inf`` first, raw scores)."""
    return _Sweep(scores, corpus).curve(_profile(profile))


def score_corpus(
    scores: Mapping[str, np.ndarray],
    corpus: Sequence[Series] | None = None,
    profiles: Iterable[str | Profile] = PROFILE_NAMES,
) -> dict[str, CorpusScore]:
    """NAB score per profile, the threshold optimised over the whole corpus per profile.

    ``scores`` maps each series name to one anomaly score (any finite float) per row (extra
    names are ignored);
    ``corpus`` defaults to :func:`load_corpus`. Rows with ``score >= threshold`` are detections.
    """
    corpus = load_corpus() if corpus is None else corpus
    sweep = _Sweep(scores, corpus)
    return {p.name: sweep.best(p) for p in map(_profile, profiles)}


def score_corpus_at_threshold(
    scores: Mapping[str, np.ndarray],
    corpus: Sequence[Series],
    profile: str | Profile,
    threshold: float,
) -> SeriesScore:
    """Sum of the per-series scores at a fixed threshold (upstream's scoring step)."""
    parts = [
        score_detections(np.asarray(scores[s.name]) >= threshold, s.windows, profile, s.probation)
        for s in corpus
    ]
    fields = SeriesScore.__dataclass_fields__
    return SeriesScore(*(sum(getattr(p, f) for p in parts) for f in fields))


def alarm_scores(result: ConformalResult) -> np.ndarray:
    """A conformal alarm's rows as NAB anomaly scores: the p-value, or 0.5 on a quiet row.

    0.5 keeps quiet rows below any alarm level the corpus sweep can pick, as KNN-CAD's NAB
    entry does, so one event counts as one detection.
    """
    return np.where(result.quiet, 0.5, result.p_values)
