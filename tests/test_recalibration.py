"""Recalibration on fresh normal data, the networks unchanged (``anomaly calibrate``)."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import anomaly
from anomaly.calibration import recalibrate
from pipelines.cli import cli

D = 4
COVARIANCE = np.full((D, D), 0.5) + 0.5 * np.eye(D)


def normal(rng, n, shift=0.0):
    return (rng.multivariate_normal(np.zeros(D), COVARIANCE, n) + shift).astype(np.float32)


@pytest.mark.slow
def test_recalibrating_on_shifted_normal_data_brings_the_rate_back_to_the_target():
    """Normal operation moves (every feature up by 1.5 standard deviations): the model's
    threshold then fires on far more than 1 % of normal rows; recalibrated on 5,000 rows of
    the new normal, it fires on 0.5-2 % of 100,000 more, for each of two training seeds."""
    rng = np.random.default_rng(0)
    for seed in range(2):
        config = anomaly.Config().updated(training={"steps": 100, "seed": seed})
        detector = anomaly.train(normal(rng, 10_000), config)
        new_normal = normal(rng, 100_000, shift=1.5)
        before = np.mean(detector.score(new_normal).is_anomaly)
        assert before > 0.03, before
        calibrated = recalibrate(detector, normal(rng, 5_000, shift=1.5))
        after = np.mean(calibrated.score(new_normal).is_anomaly)
        assert 0.005 <= after <= 0.02, (seed, before, after)
        for name in ("encoder", "generator", "critic"):  # the networks are the parent's
            assert calibrated.engine.networks[name] is detector.engine.networks[name]


def test_the_cli_writes_a_new_model_with_its_lineage(tiny_bundle, tiny_bundle_mixing, tmp_path):
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(600, 3)) @ tiny_bundle_mixing + 0.5
    data = tmp_path / "normal.csv"
    pd.DataFrame(rows, columns=[f"f{i}" for i in range(8)]).to_csv(data, index=False)
    out = tmp_path / "recalibrated"
    result = CliRunner().invoke(
        cli, ["calibrate", "--model", str(tiny_bundle), "--data", str(data), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    parent, child = anomaly.load(tiny_bundle), anomaly.load(out)
    assert f"(parent {parent.version})" in result.output
    assert child.version != parent.version and child.threshold != parent.threshold
    (lineage,) = child.metadata["lineage"]
    assert lineage["parent_version"] == parent.version
    assert lineage["calibration_records"] == 600 and lineage["calibration_file"] == str(data)
    assert len(lineage["calibration_data_sha256"]) == 64
    assert json.loads((out / "metadata.json").read_text())["lineage"] == [lineage]


def test_too_few_or_wrongly_shaped_rows_are_refused(tiny_bundle):
    detector = anomaly.load(tiny_bundle)
    with pytest.raises(anomaly.DataError, match="at least 32"):
        recalibrate(detector, np.zeros((10, 8)))
    with pytest.raises(anomaly.SchemaError, match="8 features"):
        recalibrate(detector, np.zeros((100, 5)))
