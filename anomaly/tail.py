"""Thresholds at small false-positive rates from a finite sample of normal scores.

A threshold is calibrated on ``n`` scores of normal data the model did not train on. Two
estimates of the score a new normal record exceeds with probability ``alpha``, each used
where it holds:

* **The conformal order statistic.** For exchangeable scores, the ``k``-th smallest of the
  ``n`` with ``k = ceil((n + 1)(1 - alpha))`` is exceeded by a new normal score with
  probability at most ``alpha`` and at least ``alpha - 1 / (n + 1)``, whatever the scores'
  distribution (split conformal prediction; Vovk et al. 2005, Lei et al. 2018). A plain
  ``1 - alpha`` quantile of a small sample sits lower than that and fires more often than
  asked (the 1 % threshold of 146 held-out rows fired on 1.55 % of new normal rows on
  average). It is exact on average but, with only ``m = (n + 1) alpha`` scores above it,
  its realised rate varies by about ``1 / sqrt(m)`` from one sample to the next, and past
  the largest score (``m < 1``) it does not exist at all.
* **Peaks over threshold** (SPOT: Siffer et al., KDD 2017). The excesses of scores over a
  high quantile ``t`` follow a generalised Pareto distribution (Pickands-Balkema-de Haan);
  fitted by maximum likelihood (``scipy.stats.genpareto``), the score exceeded with
  probability ``alpha`` is ``t + scale / shape * ((alpha n / peaks) ** -shape - 1)``. It uses
  every peak above ``t``, so it resolves rates far below ``1 / n``.

``Tail.threshold`` takes the order statistic when at least ``MIN_ORDER_POINTS`` calibration
scores are expected above it, and the fitted tail otherwise, unless the calibration scores
reject the fit: more of them lie above its thresholds than chance allows (``misfit``). A few
dozen peaks can hide a tail far heavier than any shape the fit may take (normal records of a
rare kind that the model scores very high); the fitted threshold then sits too low and fires
several times the target. Where the fit is rejected, the order statistic is used down to the
rate of the largest calibration score, and the fit is not trusted below the largest score.
Nor is it where its shape reached the upper bound (the scores ask for a tail at least that
heavy, so the fit extrapolates too low) at rates past the largest score, where no order
statistic speaks: a new normal score exceeds the largest of ``n`` with probability
``1 / (n + 1)``, so a threshold below it cannot keep a rate lower than that.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np

#: Expected calibration scores above a threshold for the order statistic to be used: its
#: realised rate then varies by about a third (1 / sqrt(10)) between calibration samples.
MIN_ORDER_POINTS = 10
#: Largest calibration scores kept (for order statistics at any small rate).
KEPT_SCORES = 1000
#: Peaks the tail is fitted on: 2 % of the scores as in SPOT, at least 30, at most half.
PEAK_SHARE, MIN_PEAKS = 0.02, 30
#: Bounds on the fitted shape: a few dozen peaks cannot tell more, and a strongly negative
#: shape (a bounded tail just above the largest peak) would put the threshold where the
#: next normal score can pass it.
SHAPE_BOUNDS = (0.0, 0.5)
#: Family-wise level at which the calibration scores reject the fitted tail (a one-sided
#: binomial test of the count above its threshold at each rate it replaces the order
#: statistic at, Bonferroni-corrected): a tail that fits is rejected about this often.
MISFIT_LEVEL = 0.01


@dataclass(frozen=True)
class Tail:
    """The upper tail of ``n`` calibration scores: the largest of them, sorted in
    descending order, and a generalised Pareto fit to the excesses over ``peaks_from``."""

    n: int
    largest: list[float]
    peaks_from: float
    peaks: int
    shape: float
    scale: float
    misfit: bool = False
    """The calibration scores reject the fitted tail (``rejected_by``); False in bundles
    saved before the check."""

    @classmethod
    def fit(cls, scores: np.ndarray, up_to_rate: float = 0.0) -> Tail:
        """Fit the tail of finite calibration scores (at least 2), keeping enough of the
        largest for the order statistic at every rate up to ``up_to_rate`` (and at least
        ``KEPT_SCORES`` of them)."""
        scores = np.sort(np.asarray(scores, np.float64).ravel())[::-1]
        if len(scores) < 2 or not np.isfinite(scores).all():
            raise ValueError("a tail needs at least 2 finite scores")
        n = len(scores)
        peaks = peak_count(n)
        peaks_from = float(scores[peaks])
        shape, scale = _fit_gpd(scores[:peaks] - peaks_from)
        kept = max(KEPT_SCORES, math.ceil((n + 1) * up_to_rate) + 1)
        tail = cls(
            n=n,
            largest=[float(v) for v in scores[:kept]],
            peaks_from=peaks_from,
            peaks=peaks,
            shape=shape,
            scale=scale,
        )
        return replace(tail, misfit=tail.rejected_by(scores))

    def rejected_by(self, scores: np.ndarray) -> bool:
        """Whether the calibration ``scores`` reject the fitted tail: at some rate ``j / (n +
        1)`` where the fit replaces the order statistic (``j`` below ``MIN_ORDER_POINTS``),
        more scores lie above its threshold than a binomial count at that rate reaches with
        probability ``MISFIT_LEVEL`` (over all those rates)."""
        from scipy import stats

        scores = np.asarray(scores, np.float64)
        ranks = range(1, min(MIN_ORDER_POINTS, self.n + 1))
        for expected_above in ranks:
            rate = expected_above / (self.n + 1)
            above = int(np.count_nonzero(scores > self._fitted(rate)))
            if stats.binom.sf(above - 1, self.n, rate) < MISFIT_LEVEL / len(ranks):
                return True
        return False

    def problems(self) -> list[str]:
        """What makes this tail unusable (read from a file): empty when it is sound."""
        values = [self.peaks_from, self.shape, self.scale, *self.largest]
        problems = []
        if self.n < 2 or not 1 <= self.peaks < self.n:
            problems.append(f"n = {self.n} and peaks = {self.peaks} need 1 <= peaks < n, n >= 2")
        if not all(math.isfinite(v) for v in values):
            problems.append("holds NaN or infinite values")
        if not self.scale > 0 or not SHAPE_BOUNDS[0] <= self.shape <= SHAPE_BOUNDS[1]:
            problems.append(f"scale must be > 0 and shape within {SHAPE_BOUNDS}")
        if type(self.misfit) is not bool:
            problems.append("misfit must be true or false")
        if not 1 <= len(self.largest) <= self.n or any(
            a < b for a, b in zip(self.largest, self.largest[1:], strict=False)
        ):
            problems.append("largest must hold 1 to n scores in descending order")
        return problems

    def threshold(self, alpha: float) -> float:
        """The score a new normal score exceeds with probability about ``alpha``: the
        order statistic where at least ``MIN_ORDER_POINTS`` scores are expected above it
        (at least one where the fit is a ``misfit``), else the fitted tail (never below the
        order statistic at the smallest rate it resolves, so the threshold rises as
        ``alpha`` falls, nor below the largest score past its rate where the fitted shape
        is at its bound)."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"the rate must be in (0, 1), got {alpha}")
        # the smallest rate the order statistic takes
        resolved = (1 if self.misfit else MIN_ORDER_POINTS) / (self.n + 1)
        if alpha >= resolved:
            return self._order_statistic(alpha)
        floor = self._order_statistic(resolved) if resolved < 1.0 else -math.inf
        if self.shape >= SHAPE_BOUNDS[1] and alpha < 1 / (self.n + 1):
            floor = max(floor, self.largest[0])  # a tail at least as heavy as the fit allows
        return max(self._fitted(alpha), floor)

    def _fitted(self, alpha: float) -> float:
        """The fitted tail's threshold at ``alpha``, whatever the calibration scores say."""
        return self.peaks_from + pareto_excess(alpha * self.n / self.peaks, self.shape, self.scale)

    def _order_statistic(self, alpha: float) -> float:
        above = self.n + 1 - math.ceil((self.n + 1) * (1.0 - alpha))  # scores above the k-th
        if above > len(self.largest):
            raise ValueError(
                f"a rate of {alpha:g} needs the {above} largest calibration scores, and "
                f"{len(self.largest)} were kept: calibrate at that rate"
            )
        return self.largest[max(above, 1) - 1]  # the k-th smallest of n, k = n + 1 - above

    def to_json(self) -> dict:
        return asdict(self)


