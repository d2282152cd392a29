"""Feature standardisation fitted on normal training data only and stored with the model.

The transform itself runs inside the compiled scoring pass (see ``anomaly.scoring``), so
this module only fits and serialises its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Features whose spread on normal data is below this are treated as constant (scale 1),
#: so a feature that never moved in training cannot blow up a score by division by zero.
_MIN_SCALE = 1e-6


@dataclass(frozen=True)
class Standardizer:
    """Per-feature centre and scale, and the clip applied after standardising."""

    mean: np.ndarray
    scale: np.ndarray
    clip_value: float

    @classmethod
    def fit(cls, rows: np.ndarray, clip_value: float) -> Standardizer:
        """Fit on normal rows, shape (n, d) or windows (n, w, d) (statistics per feature)."""
        flat = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
        mean = flat.mean(axis=0)
        scale = flat.std(axis=0)
        scale = np.where(scale < _MIN_SCALE, 1.0, scale)
        return cls(mean.astype(np.float32), scale.astype(np.float32), float(clip_value))

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """NumPy version of the transform, used to prepare training data."""
        standard = (rows.astype(np.float32) - self.mean) / self.scale
        return np.clip(standard, -self.clip_value, self.clip_value)

    def to_json(self) -> dict:
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "clip_value": self.clip_value,
        }

    @classmethod
    def from_json(cls, values: dict) -> Standardizer:
        return cls(
            np.asarray(values["mean"], dtype=np.float32),
            np.asarray(values["scale"], dtype=np.float32),
            float(values["clip_value"]),
        )
