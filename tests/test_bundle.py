"""Model bundles: save and load give the same scores; no pickle; a missing, tampered, corrupt
or unknown bundle is refused with a message that says exactly what is wrong."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import anomaly
from anomaly import BundleError, SchemaError

pytestmark = pytest.mark.slow

NETWORK_FILES = {"encoder.keras", "generator.keras", "critic.keras"}
JSON_FILES = {
    "preprocessing.json",
    "scoring.json",
    "schema.json",
    "metadata.json",
    "health.json",
    "config.json",
}
CHECKSUM_HINT = (
    "checksum mismatch (the file changed after the bundle was written; "
    "retrain or restore the bundle)"
)


@pytest.fixture
def bundle(tabular_bundle, tmp_path) -> Path:
    """A private copy of the shared bundle, free to damage."""
    return Path(shutil.copytree(tabular_bundle, tmp_path / "model"))


@pytest.fixture(scope="module")
def probe(correlated_table):
    return correlated_table.labelled(500, 50, seed=7)[0]


def load_error(path: Path) -> str:
    with pytest.raises(BundleError) as caught:
        anomaly.load(path)
    return str(caught.value)


def rewrite_checksum(bundle: Path, name: str) -> None:
    """Record ``name``'s current checksum in the manifest, as if the bundle was written so."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_loaded_bundle_gives_identical_scores(tabular_detector, tabular_bundle, probe):
    loaded = anomaly.load(tabular_bundle)
    expected = tabular_detector.score(probe)
    got = loaded.score(probe)

    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(got.is_anomaly, expected.is_anomaly)
    for name, values in expected.components.items():
        np.testing.assert_array_equal(got.components[name], values)
    assert got.top_features == expected.top_features
    assert loaded.threshold == tabular_detector.threshold
    assert loaded.feature_names == tabular_detector.feature_names


def test_loaded_detector_reports_the_bundle_version_and_training_metadata(
    tabular_detector, tabular_bundle
):
    loaded = anomaly.load(tabular_bundle)
    manifest_hash = hashlib.sha256((tabular_bundle / "manifest.json").read_bytes()).hexdigest()

    assert loaded.version == tabular_detector.version == manifest_hash[:12]
    assert loaded.metadata["fit_records"] == tabular_detector.metadata["fit_records"]
    assert loaded.health["diversity_ratio"] == tabular_detector.health["diversity_ratio"]


def test_bundle_holds_keras_networks_json_parts_and_a_manifest_and_no_pickle(tabular_bundle):
    files = {path.name for path in tabular_bundle.iterdir()}

    assert files == NETWORK_FILES | JSON_FILES | {"latent_prototypes.npy", "manifest.json"}
    manifest = json.loads((tabular_bundle / "manifest.json").read_text())
    assert manifest["bundle_version"] == 2
    assert set(manifest["files"]) == files - {"manifest.json"}
    for name in NETWORK_FILES:
        with zipfile.ZipFile(tabular_bundle / name) as archive:
            assert set(archive.namelist()) == {"config.json", "metadata.json", "model.weights.h5"}
    for name in JSON_FILES:
        json.loads((tabular_bundle / name).read_text())
    reference = np.load(tabular_bundle / "latent_prototypes.npy", allow_pickle=False)
    assert reference.dtype == np.float32 and reference.ndim == 2


def test_missing_bundle_directory_is_refused(tmp_path):
    missing = tmp_path / "nowhere"

    assert load_error(missing) == f"model bundle not found: {missing} is not a directory"


def test_missing_file_is_refused_by_name(bundle):
    (bundle / "critic.keras").unlink()

    assert load_error(bundle) == f"{bundle}: missing file critic.keras"


def test_missing_manifest_is_refused_by_name(bundle):
    (bundle / "manifest.json").unlink()

    assert load_error(bundle) == f"{bundle}: missing file manifest.json"


def test_tampered_json_file_fails_its_checksum(bundle):
    scoring = json.loads((bundle / "scoring.json").read_text())
    scoring["threshold"] = 1e9
    (bundle / "scoring.json").write_text(json.dumps(scoring))

    assert load_error(bundle) == f"{bundle / 'scoring.json'}: {CHECKSUM_HINT}"


def test_corrupted_keras_file_fails_its_checksum(bundle):
    data = bytearray((bundle / "generator.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "generator.keras").write_bytes(bytes(data))

    assert load_error(bundle) == f"{bundle / 'generator.keras'}: {CHECKSUM_HINT}"


def test_unknown_bundle_version_is_refused(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["bundle_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    assert (
        load_error(bundle) == f"{bundle}: unknown bundle version 99; this package reads version 2"
    )


def test_manifest_that_is_not_json_is_refused(bundle):
    (bundle / "manifest.json").write_text('{"bundle_version": 2, "files": ')

    assert load_error(bundle).startswith(f"{bundle / 'manifest.json'}: not valid JSON: ")


def test_json_part_that_is_not_json_is_refused_even_with_a_matching_checksum(bundle):
    (bundle / "schema.json").write_text("{not json")
    rewrite_checksum(bundle, "schema.json")

    assert load_error(bundle).startswith(f"{bundle / 'schema.json'}: not valid JSON: ")


def test_keras_file_that_is_not_a_model_is_refused_even_with_a_matching_checksum(bundle):
    (bundle / "encoder.keras").write_bytes(b"not a zip archive")
    rewrite_checksum(bundle, "encoder.keras")

    message = load_error(bundle)

    assert message.startswith(f"{bundle / 'encoder.keras'}: cannot be loaded as a Keras model: ")


def test_manifest_that_does_not_list_a_part_is_refused(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["health.json"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    assert load_error(bundle) == f"{bundle / 'manifest.json'}: does not list health.json"


def test_wrong_feature_count_is_a_schema_error_naming_the_expected_shape(tabular_bundle, probe):
    detector = anomaly.load(tabular_bundle)

    with pytest.raises(SchemaError) as caught:
        detector.score(probe[:, :9])

    message = str(caught.value)
    assert "the model expects records of shape (10,)" in message
    assert "got records of shape (9,)" in message
    assert "f0, f1" in message


def test_saving_over_an_existing_bundle_replaces_it(tabular_detector, bundle, probe):
    (bundle / "stray.txt").write_text("left over")

    tabular_detector.save(bundle)

    assert not (bundle / "stray.txt").exists()
    np.testing.assert_array_equal(
        anomaly.load(bundle).score(probe).scores, tabular_detector.score(probe).scores
    )