def peak_count(n: int) -> int:
    """Peaks a tail of ``n`` scores is fitted on: ``PEAK_SHARE`` of them, at least
    ``MIN_PEAKS``, at most half."""
    return min(n // 2, max(MIN_PEAKS, math.ceil(PEAK_SHARE * n)))


def pareto_excess(ratio: float, shape: float, scale: float) -> float:
    """The excess over the peaks' threshold that a peak passes with probability ``ratio``
    under a generalised Pareto (shape 0: the exponential)."""
    if abs(shape) < _EXPONENTIAL:
        return -scale * math.log(ratio)
    return scale / shape * (ratio**-shape - 1.0)


def pareto_survival(excess, shape: float, scale: float):
    """Probability that a peak's excess over the threshold passes ``excess`` (the inverse of
    ``pareto_excess``)."""
    if abs(shape) < _EXPONENTIAL:
        return np.exp(-np.asarray(excess, np.float64) / scale)
    base = np.maximum(1.0 + shape * np.asarray(excess, np.float64) / scale, 0.0)
    with np.errstate(divide="ignore"):
        return np.power(base, -1.0 / shape)


#: A shape closer to 0 than this is taken as the exponential (its limit).
_EXPONENTIAL = 1e-9


def _fit_gpd(excesses: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (shape, scale) of a generalised Pareto with location 0, the shape
    kept within ``SHAPE_BOUNDS``; the exponential (shape 0) when the fit fails."""
    from scipy import optimize, stats

    excesses = np.asarray(excesses, np.float64)
    mean = float(excesses.mean()) if len(excesses) else 0.0
    if not mean > 0.0:  # every peak ties with the threshold: nothing to extrapolate
        return 0.0, 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            shape, _, scale = stats.genpareto.fit(excesses, floc=0.0)
        except (RuntimeError, ValueError, optimize.OptimizeWarning):
            return 0.0, mean
    if not (np.isfinite(shape) and np.isfinite(scale) and scale > 0):
        return 0.0, mean
    low, high = SHAPE_BOUNDS
    if not low <= shape <= high:
        shape = float(np.clip(shape, low, high))
        scale = _scale_given_shape(excesses, shape)
    return float(shape), float(scale)


def _scale_given_shape(excesses: np.ndarray, shape: float) -> float:
    """The likelihood's best scale for a fixed shape (one-dimensional, bounded search)."""
    from scipy import optimize, stats

    def negative_log_likelihood(log_scale: float) -> float:
        return -stats.genpareto.logpdf(excesses, shape, 0.0, math.exp(log_scale)).sum()

    start = math.log(float(excesses.mean()))
    found = optimize.minimize_scalar(
        negative_log_likelihood, bounds=(start - 10.0, start + 10.0), method="bounded"
    )
    return float(math.exp(found.x))


def gpd_from_moments(mean: float, variance: float) -> tuple[float, float]:
    """Method-of-moments (shape, scale) of a generalised Pareto with location 0, from the
    excesses' mean and sample variance, the shape kept within ``SHAPE_BOUNDS``.

    A closed form for refitting a tail many times in a stream (``anomaly.spot`` refits at
    every new peak, from running sums), where ``_fit_gpd``'s maximum likelihood takes
    milliseconds. With mean ``m = scale / (1 - shape)`` and variance
    ``v = m**2 / (1 - 2 shape)``, ``shape = (1 - m**2 / v) / 2`` and ``scale = m (1 - shape)``
    (Hosking & Wallis 1987). Within the bounds the variance exists, which the method needs;
    a shape clipped to a bound keeps the mean: ``scale = m (1 - shape)``.
    """
    if not mean > 0.0:  # every peak ties with the threshold: nothing to extrapolate
        return 0.0, 1e-12
    shape = 0.5 * (1.0 - mean * mean / variance) if variance > 0.0 else SHAPE_BOUNDS[0]
    shape = min(max(shape, SHAPE_BOUNDS[0]), SHAPE_BOUNDS[1])
    return shape, mean * (1.0 - shape)
