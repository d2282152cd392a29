"""Tables as data scientists hold them (pandas DataFrames, pyarrow Tables) in the Python API:
features are taken by column name, never by position, and bad columns are named."""

from __future__ import annotations

import decimal
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import anomaly
from anomaly import tables
from anomaly.calibration import recalibrate

NAMES = ["a", "b", "c"]


def normal_frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 3)) * [1.0, 10.0, 100.0] + [0.0, 50.0, 1000.0]
    return pd.DataFrame(values, columns=NAMES)


@pytest.fixture(scope="module")
def detector():
    config = anomaly.Config().updated(training={"steps": 200})
    return anomaly.train(normal_frame(0, 2000), config)


def test_training_on_a_dataframe_names_the_features_after_its_columns(detector):
    assert detector.feature_names == NAMES


def test_a_dataframe_in_another_column_order_scores_as_in_the_models_order(detector):
    frame = normal_frame(1, 50)
    expected = detector.score(frame.to_numpy())

    reordered = detector.score(frame[["c", "a", "b"]].assign(extra=1.0))

    np.testing.assert_array_equal(reordered.scores, expected.scores)
    np.testing.assert_array_equal(reordered.is_anomaly, expected.is_anomaly)


def test_a_pyarrow_table_is_scored_by_column_name(detector):
    frame = normal_frame(2, 20)
    table = pa.Table.from_pandas(frame[["b", "c", "a"]], preserve_index=False)

    np.testing.assert_array_equal(
        detector.score(table).scores, detector.score(frame.to_numpy()).scores
    )


def test_int_bool_and_decimal_columns_are_numbers(detector):
    frame = pd.DataFrame({"c": [1000, 1001], "b": [True, False], "a": [decimal.Decimal("0.5")] * 2})

    expected = detector.score(np.array([[0.5, 1, 1000], [0.5, 0, 1001]], np.float32))

    np.testing.assert_array_equal(detector.score(frame).scores, expected.scores)


def test_a_missing_column_is_named(detector):
    with pytest.raises(anomaly.SchemaError, match="the table has no column 'c'"):
        detector.score(normal_frame(3, 5).drop(columns="c"))


def test_text_in_a_column_is_named_with_its_index_label(detector):
    frame = normal_frame(3, 5).astype({"b": object}).set_axis(list("vwxyz"))
    frame.loc["x", "b"] = "n/a"

    with pytest.raises(anomaly.DataError, match="column 'b' is not numeric: index 'x' holds 'n/a'"):
        detector.score(frame)


def test_a_value_beyond_float32_is_named_as_such_with_its_column_and_index_label(detector):
    """It became inf on the way to float32 and was reported as 'NaN or infinite'."""
    frame = normal_frame(3, 5).set_axis(list("vwxyz"))
    frame.loc["w", "a"] = 1e300

    with pytest.raises(
        anomaly.DataError, match="column 'a' holds values beyond the float32 range.*index 'w'"
    ):
        detector.score(frame)


def test_a_missing_value_in_a_nullable_column_names_its_index_label(detector):
    frame = normal_frame(3, 3).set_axis([10, 20, 30])
    frame["a"] = pd.array([1, None, 3], dtype="Int64")

    with pytest.raises(anomaly.DataError, match=r"1 record\(s\) hold NaN .*: index 20$"):
        detector.score(frame)


def test_recalibrating_on_a_reordered_dataframe_equals_the_array(detector):
    frame = normal_frame(4, 600)

    by_name = recalibrate(detector, frame[["b", "c", "a"]])
    by_array = recalibrate(detector, frame.to_numpy())

    assert by_name.threshold == by_array.threshold


@pytest.fixture(scope="module")
def array_detector():
    """A model trained on an array: its features are x0, x1, x2, names of no column."""
    config = anomaly.Config().updated(training={"steps": 100})
    return anomaly.train(normal_frame(0, 1000).to_numpy(), config)


