"""Model bundles: save and load give the same scores; no pickle; a missing, tampered, corrupt
or unknown bundle is refused with a message that says exactly what is wrong."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import anomaly
from anomaly import BundleError, SchemaError
from anomaly.bundle import BUNDLE_VERSION
from anomaly.drift import MAX_EDGES

pytestmark = pytest.mark.slow

NETWORK_FILES = {"encoder.keras", "generator.keras", "critic.keras"}
JSON_FILES = {
    "preprocessing.json",
    "scoring.json",
    "schema.json",
    "metadata.json",
    "health.json",
    "config.json",
    "drift.json",
}
FIXTURES = Path(__file__).parent / "fixtures"
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
    assert manifest["bundle_version"] == BUNDLE_VERSION
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

    assert load_error(bundle) == (
        f"{bundle}: bundle version 99 was written by a later release; this release reads "
        "bundle versions 2 to 5; upgrade the package"
    )


def test_manifest_that_is_not_json_is_refused(bundle):
    (bundle / "manifest.json").write_text('{"bundle_version": 3, "files": ')

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


def test_a_truncated_network_file_is_named_as_such_in_one_line(bundle):
    # Keras said "File not found" of a file that was there, only cut short.
    data = (bundle / "encoder.keras").read_bytes()
    (bundle / "encoder.keras").write_bytes(data[: len(data) // 2])
    rewrite_checksum(bundle, "encoder.keras")

    message = load_error(bundle)

    assert "it is not a .keras archive (a zip file); truncated" in message
    assert "\n" not in message


def test_a_network_with_a_lambda_layer_is_refused_in_one_line_naming_it(bundle):
    """Keras' refusal (safe_mode) ran over 9 lines of layer configuration; the layer is
    refused before Keras reads it, as no bundle's network has one."""
    keras = pytest.importorskip("keras")
    inputs = keras.Input((8,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    keras.Model(inputs, outputs, name="encoder").save(bundle / "encoder.keras")
    rewrite_checksum(bundle, "encoder.keras")

    message = load_error(bundle)

    assert message.startswith(f"{bundle / 'encoder.keras'}: not a network of a bundle: ")
    assert "layer 'lambda' is a layer of a kind no network of a bundle has (Lambda)" in message
    assert "\n" not in message


def _archive_entries(file: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(file) as archive:
        return {entry.filename: archive.read(entry) for entry in archive.infolist()}


def _rewrite_archive(bundle: Path, name: str, entries: dict[str, bytes], deflated=()) -> None:
    """``bundle``'s network archive ``name`` made of ``entries`` (those named in
    ``deflated`` compressed), its checksum made to match."""
    with zipfile.ZipFile(bundle / name, "w") as archive:
        for entry, data in entries.items():
            packing = zipfile.ZIP_DEFLATED if entry in deflated else zipfile.ZIP_STORED
            archive.writestr(entry, data, packing)
    rewrite_checksum(bundle, name)


def test_a_network_archive_that_unpacks_to_gigabytes_is_refused_before_it_is_unpacked(bundle):
    """A tester's bundle: encoder.keras with its config.json padded by 1.5 GB of deflated
    blanks (1.8 MB on disk) took 3.9 GB of memory to load, past a pod's limit."""
    file = bundle / "encoder.keras"
    entries = _archive_entries(file)
    entries["config.json"] += b" " * (64 << 20)  # 64 MiB in about 64 KB
    _rewrite_archive(bundle, file.name, entries, deflated={"config.json"})

    message = load_error(bundle)

    assert message.startswith(f"{file}: unpacks to 67,")
    assert "refused, as a decompression bomb" in message


def test_weights_that_unpack_to_far_more_than_their_archive_are_refused_before_loading(bundle):
    """A reviewer's archive: 0.7 MB whose weights file held 400 MB of gzip-compressed zeros
    in HDF5, which the archive's own sizes do not show; loading took 1.5 GB."""
    h5py = pytest.importorskip("h5py")
    file = bundle / "encoder.keras"
    entries = _archive_entries(file)
    weights = io.BytesIO(entries["model.weights.h5"])
    with h5py.File(weights, "a") as h5:
        h5.create_dataset("padding", shape=(16_000_000,), dtype="f4", compression="gzip")
    entries["model.weights.h5"] = weights.getvalue()
    _rewrite_archive(bundle, file.name, entries)

    message = load_error(bundle)

    assert message.startswith(f"{file}: unpacks to 64,")
    assert "refused, as a decompression bomb" in message


def _widened(network: dict, units: int) -> dict:
    """``network``'s configuration with every hidden dense layer ``units`` wide (each layer's
    own record of the shape it was built for left out, as Keras allows)."""
    for layer in network["config"]["layers"]:
        layer.pop("build_config", None)
        if layer["class_name"] == "Dense" and layer["name"].startswith("hidden"):
            layer["config"]["units"] = units
    return network


def test_layers_declared_far_larger_than_the_weights_file_are_refused_before_keras_builds_them(
    bundle,
):
    """Keras allocates every layer a network's configuration declares before it reads the
    weights: an archive of a few kilobytes declaring two layers of 60,000 would take 14 GB
    (this test declares 4,096, which Keras could still build, to show the path on any
    machine)."""
    file = bundle / "encoder.keras"
    entries = _archive_entries(file)
    network = _widened(json.loads(entries["config.json"]), 4096)
    entries["config.json"] = json.dumps(network).encode()
    _rewrite_archive(bundle, file.name, entries)

    message = load_error(bundle)

    assert message.startswith(f"{file}: its layers declare 16,")
    assert "weights but its weights file holds " in message


def test_a_network_of_a_kind_no_bundle_has_is_refused_before_keras_builds_it(bundle):
    file = bundle / "encoder.keras"
    entries = _archive_entries(file)
    network = json.loads(entries["config.json"])
    network["config"]["layers"][1]["class_name"] = "Embedding"
    entries["config.json"] = json.dumps(network).encode()
    _rewrite_archive(bundle, file.name, entries)

    message = load_error(bundle)

    assert message.startswith(f"{file}: not a network of a bundle: layer ")
    assert "is a layer of a kind no network of a bundle has (Embedding)" in message


def _first_dense(network: dict) -> dict:
    return next(layer for layer in network["config"]["layers"] if layer["class_name"] == "Dense")


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (
            lambda network: _first_dense(network)["build_config"].update(input_shape=[None, 10**6]),
            "is built for [None, 1000000], not what it is called on",
        ),
        (
            lambda network: _first_dense(network).update(
                build_config={"shapes_dict": {"input_shape": [None, 10**6]}}
            ),
            "is built from ['shapes_dict']",
        ),
        (lambda network: _first_dense(network)["config"].update(lora_rank=10**6), "sets lora_rank"),
        (lambda network: _first_dense(network)["config"].update(dtype="float64"), "is not float32"),
        (
            lambda network: network["config"]["layers"][0]["config"].update(shape=[10**6]),
            "input 'x' is not a batch of dense records of a fixed shape",
        ),
    ],
)
def test_settings_by_which_keras_would_build_a_larger_layer_than_its_shapes_are_refused(
    bundle, edit, said
):
    """A reviewer's archives of a few kilobytes that passed the count of weights, each making
    Keras allocate 4,000 times their size: a layer's own build shape, a low-rank adaptation,
    another dtype, an input shape under a legacy key."""
    file = bundle / "encoder.keras"
    entries = _archive_entries(file)
    network = json.loads(entries["config.json"])
    edit(network)
    entries["config.json"] = json.dumps(network).encode()
    _rewrite_archive(bundle, file.name, entries)

    message = load_error(bundle)

    assert message.startswith(f"{file}: not a network of a bundle: ")
    assert said in message


def test_a_network_archive_whose_deflated_entry_is_corrupt_is_a_bundle_error(bundle):
    """zlib's own error escaped the archive's check (a reviewer's crafted archive)."""
    file = bundle / "encoder.keras"
    _rewrite_archive(bundle, file.name, _archive_entries(file), deflated={"config.json"})
    with zipfile.ZipFile(file) as archive:
        entry = archive.getinfo("config.json")
    data = bytearray(file.read_bytes())
    start = entry.header_offset + 30 + len(entry.filename.encode()) + len(entry.extra)
    data[start : start + 8] = b"\xff" * 8
    file.write_bytes(bytes(data))
    rewrite_checksum(bundle, file.name)

    assert load_error(bundle).startswith(f"{file}: cannot read the archive: ")


def test_a_network_archive_without_its_weights_file_is_refused_before_keras_builds_it(bundle):
    file = bundle / "encoder.keras"
    entries = _archive_entries(file)
    del entries["model.weights.h5"]
    _rewrite_archive(bundle, file.name, entries)

    assert load_error(bundle).startswith(
        f"{file}: not a Keras network archive: it holds no model.weights.h5"
    )


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
    """Every file the old manifest lists goes (files it does not list are the user's, and
    saving is refused: tests/test_model_paths.py)."""
    (bundle / "stray.txt").write_text("left over")
    list_in_manifest(bundle, "stray.txt")

    tabular_detector.save(bundle)

    assert not (bundle / "stray.txt").exists()
    np.testing.assert_array_equal(
        anomaly.load(bundle).score(probe).scores, tabular_detector.score(probe).scores
    )


# -- a bundle is untrusted input --------------------------------------------------------


def list_in_manifest(bundle: Path, name: str, checksum: str = "0" * 64) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = checksum
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def rewrite_json(bundle: Path, name: str, change) -> None:
    """Change a JSON part and record its new checksum, as a hostile bundle would."""
    values = json.loads((bundle / name).read_text())
    change(values)
    (bundle / name).write_text(json.dumps(values))
    rewrite_checksum(bundle, name)


@pytest.fixture
def current(tmp_path) -> Path:
    """A private copy of the committed bundle of the current version (no training needed),
    free to damage."""
    return Path(shutil.copytree(FIXTURES / "bundle-v5", tmp_path / "current"))


@pytest.fixture
def outside(tmp_path) -> Path:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not part of any bundle")
    return secret


def sha256_of(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def test_manifest_naming_an_absolute_path_is_refused(bundle, outside):
    list_in_manifest(bundle, str(outside), sha256_of(outside))

    message = load_error(bundle)

    assert message.startswith(f"{bundle / 'manifest.json'}: names {str(outside)!r}, which is not")
    assert "refused before reading anything" in message


def test_manifest_naming_a_parent_path_is_refused(bundle, outside):
    list_in_manifest(bundle, "../outside/secret.txt", sha256_of(outside))

    assert load_error(bundle).startswith(
        f"{bundle / 'manifest.json'}: names '../outside/secret.txt', which is not a file"
    )


def test_symlink_out_of_the_bundle_is_refused_before_any_file_is_read(bundle, outside):
    # A changed critic.keras comes first in name order: its checksum is never computed,
    # because every listed name is checked before anything is read.
    (bundle / "critic.keras").write_bytes(b"changed")
    (bundle / "zz-link").symlink_to(outside)
    list_in_manifest(bundle, "zz-link", sha256_of(outside))

    assert load_error(bundle) == (
        f"{bundle / 'zz-link'}: is a symbolic link to {outside}, outside the bundle; refused "
        "before reading anything (copy the file into the bundle instead)"
    )


def test_required_part_that_is_a_symlink_out_of_the_bundle_is_refused(bundle, tmp_path):
    copy = tmp_path / "elsewhere-schema.json"
    shutil.move(bundle / "schema.json", copy)
    (bundle / "schema.json").symlink_to(copy)  # same content: the checksum would match

    assert load_error(bundle).startswith(f"{bundle / 'schema.json'}: is a symbolic link to ")


def test_symlink_within_the_bundle_still_loads(bundle, probe, tabular_detector):
    # As Kubernetes mounts a ConfigMap: each file a link into a hidden folder beside it.
    (bundle / "..data").mkdir()
    shutil.move(bundle / "scoring.json", bundle / "..data" / "scoring.json")
    (bundle / "scoring.json").symlink_to(Path("..data") / "scoring.json")

    np.testing.assert_array_equal(
        anomaly.load(bundle).score(probe).scores, tabular_detector.score(probe).scores
    )


def test_manifest_files_as_a_list_is_refused_naming_the_key(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = sorted(manifest["files"])
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    assert load_error(bundle).startswith(
        f"{bundle / 'manifest.json'}: 'files' is a JSON array; expected an object of file name"
    )


def test_manifest_that_is_not_an_object_is_refused(bundle):
    (bundle / "manifest.json").write_text("[2]")

    assert load_error(bundle).startswith(f"{bundle / 'manifest.json'}: holds a JSON array")


@pytest.mark.parametrize(
    ("name", "change", "problem"),
    [
        (
            "schema.json",
            lambda v: v.update(feature_names=3),
            "feature_names: input should be a valid list, got a JSON number",
        ),
        (
            "schema.json",
            lambda v: v.update(feature_names=["f0", 1]),
            "feature_names.1: input should be a valid string, got a JSON number",
        ),
        (
            "scoring.json",
            lambda v: v.update(threshold="0.5"),
            "threshold: input should be a valid number, got a JSON string",
        ),
        ("scoring.json", lambda v: v.pop("weights"), "missing key 'weights'"),
        ("scoring.json", lambda v: v.update(backdoor=1), "unknown key 'backdoor'"),
        (
            "preprocessing.json",
            lambda v: v.update(mean={"f0": 1}),
            "mean: input should be a valid list, got a JSON object",
        ),
        (
            "config.json",
            lambda v: v["training"].update(steps="many"),
            "training.steps: must be a number, not text (in quotes)",
        ),
        (
            "health.json",
            lambda v: v.update(warnings="none"),
            "warnings: input should be a valid list, got a JSON string",
        ),
        (
            "health.json",
            lambda v: v.update(warnings=[{"text": "x"}]),
            "warnings.0: input should be a valid string, got a JSON object",
        ),
    ],
)
def test_wrongly_typed_json_part_is_a_bundle_error_naming_file_and_key(
    bundle, name, change, problem
):
    rewrite_json(bundle, name, change)

    message = load_error(bundle)

    assert message.startswith(f"{bundle / name}: ")
    assert problem in message
    assert message.endswith("retrain or restore it")


def test_a_health_report_without_warnings_reads_as_none(current):
    """``anomaly calibrate`` read the parent's warnings after writing the new model, and a
    hand-made ``health.json`` of ``{}`` stopped it there with a KeyError."""
    rewrite_json(current, "health.json", dict.clear)

    assert anomaly.load(current).health == {"warnings": []}


@pytest.mark.parametrize(
    ("key", "change"),
    [
        ("model.window", lambda config: config["model"].update(window=8)),
        ("data.entity_column", lambda config: config["data"].update(entity_column="host")),
        ("model.extremes", lambda config: config["model"].update(extremes="clip")),
        ("model.clip_value", lambda config: config["model"].update(clip_value=5.0)),
    ],
)
def test_a_configuration_that_disagrees_with_the_schema_or_preprocessing_is_refused(
    current, key, change
):
    """Scoring reads schema.json and preprocessing.json, retraining config.json: a bundle
    where they differ would retrain into another model than the one it serves."""
    rewrite_json(current, "config.json", change)

    assert load_error(current).startswith(f"{current / 'config.json'}: {key} is ")


def test_networks_with_weights_that_are_not_finite_are_refused_at_load(bundle, tmp_path):
    """A run that diverged: the bundle loaded, published, and scored no row with exit 0
    (only the service checked a record's score)."""
    damaged = anomaly.load(bundle)
    generator = damaged.engine.networks["generator"]
    weights = generator.get_weights()
    weights[0] = np.full_like(weights[0], np.nan)
    generator.set_weights(weights)

    damaged.save(tmp_path / "diverged")

    assert load_error(tmp_path / "diverged").startswith(
        f"{tmp_path / 'diverged' / 'generator.keras'}: holds weights that are not finite"
    )


def test_reference_scores_out_of_order_are_refused(current):
    # Reversed, every percentile read 0 or 100.
    rewrite_json(current, "scoring.json", lambda scoring: scoring["reference_scores"].reverse())

    assert "reference_scores must be in ascending order" in load_error(current)


def test_json_part_that_is_not_an_object_is_refused(bundle):
    (bundle / "health.json").write_text('"healthy"')
    rewrite_checksum(bundle, "health.json")

    assert load_error(bundle).startswith(
        f"{bundle / 'health.json'}: holds a JSON string, not an object"
    )


def test_parts_that_disagree_on_the_feature_count_are_refused(bundle):
    rewrite_json(bundle, "preprocessing.json", lambda v: v.update(mean=v["mean"][:-1]))

    assert load_error(bundle).startswith(
        f"{bundle / 'preprocessing.json'}: mean has 9 values for 10 features"
    )


def test_latent_prototypes_of_the_wrong_shape_are_refused(bundle):
    np.save(bundle / "latent_prototypes.npy", np.zeros(5, np.float32))
    rewrite_checksum(bundle, "latent_prototypes.npy")

    assert load_error(bundle).startswith(
        f"{bundle / 'latent_prototypes.npy'}: holds a 1-D float32 array of shape (5,)"
    )


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda s: s["tail"].update(peaks=0), "tail n ="),
        (lambda s: s["tail"].update(scale=-1.0), "scale must be > 0"),
        (lambda s: s["tail"].update(largest=[]), "largest must hold"),
        (lambda s: s["tail"].update(shape=float("nan")), "NaN or infinite"),
        (lambda s: s.update(threshold=s["threshold"] / 2), "not the tail's threshold"),
        (lambda s: s["reference_components"]["latent"].__setitem__(3, float("nan")), "latent"),
        (lambda s: s["reference_components"].pop("critic"), "lacks critic"),
        (lambda s: s["tail"].update(bogus=1), "scoring.tail"),
    ],
)
def test_a_damaged_calibration_is_refused_at_load(bundle, damage, named):
    """A bundle's calibration (the tail the threshold comes from, the reference values the
    alarm stage starts from) is checked at load, not found broken while scoring."""
    rewrite_json(bundle, "scoring.json", damage)
    assert named in load_error(bundle)


