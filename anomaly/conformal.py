"""Online conformal alarms: rank each new score of a stream against the stream's recent past.

A detector's threshold is calibrated once, on normal data held out at training time. A long
stream drifts away from that data (a new level, a busier season), and a fixed threshold then
either fires on every row or on none. Inductive conformal anomaly detection (Laxhammar &
Falkman 2015; KNN-CAD, Burnaev & Ishimtsev 2016, which scores 58 on the Numenta Anomaly
Benchmark) recalibrates as it goes: a row's *p-value* is the share of the last ``history``
scores of the same stream that lie strictly below its score. On a stream without anomalies
(exchangeable scores) the p-values are uniform, so ``p >= alarm_level`` fires on about
``1 - alarm_level`` of the rows whatever the model's scale, on every stream alike.

The history starts as a reference of normal scores and grows with the stream, up to twice
the reference by default, before it slides. At KNN-CAD's level (0.9965) a row ranked
against 600 scores alarms when at most 2 of them reach it, so a rare but normal pattern
seen once or twice in the history alarms again; against twice as many it takes 4. On the
Numenta benchmark the doubled history cut the GAN's false-positive rows by 38 % and raised
its score from 55.4 to 59.3, over three training seeds (``docs/benchmarks.md``).

A detector whose score adds up several components (the GAN's reconstruction error,
discriminator output, ...) can be ranked per component instead: each component is ranked
against its own history, since each drifts in its own way, and a row alarms when at least
``quorum`` components reach the alarm level together. Noise lifts one component at a time;
an anomaly lifts several (on the Numenta benchmark, requiring two of the GAN's four
components found as many anomaly windows as ranking their sum, with a fifth fewer false
alarms: see ``docs/benchmarks.md``).

``ConformalLevels`` gives each row's p-value per column, the level that
``anomaly.decision`` turns into alarms (one per event, or a flagged state);
``ConformalAlarm`` is the method with event semantics on one stream, as the benchmark
harness calls it. The adaptive alarm stage of the service and of ``anomaly score``
(``anomaly.alarms``) uses the same parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from anomaly.decision import EventSemantics, StreamAlarm, default_quiet_rows, reference_rows

#: KNN-CAD's published alarm level: about 1 row in 286 of a normal stream reaches it.
DEFAULT_ALARM_LEVEL = 0.9965
#: How far the history grows by default, as a multiple of the reference.
DEFAULT_HISTORY_GROWTH = 2
#: Rows ranked at once; bounds the (rows x columns x history) comparison to a few MB.
_CHUNK = 1024


class ConformalLevels:
    """Conformal p-values of one stream's score columns, each against its own history.

    ``reference`` seeds the history with normal scores: one per row, or one column per
    score component (rows x columns). The history grows with the stream up to ``history``
    scores (default: twice the reference), then slides. The levels of the ``anomaly.decision``
    protocol: feed rows (n, columns) in time order to :meth:`update`.
    """

    def __init__(self, reference, history: int | None = None):
        reference, self.row_shape = reference_rows(reference)
        self.history = DEFAULT_HISTORY_GROWTH * len(reference) if history is None else history
        if self.history < len(reference):
            raise ValueError(
                f"history must be at least the reference's {len(reference)} rows, got {history}"
            )
        self.reference_rows = len(reference)
        self._reference = reference
        self._history = reference

    def update(self, rows: np.ndarray) -> np.ndarray:
        """p-values (n, columns) of ``rows``; the history moves past them."""
        joined = np.concatenate([self._history, rows])
        p_values = self._rank(joined, len(self._history))
        self._history = joined[-self.history :].copy()
        return p_values

    def fresh(self) -> ConformalLevels:
        return ConformalLevels(self._reference.reshape(-1, *self.row_shape), self.history)

    def _rank(self, joined: np.ndarray, past: int) -> np.ndarray:
        """For the rows of ``joined`` after its first ``past`` rows (the history, then the
        new scores): per column, the share of the up to ``history`` rows just before the row
        that lie strictly below it."""
        size = self.history
        scores = joined[past:]
        if len(scores) == 1:  # a stream's one row in a batch (many keys): the same, directly
            return np.count_nonzero(joined[:past] < scores, axis=0)[None, :] / past
        # a history still growing is padded in front with +inf, which no score lies above,
        # so every row is ranked against a window of `size` values (update refuses inf)
        padding = np.full((size - past, joined.shape[1]), np.inf)
        series = np.concatenate([padding, joined]).T.copy()  # columns x time, contiguous
        ranked_against = np.minimum(size, past + np.arange(len(scores)))
        p_values = np.empty(scores.shape)
        for start in range(0, len(scores), _CHUNK):
            stop = min(start + _CHUNK, len(scores))
            # row i is ranked against the `size` values just before it: series[:, i : i + size]
            pasts = sliding_window_view(series[:, start : stop + size - 1], size, axis=1)
            below = np.count_nonzero(pasts < scores[start:stop].T[:, :, None], axis=2)
            p_values[start:stop] = below.T / ranked_against[start:stop, None]
        return p_values


@dataclass(frozen=True)
class ConformalResult:
    """Per row: the p-value in [0, 1], whether it alarmed, and whether it was quiet.

    With several score columns, the p-value is the highest level that ``quorum`` columns
    reach together (their ``quorum``-th largest p-value)."""

    p_values: np.ndarray
    alarms: np.ndarray
    quiet: np.ndarray


class ConformalAlarm:
    """Conformal p-values and event alarms for one stream of anomaly scores, fed in time order.

    ``reference`` seeds the history with scores of normal data (for example the stream's
    first rows, or held-out normal records). It is one score per row, or one column per
    score component (rows x ``columns``), ranked column by column; then a row alarms when
    ``quorum`` columns reach the alarm level, and ``quiet_rows`` rows (default: a fifth of
    the reference) cannot alarm after it. The history grows with the stream up to
    ``history`` scores (default: twice the reference), then slides. Feed later scores (the
    same columns) to :meth:`update` in time order, in batches of any size: the result does
    not depend on how the stream is cut into batches.
    """

    def __init__(
        self,
        reference,
        *,
        history: int | None = None,
        alarm_level: float = DEFAULT_ALARM_LEVEL,
        quiet_rows: int | None = None,
        quorum: int = 1,
    ):
        levels = ConformalLevels(reference, history)
        if not 0.0 < alarm_level <= 1.0:
            raise ValueError(f"alarm_level must be in (0, 1], got {alarm_level}")
        self.history = levels.history
        self.alarm_level = float(alarm_level)
        self.quiet_rows = (
            default_quiet_rows(levels.reference_rows) if quiet_rows is None else int(quiet_rows)
        )
        if self.quiet_rows < 0:
            raise ValueError(f"quiet_rows must be >= 0, got {quiet_rows}")
        self._stream = StreamAlarm(
            levels, quorum, EventSemantics(self.alarm_level, self.quiet_rows)
        )
        self.quorum = quorum

    def update(self, scores) -> ConformalResult:
        """Rank ``scores`` (the stream's next rows, in order); the history moves past them."""
        result = self._stream.update(scores)
        return ConformalResult(result.levels, result.alarms, result.quiet)
