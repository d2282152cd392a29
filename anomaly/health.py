"""The training health report: losses per epoch and a mode-collapse indicator.

A GAN can train "successfully" into a useless model: losses that blow up, or a generator
that produces one sample whatever z is (mode collapse), which makes G(E(x)) close to that
sample for every x. The report is stored in the bundle and its warnings are raised as
``TrainingWarning`` so a user sees them at training time.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

#: Generated samples whose mean pairwise distance is below this fraction of the data's
#: are reported as mode collapse.
COLLAPSE_RATIO = 0.25
_SAMPLE = 512


class TrainingWarning(UserWarning):
    """Training finished but something in its health report looks wrong."""


def report_warnings(kept: list[str], *messages: str | None) -> None:
    """Each of ``messages`` that says something (not None): kept in a health report's
    warnings list ``kept`` and raised as a ``TrainingWarning`` where the caller was
    called."""
    for message in messages:
        if message:
            kept.append(message)
            warnings.warn(message, TrainingWarning, stacklevel=3)


def diversity_ratio(generated: np.ndarray, data: np.ndarray, seed: int = 0) -> float:
    """Mean pairwise distance of generated samples over that of data samples (about 1 when
    the generator covers the data, near 0 when it collapsed)."""
    rng = np.random.default_rng(seed)

    def spread(rows):
        rows = rows.reshape(len(rows), -1)
        rows = rows[rng.choice(len(rows), min(_SAMPLE, len(rows)), replace=False)]
        diffs = rows[:, None, :] - rows[None, :, :]
        return float(np.sqrt((diffs**2).sum(-1)).mean())

    data_spread = spread(data)
    return spread(generated) / data_spread if data_spread > 0 else 1.0


def assess(history: dict[str, list[float]], generated: np.ndarray, data: np.ndarray) -> dict:
    """Build the report and warn about what looks wrong."""
    losses = {name: [float(v) for v in values] for name, values in history.items()}
    ratio = diversity_ratio(generated, data)
    problems = []
    for name, values in losses.items():
        if not all(math.isfinite(v) for v in values):
            problems.append(f"{name} became non-finite during training")
    if ratio < COLLAPSE_RATIO:
        problems.append(
            f"possible mode collapse: generated samples spread {ratio:.2f}x as much as the data"
        )
    rec = losses.get("val_reconstruction") or losses.get("reconstruction") or []
    if len(rec) >= 3 and rec[-1] > rec[0]:
        problems.append(
            f"reconstruction error rose during training ({rec[0]:.4g} -> {rec[-1]:.4g})"
        )
    for problem in problems:
        warnings.warn(problem, TrainingWarning, stacklevel=3)
    return {
        "epochs": len(next(iter(losses.values()), [])),
        "losses": losses,
        "diversity_ratio": ratio,
        "mode_collapse": ratio < COLLAPSE_RATIO,
        "warnings": problems,
    }
