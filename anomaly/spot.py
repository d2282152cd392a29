"""Drift-aware peaks over threshold (DSPOT): a row's level from the tail of recent residuals.

Siffer et al., "Anomaly detection in streams with extreme value theory" (KDD 2017). Per
score column, a row's *residual* is its value minus the mean of the ``drift_depth`` values
before it, so a slow drift of the column's level moves the mean and leaves the residuals
alone. The residuals' upper tail is modelled as in ``anomaly.tail``: the excesses over a
high threshold ``t`` (fixed from the reference's residuals, ``tail.peak_count`` of them
above it) follow a generalised Pareto distribution. A row's level is one minus the
estimated probability that a normal residual reaches its own:

* above ``t``: ``(peaks / n) * (1 + shape (r - t) / scale) ** (-1 / shape)``, ``peaks`` of
  the ``n`` residuals seen having been above ``t``;
* at or below ``t``: the share of the reference's residuals at or above it (at least
  ``peaks / n``, so the level grows with the residual).

Each row then updates the state, so the tail and the mean follow the stream:

* **The peaks.** Every row counts in ``n`` and every residual above ``t`` in ``peaks``,
  and its excess joins the last ``max_peaks`` the tail is refitted on, in
  closed form (``tail.gpd_from_moments`` from running sums: the paper's maximum-likelihood
  fit per peak would cost milliseconds in a stream). The paper leaves the rows that reach
  the alarm ``level`` out of the peaks, so that an anomaly cannot fatten the normal tail.
  But the largest normal peaks are then never seen either: each refit is thinner than the
  last, the alarm threshold sinks towards ``t``, and at KNN-CAD's level (a tenth of the
  peaks reach it) a stream of pure noise ended alarming on 2 % of its rows instead of
  0.35 %. So here an alarming row's excess counts as *censored*: it enters the peaks capped
  at the alarm threshold's excess (an anomaly cannot stretch the tail beyond it), and the
  mean excess is estimated as for censored data (the exponential's maximum likelihood:
  the sum over the uncensored count). On noise the alarm share then stays near
  ``1 - level`` (0.27 to 0.47 % at 0.35 %, over normal, Student-t and exponential noise).
* **The moving mean.** A row whose level stays below ``level`` enters it. An alarming row
  does not, as in the paper: an anomaly lasting a few rows would lift the mean and hide
  itself. But then a lasting change of level, a regime change the operator accepts as the
  new normal, would alarm for ever; so ``drift_depth`` consecutive alarming rows replace the
  mean's window, and the column's new level is the baseline from then on. An anomaly is
  followed for ``drift_depth`` rows before it becomes the normal; a spike or a short event
  never enters the mean.

Every column is its own stream of state, one Python step per row: the moving sum, the
peaks' running sums and counts are updated in O(1) (re-summed exactly once per window or
per ring of peaks, so rounding does not accumulate), and the result does not depend on how
the stream is cut into batches.
"""

from __future__ import annotations

import bisect
import copy
import math
from array import array

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from anomaly.decision import reference_rows
from anomaly.tail import gpd_from_moments, pareto_excess, pareto_survival, peak_count

#: The smallest tail scale, relative to the reference's largest magnitude (taken as at least
#: 1, so a reference of zeros has a floor too): a detector's scores are float32, about 7
#: significant digits, so scores closer than about a millionth of their size are one score
#: up to rounding. When every reference peak ties (a constant reference; its residuals and
#: ``t`` are then 0, so ``t`` cannot tell the size), ``tail.gpd_from_moments`` gives an
#: absolute 1e-12, and jitter of 1e-7 on a constant stream alarmed on 3 % of its first
#: 3,000 rows (1.6 % with a floor of 1e-9).
SCALE_RESOLUTION = 1e-6


class _Start:
    """What one column's streams start from, fitted once on the reference's residuals and
    shared (read-only) by every stream started from it."""

    def __init__(self, values: np.ndarray, drift_depth: int, max_peaks: int):
        means = sliding_window_view(values, drift_depth)[:-1].mean(axis=1)
        residuals = values[drift_depth:] - means
        count = len(residuals)
        peaks = peak_count(count)
        largest = np.argsort(-residuals, kind="stable")
        self.threshold = float(residuals[largest[peaks]])
        in_time_order = np.sort(largest[:peaks])
        self.excesses = (residuals[in_time_order] - self.threshold)[-max_peaks:].tolist()
        self.body = np.sort(residuals).tolist()  # ascending, for the share at or above
        self.window = values[-drift_depth:].tolist()
        self.rows, self.peaks = count, peaks
        self.max_peaks = max_peaks
        self.min_scale = SCALE_RESOLUTION * max(float(np.abs(values).max()), 1.0)


