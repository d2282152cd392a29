"""One stream's decision per row: the quorum over its columns' levels, then the semantics.

An adaptive method (``anomaly.conformal``, ``anomaly.spot``) gives each row of a stream a
*level* per score column, in [0, 1]: how far into the column's normal range, as learnt from
the stream's own past, the row's value lies (on normal rows, a level of at least ``q``
comes about ``1 - q`` of the time). With several columns (a detector's score components)
the row's level is the highest that ``quorum`` columns reach together, their
``quorum``-th largest level: noise lifts one component at a time, an anomaly several.

The row's level then becomes a decision under one of two semantics, for two kinds of user:

* **event**: one alarm per event. A row whose level reaches ``level`` alarms and opens a
  quiet period of ``quiet_rows`` rows that cannot alarm (their levels are still reported).
  One anomaly lifts many consecutive rows (a sliding window overlaps it for its whole
  length), and every extra alarm for it is a false positive to the operator already paged:
  the Numenta benchmark scores this way, one detection per anomaly window.
* **state**: a flagged state with hysteresis. A stream enters the state at a row whose level
  reaches ``level``; every row in the state is flagged; it leaves at the ``exit_rows``-th
  consecutive row whose level is below ``exit_level`` (lower than ``level``), the first
  row out of the state. An operator watching sensors then sees every row of a stuck valve
  flagged, and the alert ends when the valve's rows look normal again; the lower exit level
  and the run of rows keep one event from flickering in and out of the state.

Both are causal: a row's decision depends on the rows before it only, and they give the
same result however the stream is cut into batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: KNN-CAD's quiet period: one fifth of the reference (its probationary period).
DEFAULT_QUIET_SHARE = 0.2
#: Largest score magnitude a stream takes. DSPOT sums windows of scores and squares their
#: residuals: past about 1e154 a square, past 1e308 a sum overflows (``math.fsum`` raises
#: after the stream has moved). Every method refuses the same rows, so switching methods
#: never turns a scored row into a refused one; a detector's scores never come near.
MAX_SCORE = 1e150


def default_quiet_rows(reference_rows: int) -> int:
    """The quiet period after an event alarm when none is set: a fifth of the reference."""
    return int(DEFAULT_QUIET_SHARE * reference_rows)


class Levels(Protocol):
    """An adaptive method for one stream: a level per row and column, in time order."""

    row_shape: tuple[int, ...]
    """A row's shape as the reference gave it: ``()`` for one score per row, ``(k,)`` for
    ``k`` columns."""

    def update(self, rows: np.ndarray) -> np.ndarray:
        """Levels (n, k) of the next ``rows`` (n, k: finite, checked by the caller)."""

    def fresh(self) -> Levels:
        """A new stream starting from the same reference and settings."""


def reference_rows(reference) -> tuple[np.ndarray, tuple[int, ...]]:
    """A reference of normal scores as rows x columns, and a row's shape as given; raises
    ``ValueError`` for a shape that is neither 1-D nor 2-D, fewer than 2 rows or a score
    that is NaN, infinite or beyond ``MAX_SCORE`` in magnitude."""
    reference = np.asarray(reference, np.float64)
    if reference.ndim not in (1, 2):
        raise ValueError(
            f"the reference must be 1-D (scores) or 2-D (scores x columns), got shape "
            f"{reference.shape}"
        )
    row_shape = reference.shape[1:]
    reference = reference.reshape(len(reference), -1)
    if len(reference) < 2:
        raise ValueError(f"the reference needs at least 2 scores, got {len(reference)}")
    if not _usable(reference):
        raise ValueError(f"the reference holds NaN or infinite scores, or beyond +-{MAX_SCORE:g}")
    return reference, row_shape


def _usable(scores: np.ndarray) -> bool:
    """Whether every score is finite and within ``MAX_SCORE`` in magnitude."""
    return bool((np.abs(scores) <= MAX_SCORE).all())  # False for NaN too


@dataclass(frozen=True)
class AlarmResult:
    """Per row: its level in [0, 1], whether it is flagged and whether it was quiet.

    ``alarms`` is the decision: with event semantics the row that opens an event, with state
    semantics every row in the flagged state. ``quiet`` marks the rows of a quiet period
    after an event alarm (event semantics; never with state semantics)."""

    levels: np.ndarray
    alarms: np.ndarray
    quiet: np.ndarray


class EventSemantics:
    """One alarm per event: a row reaching ``level`` alarms, then ``quiet_rows`` rows cannot."""

    in_state = False

    def __init__(self, level: float, quiet_rows: int):
        self.level = level
        self.quiet_rows = quiet_rows
        self._quiet_left = 0

    def decide(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(alarms, quiet) of the next rows' levels."""
        n = len(levels)
        alarms = np.zeros(n, bool)
        quiet = np.zeros(n, bool)
        quiet[: min(self._quiet_left, n)] = True
        next_free = self._quiet_left  # first row (in this batch) allowed to alarm
        for row in np.flatnonzero(levels >= self.level):
            if row < next_free:
                continue
            alarms[row] = True
            next_free = row + 1 + self.quiet_rows
            quiet[row + 1 : next_free] = True
        self._quiet_left = max(0, next_free - n)
        return alarms, quiet

    def fresh(self) -> EventSemantics:
        return EventSemantics(self.level, self.quiet_rows)


