"""The standardising transform: identity within the clip, order kept beyond it, the same
in NumPy (training) and in the compiled scoring pass (``keras.ops``)."""

import json

import keras
import numpy as np
import pytest

from anomaly.preprocessing import Standardizer, compress_extremes

STANDARD = np.array([-1e38, -1e6, -11.0, -10.0, -3.0, 0.0, 2.5, 10.0, 10.5, 1e3, 3e38], np.float32)


def test_values_within_the_clip_are_unchanged_and_those_beyond_keep_their_order():
    compressed = compress_extremes(STANDARD, 10.0, "log")

    inside = np.abs(STANDARD) <= 10.0
    np.testing.assert_array_equal(compressed[inside], STANDARD[inside])
    assert np.all(np.diff(compressed) > 0)
    assert np.isfinite(compressed).all()
    # a million standard deviations stays a moderate network input
    assert compressed[1] == pytest.approx(-(10.0 + np.log1p(1e6 - 10.0)))
    assert np.abs(compressed).max() < 100.0


def test_clip_saturates_as_bundles_saved_before_compression_did():
    np.testing.assert_array_equal(
        compress_extremes(STANDARD, 10.0, "clip"), np.clip(STANDARD, -10.0, 10.0)
    )


@pytest.mark.parametrize("extremes", ["log", "clip"])
def test_the_keras_ops_transform_equals_the_numpy_one(extremes):
    standardizer = Standardizer(
        mean=np.array([1.0, -2.0], np.float32),
        scale=np.array([0.5, 3.0], np.float32),
        clip_value=10.0,
        extremes=extremes,
    )
    rows = np.array([[1.0, -2.0], [7.0, 40.0], [-1e4, 1e9], [1e30, -1e30]], np.float32)

    in_graph = keras.ops.convert_to_numpy(
        standardizer.transform(keras.ops.convert_to_tensor(rows), xp=keras.ops)
    )

    np.testing.assert_allclose(in_graph, standardizer.transform(rows), rtol=1e-6)


@pytest.mark.parametrize("extremes", ["log", "clip"])
def test_the_transform_round_trips_through_json(extremes):
    standardizer = Standardizer.fit(np.arange(12.0).reshape(6, 2), 10.0, extremes)

    loaded = Standardizer.from_json(json.loads(json.dumps(standardizer.to_json())))

    assert loaded.to_json() == standardizer.to_json()
    assert loaded.extremes == extremes


def test_an_unknown_treatment_of_extremes_is_refused_rather_than_taken_for_one():
    with pytest.raises(ValueError, match="extremes must be 'log' or 'clip', not 'Clip'"):
        compress_extremes(STANDARD, 10.0, "Clip")
