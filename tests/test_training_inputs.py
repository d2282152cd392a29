"""Training data the model cannot take (too few rows, no variation, names or values that are
not what a model holds): refused in one line that says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import anomaly
from anomaly import Config
from anomaly.calibration import refuse_records_that_do_not_vary
from anomaly.errors import TrainingError
from anomaly.health import TrainingWarning


def test_too_few_windows_names_the_window_and_the_rows():
    config = Config().updated(model={"window": 100})

    with pytest.raises(TrainingError, match="^20 windows of 100 rows from 119 normal rows; at"):
        anomaly.train(np.zeros((119, 2), np.float32), config)


@pytest.mark.parametrize(("window", "records"), [(None, 300), (4, 297)])
def test_normal_data_that_does_not_vary_is_refused_before_training(window, records):
    """300 copies of one row (a stuck sensor) once trained a model that flagged 600 of 600
    ordinary rows; one row that differs is variation enough to go on."""
    config = Config().updated(model={"window": window})
    same = np.tile(np.array([[1.0, 2.0, 3.0]], np.float32), (300, 1))

    with pytest.raises(anomaly.DataError, match=f"^the {records} normal records are all the same"):
        anomaly.train(same, config)
    same[150, 2] = 3.5
    refuse_records_that_do_not_vary(same)


def test_feature_names_that_are_not_text_are_refused_before_training():
    """Integer names trained and saved a bundle that load then refused as damaged."""
    rows = np.random.default_rng(0).normal(size=(50, 2))

    with pytest.raises(TrainingError, match="^feature names must be text, and 1 is a int: "):
        anomaly.train(rows, feature_names=[1, 2])


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        (np.array([[1.0, "x"], [2.0, 3.0]], dtype=object), "are not numeric: could not convert"),
        (np.ones((4, 2), complex), "are complex numbers"),
        ([[1.0, 2.0], [1.0]] * 2, "are not numeric: setting an array element with a sequence"),
    ],
)
def test_text_or_complex_records_are_a_data_error_in_training_and_scoring(records, problem):
    """Text raised numpy's own ValueError in training; a complex array was scored with its
    imaginary part dropped, a ComplexWarning all that said so."""
    with pytest.raises(anomaly.DataError, match=f"^training rows {problem}"):
        anomaly.train(records)
    model = anomaly.load(Path(__file__).parent / "fixtures" / "bundle-v3")
    with pytest.raises(anomaly.DataError, match=f"^records {problem}"):
        model.score([[*row, *row] for row in records])


def test_a_feature_that_only_grows_is_named_in_a_training_warning():
    """A CSV's numeric id column, picked as a feature by type, made every new record score
    as an anomaly (93 % of new normal rows flagged), and training said nothing."""
    rng = np.random.default_rng(0)
    rows = np.column_stack([np.arange(300.0), rng.normal(size=300), rng.normal(size=300)])
    config = Config().updated(training={"steps": 5, "calibration_folds": 1})

    with pytest.warns(TrainingWarning) as caught:
        detector = anomaly.train(rows, config, feature_names=["id", "a", "b"])

    (warned,) = [str(w.message) for w in caught if "only grows" in str(w.message)]
    assert warned.startswith("feature 'id' only grows or only falls over the 300 training rows")
    assert warned in detector.health["warnings"]