class StateSemantics:
    """A flagged state with hysteresis: entered at a row reaching ``level``, left at the
    ``exit_rows``-th consecutive row below ``exit_level``; every row in it is flagged."""

    def __init__(self, level: float, exit_level: float, exit_rows: int):
        self.level = level
        self.exit_level = exit_level
        self.exit_rows = exit_rows
        self.in_state = False
        self._low_run = 0  # consecutive rows below exit_level, in the state

    def decide(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flagged, quiet) of the next rows' levels; nothing is quiet in this semantics.

        One pass over the rows in Python (about 0.1 us a row): whether a row is flagged
        depends on the state the row before it left, a recurrence that array operations
        could only follow by rescanning the rest of the batch at every entry and exit
        (quadratic: seconds for 65,536 rows alternating in and out)."""
        level, exit_level, exit_rows = self.level, self.exit_level, self.exit_rows
        in_state, low_run = self.in_state, self._low_run
        flagged = []
        for value in levels.tolist():
            if not in_state:
                if value < level:
                    flagged.append(False)
                    continue
                in_state, low_run = True, 0
            if value >= exit_level:
                low_run = 0
            else:
                low_run += 1
                if low_run >= exit_rows:  # the first row out of the state
                    in_state, low_run = False, 0
                    flagged.append(False)
                    continue
            flagged.append(True)
        self.in_state, self._low_run = in_state, low_run
        return np.array(flagged, bool), np.zeros(len(flagged), bool)

    def fresh(self) -> StateSemantics:
        return StateSemantics(self.level, self.exit_level, self.exit_rows)


class StreamAlarm:
    """One stream's alarms: ``levels`` per column, their ``quorum``-th largest per row, then
    ``semantics``. Feed scores shaped like the method's reference to :meth:`update` in time
    order, in batches of any size: the result does not depend on how the stream is cut."""

    def __init__(
        self, levels: Levels, quorum: int, semantics: EventSemantics | StateSemantics
    ) -> None:
        columns = levels.row_shape[0] if levels.row_shape else 1
        if not 1 <= quorum <= columns:
            raise ValueError(
                f"quorum must be in [1, {columns}] for {columns} score column(s), got {quorum}"
            )
        self.levels = levels
        self.quorum = quorum
        self.semantics = semantics

    @property
    def in_state(self) -> bool:
        """Whether the stream is in the flagged state now (state semantics)."""
        return self.semantics.in_state

    def checked(self, scores) -> np.ndarray:
        """``scores`` as floats, or ``ValueError`` for rows not shaped like the reference or a
        score that is NaN, infinite or beyond ``MAX_SCORE`` in magnitude."""
        scores = np.asarray(scores, np.float64)
        per_row = self.levels.row_shape
        if scores.ndim == 0 or scores.shape[1:] != per_row:
            raise ValueError(
                f"scores must have shape {('n', *per_row)} like the reference, got {scores.shape}"
            )
        if not _usable(scores):
            raise ValueError(f"scores hold NaN or infinite values, or beyond +-{MAX_SCORE:g}")
        return scores

    def update(self, scores) -> AlarmResult:
        """Levels and decisions of ``scores`` (the stream's next rows, in order); scores that
        are not :meth:`checked` are refused and the stream left as it was."""
        scores = self.checked(scores)
        columns = self.levels.update(scores.reshape(len(scores), -1))
        levels = np.sort(columns, axis=1)[:, -self.quorum]  # the level `quorum` columns reach
        alarms, quiet = self.semantics.decide(levels)
        return AlarmResult(levels, alarms, quiet)

    def fresh(self) -> StreamAlarm:
        """A new stream with the same method, reference and settings."""
        return StreamAlarm(self.levels.fresh(), self.quorum, self.semantics.fresh())