class _Column:
    """One column's DSPOT state in one stream."""

    __slots__ = (
        "start",
        "window",
        "slot",
        "total",
        "pending",
        "rows",
        "peaks",
        "excesses",
        "capped",
        "censored",
        "next_excess",
        "sum",
        "sum_squares",
        "shape",
        "scale",
    )

    def __init__(self, start: _Start):
        self.start = start
        self.window = array("d", start.window)  # the last drift_depth normal values, a ring
        self.slot = 0  # where the next value goes in the ring
        self.total = math.fsum(self.window)
        self.pending: list[float] = []  # the current run of anomalous values
        self.rows, self.peaks = start.rows, start.peaks  # residuals seen, and above t
        self.excesses = array("d", start.excesses)  # the kept peaks' excesses over t, a ring
        self.capped = bytearray(len(self.excesses))  # whether each was an anomaly's, capped
        self.censored = 0  # how many are
        self.next_excess = 0
        self._resum_excesses()

    def _resum_excesses(self) -> None:
        self.sum = math.fsum(self.excesses)
        self.sum_squares = math.fsum(e * e for e in self.excesses)
        self._refit()

    def _refit(self) -> None:
        k = len(self.excesses)
        mean = self.sum / k
        variance = (self.sum_squares - k * mean * mean) / (k - 1) if k > 1 else 0.0
        shape, scale = gpd_from_moments(mean, variance)
        # an anomaly's excess is only known to reach the alarm threshold's (censored): as the
        # exponential's maximum likelihood under censoring, the mean excess is the sum over
        # the peaks the anomalies did not censor
        self.shape = shape
        self.scale = max(scale * k / max(1, k - self.censored), self.start.min_scale)

    def level(self, residual: float) -> float:
        """One minus the estimated probability that a normal residual reaches ``residual``."""
        share = self.peaks / self.rows
        start = self.start
        excess = residual - start.threshold
        if excess > 0.0:
            return 1.0 - share * float(pareto_survival(excess, self.shape, self.scale))
        at_or_above = len(start.body) - bisect.bisect_left(start.body, residual)
        return 1.0 - max(at_or_above / len(start.body), share)

    def step(self, value: float, alarm_level: float) -> float:
        """The level of the next value, and the state moved past it."""
        depth = len(self.window)
        residual = value - self.total / depth
        level = self.level(residual)
        anomaly = level >= alarm_level
        excess = residual - self.start.threshold
        self.rows += 1
        if excess > 0.0:  # a peak; an anomaly's counts only as far as the alarm threshold
            self._add_peak(
                min(excess, self._alarm_excess(alarm_level)) if anomaly else excess, anomaly
            )
        if anomaly:  # kept out of the mean, unless the new level lasts
            self.pending.append(value)
            if len(self.pending) == depth:
                self.window, self.slot, self.pending = array("d", self.pending), 0, []
                self.total = math.fsum(self.window)
            return level
        if self.pending:
            self.pending = []
        self.total += value - self.window[self.slot]
        self.window[self.slot] = value
        self.slot = (self.slot + 1) % depth
        if self.slot == 0:
            self.total = math.fsum(self.window)
        return level

    def _alarm_excess(self, alarm_level: float) -> float:
        """The excess over t whose level is ``alarm_level`` (where the fitted tail leaves
        ``1 - alarm_level`` of the residuals above it)."""
        ratio = (1.0 - alarm_level) * self.rows / self.peaks
        if ratio >= 1.0:
            return 0.0
        if ratio <= 0.0:
            return math.inf
        return pareto_excess(ratio, self.shape, self.scale)

    def _add_peak(self, excess: float, capped: bool) -> None:
        self.peaks += 1
        if len(self.excesses) < self.start.max_peaks:
            self.excesses.append(excess)
            self.capped.append(capped)
            old, was_capped = 0.0, False
        else:
            slot = self.next_excess
            old, was_capped = self.excesses[slot], self.capped[slot]
            self.excesses[slot], self.capped[slot] = excess, capped
            self.next_excess = (slot + 1) % len(self.excesses)
        self.censored += capped - was_capped
        if self.next_excess == 0 and len(self.excesses) == self.start.max_peaks:
            self._resum_excesses()  # once per ring: rounding does not accumulate
            return
        self.sum += excess - old
        self.sum_squares += excess * excess - old * old
        self._refit()


class DriftSpot:
    """DSPOT levels of one stream's score columns, each column on its own.

    ``reference`` holds normal scores in time order: one per row, or one column per score
    component (rows x columns), at least ``drift_depth + 2`` rows: the first ``drift_depth``
    start the moving mean, the rest give the residuals the tail is fitted on. ``level`` is
    the alarm level (a row at or above it is an anomaly for its column and does not update
    it); ``max_peaks`` bounds the peaks kept for the tail. The levels of the
    ``anomaly.decision`` protocol: feed rows (n, columns) in time order to :meth:`update`.
    """

    def __init__(self, reference, *, level: float, drift_depth: int, max_peaks: int):
        reference, self.row_shape = reference_rows(reference)
        if len(reference) < drift_depth + 2:
            raise ValueError(
                f"DSPOT needs a reference of at least drift_depth + 2 = {drift_depth + 2} rows "
                f"(the first drift_depth start the moving mean), got {len(reference)}"
            )
        if max_peaks < 2:
            raise ValueError(f"max_peaks must be at least 2, got {max_peaks}")
        self.level = level
        self._starts = [_Start(column, drift_depth, max_peaks) for column in reference.T]
        self._columns = [_Column(start) for start in self._starts]

    def update(self, rows: np.ndarray) -> np.ndarray:
        """Levels (n, columns) of ``rows``; each column's state moves past them."""
        levels = np.empty(rows.shape)
        for j, column in enumerate(self._columns):
            step, level = column.step, self.level
            levels[:, j] = [step(value, level) for value in rows[:, j].tolist()]
        return levels

    def fresh(self) -> DriftSpot:
        spot = copy.copy(self)  # shares the starts fitted on the reference
        spot._columns = [_Column(start) for start in self._starts]
        return spot