@pytest.mark.parametrize(
    "columns", [NAMES, [10, 11, 12], pd.RangeIndex(1, 4)], ids=["text", "integers", "range-1"]
)
def test_a_model_trained_on_an_array_takes_a_tables_columns_in_order(array_detector, columns):
    frame = normal_frame(5, 30)
    expected = array_detector.score(frame.to_numpy())

    scored = array_detector.score(frame.set_axis(columns, axis=1))

    assert array_detector.feature_names == ["x0", "x1", "x2"]
    np.testing.assert_array_equal(scored.scores, expected.scores)
    recalibrated = recalibrate(array_detector, normal_frame(6, 600))
    assert (
        recalibrated.threshold
        == recalibrate(array_detector, normal_frame(6, 600).to_numpy()).threshold
    )


def test_one_row_of_a_dataframe_is_scored_by_its_column_names(detector):
    frame = normal_frame(7, 3).set_axis(["p", "q", "r"])
    expected = detector.score(frame.to_numpy()[1:2])

    scored = detector.score(frame[["c", "a", "b"]].loc["q"])

    np.testing.assert_array_equal(scored.scores, expected.scores)


@pytest.mark.parametrize("features", [["a", "b", "c"], None])
def test_training_on_a_labelled_table_takes_its_normal_rows_as_the_file_reader_does(features):
    """anomaly.train(table, config) ignored [data]: the label became a feature and the
    anomalous rows were trained on as normal, where `anomaly train` left both out."""
    frame = normal_frame(3, 600).assign(label=0, host="h1")
    frame.loc[frame.index[::10], "label"] = 1
    config = anomaly.Config().updated(
        data={"features": features, "label_column": "label", "id_column": "host"},
        training={"steps": 2, "calibration_folds": 1},
    )

    trained = anomaly.train(frame, config)

    assert trained.feature_names == NAMES
    assert trained.metadata["training_rows"] == 540
    frame["label"] = frame["label"].astype(object)
    frame.loc[frame.index[3], "label"] = "maybe"
    with pytest.raises(
        anomaly.DataError, match="label column 'label' must hold 0 or 1: index 3 holds 'maybe'"
    ):
        anomaly.train(frame, config)
    unlabelled = anomaly.train(frame.drop(columns="label"), config)  # all normal, as retrain's
    assert unlabelled.metadata["training_rows"] == 600


def test_an_array_takes_the_feature_names_its_configuration_gives():
    config = anomaly.Config().updated(
        data={"features": NAMES}, training={"steps": 2, "calibration_folds": 1}
    )

    trained = anomaly.train(normal_frame(4, 300).to_numpy(), config)

    assert trained.feature_names == NAMES


def test_a_missing_value_in_training_or_calibration_rows_names_its_index_label(detector):
    """score named the row 'r5'; train, retrain and recalibrate said index 5. Bad values
    are a DataError in training as in scoring (training's was a TrainingError)."""
    frame = normal_frame(5, 300).set_axis([f"r{i}" for i in range(300)])
    frame.loc["r5", "b"] = np.nan
    config = anomaly.Config().updated(training={"steps": 2})

    with pytest.raises(anomaly.DataError, match=r"values at index \['r5'\]"):
        anomaly.train(frame, config)
    with pytest.raises(anomaly.DataError, match="NaN or infinite values: index 'r5'"):
        recalibrate(detector, frame)


def test_a_column_named_like_a_label_or_an_id_picked_as_a_feature_is_warned_of():
    """Left out only when given as such, a ``label`` column was trained on as a feature
    without a word (and scoring a file without it failed), an ``id`` too."""
    frame = normal_frame(1, 20).assign(label=0, Id=range(20), target_pressure=1.0)

    with pytest.warns(tables.FeatureRoleWarning) as caught:
        picked = tables.features_by_type(frame, roles=set())

    assert picked == [*NAMES, "label", "Id", "target_pressure"]
    warned = sorted(str(w.message).split("'")[1] for w in caught)
    assert warned == ["Id", "label"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", tables.FeatureRoleWarning)
        assert tables.features_by_type(frame, roles={"label", "Id"}) == [*NAMES, "target_pressure"]