@pytest.mark.parametrize(
    ("name", "damage", "named"),
    [
        ("scoring.json", lambda s: s.update(latent_neighbours=0), "latent_neighbours: Input"),
        ("scoring.json", lambda s: s.update(weights={}), "at least one component weight"),
        ("scoring.json", lambda s: s["weights"].update(latent=float("inf")), "must be finite"),
        ("scoring.json", lambda s: s.update(refine_steps=10**9), "refine_steps: Input should"),
        ("scoring.json", lambda s: s.update(top_features=-1), "top_features: Input should"),
        ("scoring.json", lambda s: s["scale"].update(latent=0.0), "scale must hold values > 0"),
        ("scoring.json", lambda s: s["location"].update(critic=float("nan")), "location must"),
        ("preprocessing.json", lambda p: p.update(scale=[0.0] * 4), "scale must hold values"),
        ("preprocessing.json", lambda p: p.update(mean=[float("nan")] * 4), "must be finite"),
        ("preprocessing.json", lambda p: p.update(clip_value=0.0), "clip_value must be > 0"),
        ("preprocessing.json", lambda p: p.update(extremes="cube"), "extremes: input should"),
    ],
)
def test_values_that_would_break_every_score_are_refused_at_load(current, name, damage, named):
    """An edited bundle whose checksums were recomputed must not load and then score every
    record NaN (never flagged), 0 or flagged, or hang: the bounds training enforces hold at
    load, with one line naming the file."""
    rewrite_json(current, name, damage)
    error = load_error(current)
    assert named in error and name in error and "\n" not in error


