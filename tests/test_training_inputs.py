"""Training data too small for the model asked for: refused in one line that says why."""

from __future__ import annotations

import numpy as np
import pytest

import anomaly
from anomaly import Config
from anomaly.errors import TrainingError


def test_too_few_windows_names_the_window_and_the_rows():
    config = Config().updated(model={"window": 100})

    with pytest.raises(TrainingError, match="^20 windows of 100 rows from 119 normal rows; at"):
        anomaly.train(np.zeros((119, 2), np.float32), config)
