"""NAB's windowed-Gaussian baseline (upstream
``nab/detectors/gaussian/windowedGaussian_detector.py`` at commit ``ea702d7``), rewritten with
numpy like the scorer: no upstream code is copied. Licence and citation: see
:mod:`pipelines.bench.nab_scorer`. KNN-CAD, NAB's other baseline here, is in
:mod:`pipelines.bench.knn_cad`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from pipelines.bench.nab_corpus import Series

__all__ = ["run_windowed_gaussian", "windowed_gaussian"]


def windowed_gaussian(
    values: np.ndarray, window_size: int = 6400, step_size: int = 100
) -> np.ndarray:
    """NAB's windowed-Gaussian detector run online over one series; scores in ``[0, 1]``.

    The score of row ``i`` is ``1 - Q(|x_i - mean| / std)`` (``Q``: the Gaussian tail
    probability) with the mean and (population) standard deviation of the window *before*
    row ``i`` is added; the first row scores 0. The window grows row by row up to
    ``window_size`` values, then slides forward by ``step_size`` values each time
    ``step_size`` new rows have arrived. A zero std is replaced by ``1e-6``. Statistics are
    computed with ``numpy.mean``/``numpy.std`` on the same values as upstream, so the scores
    match upstream's bit for bit (up to the platform's ``erfc``).
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    scores = np.zeros(n, dtype=np.float64)
    if n < 2:
        return scores
    mean = np.empty(n)
    std = np.empty(n)
    # growing phase: row i (1 <= i <= window_size) sees x[:i]
    for i in range(1, min(n - 1, window_size) + 1):
        w = x[:i]
        mean[i] = w.mean()
        std[i] = w.std()
    # sliding phase: row i >= window_size sees x[k*step : window_size + k*step],
    # k = (i - window_size) // step (the window moves once a full step has been buffered)
    if n - 1 > window_size:
        for k in range((n - 1 - window_size) // step_size + 1):
            lo = window_size + k * step_size
            if lo == window_size:
                lo += 1  # row window_size itself is done above
            hi = min(window_size + (k + 1) * step_size, n)
            w = x[k * step_size : window_size + k * step_size]
            mean[lo:hi] = w.mean()
            std[lo:hi] = w.std()
    m, s, v = mean[1:], std[1:], x[1:]
    s = np.where(s == 0.0, 0.000001, s)
    reflected = np.where(v < m, 2 * m - v, v)  # the Gaussian is symmetric about its mean
    z = (reflected - m) / s / math.sqrt(2)
    tail = 0.5 * np.fromiter((math.erfc(t) for t in z), dtype=np.float64, count=z.shape[0])
    scores[1:] = 1 - tail
    return scores


def _wg_one(args: tuple[np.ndarray, int, int]) -> np.ndarray:
    return windowed_gaussian(*args)


def run_windowed_gaussian(
    corpus: Sequence[Series], window_size: int = 6400, step_size: int = 100, jobs: int = 1
) -> dict[str, np.ndarray]:
    """Run :func:`windowed_gaussian` over every series (``jobs`` > 1: in processes)."""
    work = [(s.values, window_size, step_size) for s in corpus]
    if jobs > 1 and len(work) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(_wg_one, work, chunksize=1))
    else:
        results = [_wg_one(w) for w in work]
    return {s.name: r for s, r in zip(corpus, results, strict=True)}
