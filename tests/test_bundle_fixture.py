"""Bundles written by earlier releases load and score the same in every later release.

Each fixture was written once and is never regenerated: a change that makes one fail to load
or give other results breaks every user's saved models. A change of format must bump
``bundle_version``, add a migration (``anomaly.migrations``) and a fixture of the new format.

- ``bundle-0.1.0``: written by release 0.1.0, bundle version 2 (before drift summaries).
- ``bundle-v3``: bundle version 3, written by ``fixtures/write_bundle_fixture.py``, with
  ``bundle-v3.drift.csv`` (normal rows with feature ``c`` moved by 3 standard deviations).
- ``bundle-v4``: bundle version 4 (standardised values beyond the clip compressed, not
  saturated), the same way; its probes include 2 rows beyond the clip.
- ``bundle-v5``: bundle version 5 (``training.calibration_folds`` may be ``"auto"``, as it
  is in this one), the same way.

``<fixture>.expected.json`` holds probe rows and what the bundle gave for them when written
(6 normal rows, 4 far off the training data's plane), and for ``bundle-v3`` what
``anomaly drift --json`` printed for its drift data.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import anomaly
from anomaly import bundle
from anomaly.drift import DriftMonitor
from anomaly.migrations import MIGRATIONS
from pipelines.cli import cli

FIXTURES = Path(__file__).parent / "fixtures"
READABLE = "this release reads bundle versions 2 to 5"
#: Each fixture, and what it does with standardised values beyond the clip.
EXTREMES = {
    "bundle-0.1.0": "clip",
    "bundle-v3": "clip",
    "bundle-v4": "log",
    "bundle-v5": "log",
}


def expected_of(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.expected.json").read_text())


def run(*args: str):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.mark.parametrize("name", sorted(EXTREMES))
def test_the_bundle_loads_and_scores_as_when_it_was_written(name):
    expected = expected_of(name)
    detector = anomaly.load(FIXTURES / name)
    result = detector.score(np.asarray(expected["rows"], np.float32))
    # bundles written before extremes were compressed keep saturating them
    assert detector.engine.standardizer.extremes == EXTREMES[name]
    np.testing.assert_allclose(result.scores, expected["scores"], rtol=1e-5, atol=1e-5)
    assert result.is_anomaly.tolist() == expected["is_anomaly"]
    assert detector.threshold == expected["threshold"]
    assert detector.threshold_at(0.001) == expected["threshold_at_0.001"]
    for name, values in expected["components"].items():
        np.testing.assert_allclose(result.components[name], values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["bundle-v3", "bundle-v4", "bundle-v5"])
def test_the_bundle_ranks_drift_as_when_it_was_written(name):
    model, data = FIXTURES / name, FIXTURES / f"{name}.drift.csv"
    printed = run("drift", "--model", model, "--data", data, "--json")
    assert printed.exit_code == 0, printed.output
    got, expected = json.loads(printed.stdout), expected_of(name)["drift"]
    assert [f["name"] for f in got["features"]] == [f["name"] for f in expected["features"]]
    np.testing.assert_allclose(
        [f["drift"] for f in got["features"]], [f["drift"] for f in expected["features"]], rtol=1e-9
    )
    first = run("drift", "--model", model, "--data", data).stdout.splitlines()[1]
    assert first.split() == ["c", f"{got['features'][0]['drift']:.4f}", "significant", "shift"]


def test_a_version_2_bundle_gets_a_score_reference_from_its_calibration_and_no_feature_summary():
    detector = anomaly.load(FIXTURES / "bundle-0.1.0")
    summary = detector.drift_summary
    assert not summary.has_features and summary.feature_names == detector.feature_names
    reference = detector.engine.params.reference_scores
    deciles = np.quantile(reference, np.arange(1, 10) / 10, method="inverted_cdf")
    np.testing.assert_allclose(summary.score_edges, deciles)
    monitor = DriftMonitor(summary, window=100)
    rows = np.asarray(expected_of("bundle-0.1.0")["rows"], np.float32)
    result = detector.score(rows)
    monitor.observe(rows, result.scores, result.is_anomaly)
    assert monitor.feature_psi() == {} and np.isfinite(monitor.score_psi())


def test_drift_on_a_version_2_bundle_says_in_one_line_how_to_add_a_summary(tmp_path):
    rows = np.random.default_rng(0).normal(size=(500, 4))
    data = tmp_path / "normal.csv"
    data.write_text("a,b,c,d\n" + "\n".join(",".join(map(str, row)) for row in rows))
    old = FIXTURES / "bundle-0.1.0"

    refused = run("drift", "--model", old, "--data", data)
    assert refused.exit_code == 2 and len(refused.stderr.splitlines()) == 1
    assert "predates drift summaries" in refused.stderr
    assert "`anomaly calibrate` or `anomaly retrain` on normal data" in refused.stderr

    new = tmp_path / "recalibrated"
    calibrated = run("calibrate", "--model", old, "--data", data, "--out", new)
    assert calibrated.exit_code == 0, calibrated.output
    assert json.loads((new / "manifest.json").read_text())["bundle_version"] == 5
    measured = run("drift", "--model", new, "--data", data, "--json")
    assert measured.exit_code == 0, measured.output
    assert all(f["drift"] < 0.1 for f in json.loads(measured.stdout)["features"])


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (6, f"bundle version 6 was written by a later release; {READABLE}; upgrade the package"),
        (1, f"bundle version 1 is older than this release reads; {READABLE}; retrain it"),
        ("3", f'the bundle version in manifest.json is "3", not an integer; {READABLE}; retrain'),
        (3.0, "the bundle version in manifest.json is 3.0, not an integer"),
        (None, "the bundle version in manifest.json is null, not an integer"),
        ([3], "the bundle version in manifest.json is a JSON array, not an integer"),
    ],
)
def test_a_bundle_too_new_or_too_old_is_refused_in_one_line_before_anything_else_is_read(
    tmp_path, version, message
):
    copy = Path(shutil.copytree(FIXTURES / "bundle-v3", tmp_path / "model"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["bundle_version"] = version
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "scoring.json").unlink()  # read after the version check, it would be named
    with pytest.raises(anomaly.BundleError) as refused:
        anomaly.load(copy)
    assert str(refused.value).startswith(f"{copy}: {message}")
    assert "\n" not in str(refused.value)


def test_a_version_2_bundle_that_cannot_be_migrated_is_refused_naming_the_step(tmp_path):
    copy = Path(shutil.copytree(FIXTURES / "bundle-0.1.0", tmp_path / "model"))
    scoring = json.loads((copy / "scoring.json").read_text())
    scoring["reference_scores"] = ["high"]
    (copy / "scoring.json").write_text(json.dumps(scoring))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["scoring.json"] = hashlib.sha256(
        (copy / "scoring.json").read_bytes()
    ).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(anomaly.BundleError) as refused:
        anomaly.load(copy)
    assert str(refused.value).startswith(f"{copy}: cannot bring bundle version 2 to 3 (")
    assert str(refused.value).endswith("retrain or restore it")


def test_a_version_2_bundle_with_a_number_beyond_float_range_is_refused_naming_the_files(
    tmp_path,
):
    copy = Path(shutil.copytree(FIXTURES / "bundle-0.1.0", tmp_path / "model"))
    scoring = json.loads((copy / "scoring.json").read_text())
    scoring["reference_scores"][0] = 10**401  # a JSON integer no float holds
    (copy / "scoring.json").write_text(json.dumps(scoring))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["scoring.json"] = hashlib.sha256(
        (copy / "scoring.json").read_bytes()
    ).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(anomaly.BundleError) as refused:
        anomaly.load(copy)
    message = str(refused.value)
    assert message.startswith(f"{copy}: cannot bring bundle version 2 to 3 (OverflowError: ")
    assert "from its scoring.json and schema.json;" in message and "\n" not in message


def test_a_model_saved_before_extremes_were_compressed_keeps_saturating_when_recalibrated(
    tmp_path,
):
    """Its configuration says so too: retraining or recalibrating it writes a model that
    standardises as the parent did, and a bundle whose files agree."""
    data = FIXTURES / "bundle-v3.drift.csv"
    parent = anomaly.load(FIXTURES / "bundle-v3")
    assert parent.config.model.extremes == "clip"

    new = tmp_path / "recalibrated"
    calibrated = run("calibrate", "--model", FIXTURES / "bundle-v3", "--data", data, "--out", new)

    assert calibrated.exit_code == 0, calibrated.output
    assert json.loads((new / "preprocessing.json").read_text())["extremes"] == "clip"
    assert json.loads((new / "config.json").read_text())["model"]["extremes"] == "clip"
    assert anomaly.load(new).engine.standardizer.extremes == "clip"


def test_every_readable_version_has_a_migration_to_the_next_and_the_current_one_a_fixture():
    assert set(MIGRATIONS) == set(range(bundle.OLDEST_BUNDLE_VERSION, bundle.BUNDLE_VERSION))
    assert f"bundle-v{bundle.BUNDLE_VERSION}" in EXTREMES