def test_non_finite_latent_prototypes_are_refused_at_load(current):
    prototypes = np.load(current / "latent_prototypes.npy")
    prototypes[5, 0] = np.nan
    np.save(current / "latent_prototypes.npy", prototypes)
    rewrite_checksum(current, "latent_prototypes.npy")
    assert "latent_prototypes.npy: prototypes must be finite" in load_error(current)


@pytest.mark.parametrize(
    ("source", "replaced"),
    [("encoder.keras", "generator.keras"), ("critic.keras", "generator.keras")],
)
def test_a_network_file_swapped_for_another_network_is_refused_at_load(current, source, replaced):
    """A network replaced by another loads as Keras; an encoder and a generator of d -> d
    (here d = 4) even pass every shape check, and would score without an error."""
    shutil.copy(current / source, current / replaced)
    rewrite_checksum(current, replaced)
    wanted, found = replaced.removesuffix(".keras"), source.removesuffix(".keras")
    assert f"{replaced}: holds the network named '{found}', not the {wanted}" in load_error(current)


def test_a_network_that_does_not_give_what_scoring_needs_is_refused_at_load(current):
    """Would fail inside the first compiled pass: inputs and outputs are checked against what
    scoring feeds and reads."""
    import keras

    record = keras.Input((4,))
    keras.Model(record, keras.layers.Dense(4)(record), name="critic").save(current / "critic.keras")
    rewrite_checksum(current, "critic.keras")
    assert "critic.keras: gives [(4,)], not a verdict per record" in load_error(current)


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda d: d["feature_edges"][2].reverse(), "feature 'f2': edges must be finite and"),
        (lambda d: d["feature_edges"][0].__setitem__(0, float("nan")), "'f0': edges must be"),
        (lambda d: d["feature_shares"][1].pop(), "'f1': 9 shares for 10 bins"),
        (lambda d: d["feature_shares"][1].__setitem__(0, 0.5), "'f1': shares sum to 1.4"),
        (lambda d: d["score_shares"].__setitem__(0, -0.1), "score: shares must be finite and non"),
        (lambda d: d["feature_names"].reverse(), "not the schema's feature names"),
        (lambda d: d["feature_edges"].pop(), "one list per feature (10)"),
        (lambda d: d.update(feature_shares=None), "both be null or both lists"),
        (lambda d: d.pop("score_edges"), "missing key 'score_edges'"),
        (lambda d: d.update(feature_edges="wide"), "feature_edges: input should be a valid list"),
    ],
)
def test_a_damaged_drift_summary_is_refused_at_load_naming_the_file(bundle, damage, named):
    rewrite_json(bundle, "drift.json", damage)
    message = load_error(bundle)
    assert message.startswith(f"{bundle / 'drift.json'}: ")
    assert named in message


