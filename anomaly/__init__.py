"""GAN-based anomaly detection: train on normal data, score records, flag anomalies.

import anomaly
detector = anomaly.train(normal_rows, anomaly.Config())
result = detector.score(new_rows)        # scores, flags, percentiles, explanations
detector.save("model/")
detector = anomaly.load("model/")
"""

import os as _os

# TensorFlow's C++ start-up chatter is noise for users of a library; keep warnings and errors.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from anomaly.config import Config  # noqa: E402
from anomaly.errors import (  # noqa: E402
    AnomalyError,
    BundleError,
    ConfigError,
    DataError,
    SchemaError,
    TrainingError,
)

# Keras and TensorFlow take seconds to import: the model parts load on first use, so that
# `anomaly --help`, configuration checks and usage errors stay fast.
_LAZY = {
    "Detector": "anomaly.detector",
    "ScoreResult": "anomaly.detector",
    "load": "anomaly.detector",
    "retrain": "anomaly.training",
    "train": "anomaly.training",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        from anomaly.backend import require_backend

        require_backend()  # a missing backend in one line, not an ImportError from Keras
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anomaly' has no attribute {name!r}")


__all__ = [
    "AnomalyError",
    "BundleError",
    "Config",
    "ConfigError",
    "DataError",
    "Detector",
    "SchemaError",
    "ScoreResult",
    "TrainingError",
    "load",
    "retrain",
    "train",
]
