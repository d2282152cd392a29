"""Recalibration on fresh normal data, the networks unchanged (``anomaly calibrate``)."""

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import anomaly
from anomaly.calibration import recalibrate
from anomaly.health import TrainingWarning
from pipelines.bench.lifecycle import normal_rows as normal
from pipelines.cli import cli


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
    frame = pd.DataFrame(rows, columns=[f"f{i}" for i in range(8)])
    frame[frame.columns[::-1]].to_csv(data, index=False)  # the model's order is f0..f7
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
    # the model's own record of what calibrated it is the fresh rows, not its training's
    assert child.metadata["calibration_records"] == 600
    assert child.metadata["calibration_folds"] == 1
    # As the README says: of the rows as float32 in the model's feature order, not the file's
    assert (
        lineage["calibration_data_sha256"]
        == hashlib.sha256(rows.astype(np.float32).tobytes()).hexdigest()
    )
    assert lineage["calibration_data_sha256"] != hashlib.sha256(data.read_bytes()).hexdigest()
    assert json.loads((out / "metadata.json").read_text())["lineage"] == [lineage]


def test_too_few_or_wrongly_shaped_rows_are_refused(tiny_bundle):
    detector = anomaly.load(tiny_bundle)
    with pytest.raises(anomaly.DataError, match="at least 32"):
        recalibrate(detector, np.zeros((10, 8)))
    with pytest.raises(anomaly.SchemaError, match="8 features"):
        recalibrate(detector, np.zeros((100, 5)))


def test_rows_that_do_not_vary_are_refused_not_calibrated_to_a_zero_threshold(tiny_bundle):
    """300 copies of one row used to give threshold 0: the new model then flagged most
    normal records."""
    detector = anomaly.load(tiny_bundle)
    with pytest.raises(anomaly.DataError, match="all the same record: they do not vary"):
        recalibrate(detector, np.zeros((300, 8)))


def test_an_empty_batch_scores_to_an_empty_result(tiny_bundle):
    result = anomaly.load(tiny_bundle).score(np.empty((0, 8)))
    assert len(result.scores) == 0 and result.top_features == []


@pytest.mark.slow
def test_retraining_warm_starts_on_shifted_normal_data_and_keeps_the_rate(tmp_path):
    """Retrained from its weights for 60 steps on 5,000 rows of the moved normal, the model
    flags 0.5-2 % of new normal rows (its parent: far more), keeps its features,
    standardisation and configuration, and names its parent."""
    rng = np.random.default_rng(2)
    config = anomaly.Config().updated(training={"steps": 100, "seed": 0})
    parent = anomaly.train(normal(rng, 10_000), config, feature_names=["a", "b", "c", "d"])
    new_normal = normal(rng, 100_000, shift=1.5)
    child = anomaly.retrain(parent, normal(rng, 5_000, shift=1.5), steps=60)
    assert np.mean(parent.score(new_normal).is_anomaly) > 0.03
    assert 0.005 <= np.mean(child.score(new_normal).is_anomaly) <= 0.02
    assert child.feature_names == parent.feature_names
    assert child.engine.standardizer is parent.engine.standardizer
    assert child.config.training.steps == 60 and child.config.model == parent.config.model
    assert child.metadata["lineage"][-1]["parent_version"] == parent.version
    assert child.health["parent"]["model_version"] == parent.version
    # a warm start, not a fresh fit: the encoder moved from the parent's weights, not far off
    moved = encoder_distance(child, parent)
    assert moved > 0
    fresh = anomaly.train(normal(rng, 5_000, shift=1.5), config.updated(training={"steps": 60}))
    assert moved < encoder_distance(fresh, parent)


def encoder_distance(a, b) -> float:
    """Mean absolute difference of two detectors' encoder weights."""
    pairs = zip(
        a.engine.networks["encoder"].get_weights(),
        b.engine.networks["encoder"].get_weights(),
        strict=True,
    )
    return float(np.mean([np.abs(x - y).mean() for x, y in pairs]))