def test_a_drift_summary_with_more_edges_than_a_fit_makes_is_refused_at_load(current):
    """Measuring costs time per edge on every batch: a hostile drift.json with millions of
    edges would stall scoring, so more than a fit ever makes is refused, naming the feature."""

    def widen(summary):
        summary["feature_edges"][1] = [float(e) for e in range(MAX_EDGES + 1)]
        summary["feature_shares"][1] = [1.0] + [0.0] * (MAX_EDGES + 1)

    rewrite_json(current, "drift.json", widen)
    assert load_error(current).startswith(
        f"{current / 'drift.json'}: feature 'b': {MAX_EDGES + 1} edges, more than the {MAX_EDGES} "
    )


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        (
            "manifest.json",
            '{"bundle_version": ' + "9" * 5000 + ', "files": {}}',
            "holds an integer of more than 4300 digits, which no bundle does",
        ),
        ("manifest.json", "[" * 100_000 + "]" * 100_000, "holds JSON nested too deeply to read"),
        ("health.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "holds JSON nested too"),
    ],
)
def test_json_that_python_cannot_parse_is_a_one_line_bundle_error_naming_the_file(
    current, name, content, problem
):
    (current / name).write_text(content)
    if name != "manifest.json":
        rewrite_checksum(current, name)
    message = load_error(current)
    assert message.startswith(f"{current / name}: {problem}")
    assert "\n" not in message and len(message) < 300


