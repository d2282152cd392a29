"""Feature standardisation fitted on normal training data only and stored with the model.

The transform itself runs inside the compiled scoring pass (see ``anomaly.scoring``), so
this module only fits and serialises its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

#: Features whose spread on normal data is below this are treated as constant (scale 1),
#: so a feature that never moved in training cannot blow up a score by division by zero.
_MIN_SCALE = 1e-6
#: The largest excess over the clip that is compressed; a standardised value past float32's
#: range (a huge raw value over a tiny scale) becomes +-(clip_value + 88.7), not a NaN.
_LARGEST_EXCESS = float(np.finfo(np.float32).max)

#: What happens to standardised values beyond +-clip_value: ``log`` compresses them
#: (clip_value + log(1 + excess)), keeping their order; ``clip`` saturates them.
Extremes = Literal["log", "clip"]


def compress_extremes(standard, clip_value: float, extremes: Extremes, xp=np):
    """Standardised values with their tails beyond +-``clip_value`` compressed or clipped.

    ``xp`` is ``numpy`` or ``keras.ops`` (training prepares data in NumPy; scoring runs
    the same expression in its compiled pass). Clipping alone scores a value a million
    standard deviations off like one just past the clip, so their anomaly scores tie; the
    logarithm keeps them apart while the networks' inputs stay within about
    +-(clip_value + 14) for anything under a million standard deviations.
    """
    if extremes not in get_args(Extremes):
        raise ValueError(f"extremes must be 'log' or 'clip', not {extremes!r}")
    magnitude = xp.abs(standard)
    inside = xp.minimum(magnitude, clip_value)
    if extremes == "clip":
        return xp.sign(standard) * inside
    beyond = xp.where(magnitude > clip_value, magnitude - clip_value, 0.0)  # inf - inf is NaN
    return xp.sign(standard) * (inside + xp.log1p(xp.minimum(beyond, _LARGEST_EXCESS)))


@dataclass(frozen=True)
class Standardizer:
    """Per-feature centre and scale, and what happens beyond the clip after standardising."""

    mean: np.ndarray
    scale: np.ndarray
    clip_value: float
    extremes: Extremes
    """``clip`` in bundles saved before extremes were compressed (bundle version 3 and
    older: their scores stay as they were calibrated)."""

    @classmethod
    def fit(cls, rows: np.ndarray, clip_value: float, extremes: Extremes) -> Standardizer:
        """Fit on normal rows, shape (n, d) or windows (n, w, d) (statistics per feature)."""
        flat = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
        mean = flat.mean(axis=0)
        scale = flat.std(axis=0)
        scale = np.where(scale < _MIN_SCALE, 1.0, scale)
        return cls(mean.astype(np.float32), scale.astype(np.float32), float(clip_value), extremes)

    def transform(self, rows: np.ndarray, xp=np):
        """Standardised rows, their extremes compressed or clipped; with ``xp=keras.ops``,
        the same transform inside a compiled graph."""
        if xp is np:
            rows = np.asarray(rows, np.float32)
        standard = (rows - self.mean) / self.scale
        return compress_extremes(standard, self.clip_value, self.extremes, xp)

    def to_json(self) -> dict:
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "clip_value": self.clip_value,
            "extremes": self.extremes,
        }

    @classmethod
    def from_json(cls, values: dict) -> Standardizer:
        return cls(
            np.asarray(values["mean"], dtype=np.float32),
            np.asarray(values["scale"], dtype=np.float32),
            float(values["clip_value"]),
            values["extremes"],
        )