def test_the_cli_retrains_and_reports_against_the_parent(tiny_bundle, tiny_bundle_mixing, tmp_path):
    rng = np.random.default_rng(3)
    data = tmp_path / "normal.csv"
    rows = rng.normal(size=(800, 3)) @ tiny_bundle_mixing
    pd.DataFrame(rows, columns=[f"f{i}" for i in range(8)]).to_csv(data, index=False)
    out = tmp_path / "retrained"
    result = CliRunner().invoke(
        cli,
        [
            "retrain",
            "--model",
            str(tiny_bundle),
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    parent = anomaly.load(tiny_bundle)
    assert f"(parent {parent.version})" in result.output and "(parent " in result.output
    child = anomaly.load(out)
    assert child.metadata["lineage"][-1]["parent_version"] == parent.version
    assert child.metadata["training_file"] == str(data)


@pytest.mark.parametrize("command", ["calibrate", "retrain"])
def test_invalid_rows_stop_calibrate_and_retrain_naming_what_they_support(
    tiny_bundle, tiny_bundle_mixing, tmp_path, command
):
    """They have no --on-invalid, so the message may not offer it."""
    rows = np.random.default_rng(1).normal(size=(100, 3)) @ tiny_bundle_mixing
    rows[4, 1] = np.nan
    data = tmp_path / "normal.csv"
    pd.DataFrame(rows, columns=[f"f{i}" for i in range(8)]).to_csv(data, index=False)
    out = tmp_path / "out"
    args = [command, "--model", str(tiny_bundle), "--data", str(data), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: {data}: 1 row has NaN (missing) or infinite values")
    assert result.stderr.rstrip().endswith(
        "fix or remove them (calibrate and retrain skip no rows: they have no --on-invalid)"
    )
    assert "--on-invalid skip" not in result.stderr and not out.exists()


def test_a_table_is_recalibrated_on_its_rows_labelled_normal_as_train_takes_them(tmp_path):
    """A table holding the model's label column: the rows labelled anomalous (a tenth, far
    off) took part in the calibration, which put the threshold above them without a word.
    ``anomaly calibrate`` on the same rows in a file did so too (a tester's threshold rose 11
    times): it now takes the model's label column where the file has one, as Python does."""
    rng = np.random.default_rng(3)
    names = ["a", "b", "c", "d"]
    table = pd.DataFrame(normal(rng, 2000)[:, :4], columns=names)
    table["label"] = (np.arange(2000) % 10 == 0).astype(int)
    table.loc[table["label"] == 1, names] += 8.0
    config = anomaly.Config().updated(data={"label_column": "label"}, training={"steps": 50})
    detector = anomaly.train(table, config)

    from_table = recalibrate(detector, table)
    normal_only = recalibrate(detector, table.loc[table["label"] == 0, names])

    assert from_table.metadata["calibration_records"] == 1800
    assert from_table.engine.params.threshold == normal_only.engine.params.threshold
    assert from_table.score(table.loc[table["label"] == 1, names]).is_anomaly.all()

    detector.save(tmp_path / "model")
    table.to_csv(tmp_path / "fresh.csv", index=False)
    table[names].to_csv(tmp_path / "unlabelled.csv", index=False)
    for data, rows in (("fresh.csv", 1800), ("unlabelled.csv", 2000)):
        out = tmp_path / f"from-{data}"
        args = ["--model", str(tmp_path / "model"), "--data", str(tmp_path / data)]
        result = CliRunner().invoke(cli, ["calibrate", *args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert anomaly.load(out).metadata["calibration_records"] == rows
    assert anomaly.load(tmp_path / "from-fresh.csv").threshold == pytest.approx(
        normal_only.threshold
    )
    # a file whose label column is left empty: said, and '' reads it without labels
    table.assign(label="").to_csv(tmp_path / "empty-labels.csv", index=False)
    args = ["--model", str(tmp_path / "model"), "--data", str(tmp_path / "empty-labels.csv")]
    refused = CliRunner().invoke(cli, ["calibrate", *args, "--out", str(tmp_path / "refused")])
    assert refused.exit_code != 0
    assert "or read the file without labels (this column is the model's data.label_column)" in (
        refused.output
    )
    unlabelled = CliRunner().invoke(
        cli, ["calibrate", *args, "--out", str(tmp_path / "all"), "--label-column", ""]
    )
    assert unlabelled.exit_code == 0, unlabelled.output
    assert anomaly.load(tmp_path / "all").metadata["calibration_records"] == 2000


@pytest.mark.slow
def test_retraining_decides_the_folds_again_on_the_fresh_rows_where_the_parent_said_auto():
    """The v5 fixture trained on 1,500 rows with ``calibration_folds = "auto"``: one fold.
    Retrained on 200 fresh rows (30 held out, too few for 1 %) it cross-fits, without the
    warning a parent's fixed number of folds gives, and its configuration still says
    "auto"; the v4 fixture's fixed 1 stays 1."""
    fixtures = Path(__file__).parent / "fixtures"
    auto_parent = anomaly.load(fixtures / "bundle-v5")
    assert auto_parent.config.training.calibration_folds == "auto"
    assert auto_parent.metadata["calibration_folds"] == 1
    rows = np.asarray(json.loads((fixtures / "bundle-v5.expected.json").read_text())["rows"][:6])
    fresh = np.random.default_rng(0).choice(rows, 200) + 0.05 * np.random.default_rng(1).normal(
        size=(200, 4)
    )

    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)
        child = anomaly.retrain(auto_parent, fresh, steps=5)
    assert child.metadata["calibration_folds"] == 5
    assert child.metadata["calibration_records"] == 200
    assert child.config.training.calibration_folds == "auto"

    with pytest.warns(TrainingWarning, match="calibrated on 30 normal records"):
        fixed = anomaly.retrain(anomaly.load(fixtures / "bundle-v4"), fresh, steps=5)
    assert fixed.metadata["calibration_folds"] == fixed.config.training.calibration_folds == 1


def test_rows_the_model_flags_as_anomalies_are_called_out_by_calibrate_and_retrain(
    tiny_bundle, tiny_bundle_mixing, tmp_path
):
    """A tester calibrated a model on rows 50 standard deviations out: the new model flagged
    0.6 % of them (its parent: all) and nothing said so. Calibrating or retraining on rows
    the model flags is what drift calls for, so it is a warning, naming the share."""
    rng = np.random.default_rng(3)
    parent = anomaly.load(tiny_bundle)
    far = rng.normal(size=(600, 3)) @ tiny_bundle_mixing + 50.0
    with pytest.warns(TrainingWarning, match=r"model recalibrated here flags 100% of these"):
        child = recalibrate(parent, far)
    assert any("flags 100% of these rows" in w for w in child.health["warnings"])
    with pytest.warns(TrainingWarning, match=r"model retrained here flags 100% of these"):
        anomaly.retrain(parent, far, steps=2)

    data = tmp_path / "far.csv"
    pd.DataFrame(far, columns=[f"f{i}" for i in range(8)]).to_csv(data, index=False)
    result = CliRunner().invoke(
        cli,
        [
            "calibrate",
            "--model",
            str(tiny_bundle),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "warning: the model recalibrated here flags 100% of these rows" in result.stderr

    near = rng.normal(size=(600, 3)) @ tiny_bundle_mixing
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)
        recalibrate(parent, near)  # normal rows: no warning


def test_text_among_fresh_rows_is_a_data_error_for_calibrate_and_retrain(tiny_bundle):
    """A reviewer's: retrain met text with numpy's ValueError, which the CLI shows as a bug."""
    parent = anomaly.load(tiny_bundle)
    rows = [["abc"] * 8] * 40
    for make in (recalibrate, anomaly.retrain):
        with pytest.raises(anomaly.DataError, match="the rows of normal data are not numeric"):
            make(parent, rows)