def test_a_huge_bundle_version_is_refused_in_a_short_line(current):
    manifest = json.loads((current / "manifest.json").read_text())
    manifest["bundle_version"] = 10**4000  # parses (under 4300 digits): shown by its length
    (current / "manifest.json").write_text(json.dumps(manifest))
    message = load_error(current)
    assert message.startswith(f"{current}: bundle version of 4001 digits was written by a later")
    assert len(message) < 300


@pytest.mark.parametrize("name", ["loop", "schema.json"])
def test_a_symlink_loop_in_the_bundle_is_refused_in_one_line(current, name):
    (current / name).unlink(missing_ok=True)
    (current / name).symlink_to(name)
    if name == "loop":
        list_in_manifest(current, name)
    assert load_error(current) == (
        f"{current / name}: is a symbolic link that leads round in a loop (or cannot be followed); "
        "refused before reading anything"
    )


def test_the_cli_refuses_an_unparsable_manifest_in_one_line_with_exit_2(current):
    from click.testing import CliRunner

    from pipelines.cli import cli

    (current / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    result = CliRunner().invoke(cli, ["info", str(current)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {current / 'manifest.json'}: holds JSON nested too")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("target_fpr", float("nan"), "target_fpr is nan; it must lie between 0 and 1"),
        ("target_fpr", 5.0, "target_fpr is 5.0; it must lie between 0 and 1"),
        ("target_fpr", -1.0, "target_fpr is -1.0; it must lie between 0 and 1"),
        ("threshold", 1e308, "threshold is 1e+308, not a finite float32 (scores are float32)"),
        ("threshold", float("nan"), "threshold is nan, not a finite float32 (scores are float32)"),
    ],
)
def test_a_target_rate_or_threshold_the_engine_cannot_use_is_refused_naming_scoring_json(
    current, key, value, problem
):
    """Without a tail to check them against (as in a bundle saved before tails), the target
    rate and the threshold are still checked: the rate is exported and compared against,
    and a threshold beyond float32 becomes inf, which flags nothing."""
    rewrite_json(current, "scoring.json", lambda scoring: scoring.update({key: value, "tail": {}}))
    assert load_error(current).startswith(f"{current / 'scoring.json'}: {problem}; ")


def test_every_setting_training_accepts_saves_a_bundle_that_loads(tmp_path):
    """The load checks refuse only what training cannot write: more neighbours than
    prototypes (scoring uses them all) and no clipping (clip_value = inf) load."""
    config = anomaly.Config().updated(
        model={"clip_value": float("inf"), "hidden_units": [8]},
        training={"steps": 5},
        scoring={"latent_prototypes": 16, "latent_neighbours": 20},
    )
    rows = np.random.default_rng(0).normal(size=(200, 3))
    detector = anomaly.train(rows, config)
    loaded = anomaly.load(detector.save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.score(rows[:20]).scores, detector.score(rows[:20]).scores)
