"""Model bundles: a directory of ``.keras`` networks and JSON, with a checksum manifest.

No pickle anywhere: networks load with ``safe_mode=True``, the latent prototypes are a plain
``.npy`` array loaded with ``allow_pickle=False``, everything else is JSON. ``manifest.json``
lists the SHA-256 of every file and is verified before anything is loaded, so a truncated,
corrupted or edited bundle is refused with the name of the file that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from anomaly.errors import BundleError

BUNDLE_VERSION = 2
NETWORKS = ("encoder", "generator", "critic")
JSON_PARTS = ("preprocessing", "scoring", "schema", "metadata", "health", "config")
LATENT_PROTOTYPES = "latent_prototypes.npy"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BundleContents:
    """What a bundle holds, as loaded objects; ``version`` identifies the bundle's content."""

    networks: dict[str, keras.Model]
    parts: dict[str, dict]
    latent_prototypes: np.ndarray
    version: str


def save_bundle(path: str | os.PathLike[str], contents: BundleContents) -> str:
    """Write the bundle (replacing one already at ``path``) and return its version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        for name, network in contents.networks.items():
            network.save(staging / f"{name}.keras")
        for name, part in contents.parts.items():
            (staging / f"{name}.json").write_text(json.dumps(part, indent=2, sort_keys=True))
        np.save(staging / LATENT_PROTOTYPES, contents.latent_prototypes, allow_pickle=False)
        checksums = {f.name: _sha256(f) for f in sorted(staging.iterdir())}
        manifest = {"bundle_version": BUNDLE_VERSION, "files": checksums}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return bundle_version_id(path)


def load_bundle(path: str | os.PathLike[str]) -> BundleContents:
    """Verify and load a bundle; every failure is a ``BundleError`` that says exactly why."""
    path = Path(path)
    verify_bundle(path)
    networks = {}
    for name in NETWORKS:
        try:
            networks[name] = keras.saving.load_model(
                path / f"{name}.keras", compile=False, safe_mode=True
            )
        except Exception as exc:  # Keras raises many types for a bad archive
            raise BundleError(
                f"{path / (name + '.keras')}: cannot be loaded as a Keras model: {exc}"
            ) from None
    parts = {name: _read_json(path / f"{name}.json") for name in JSON_PARTS}
    try:
        reference = np.load(path / LATENT_PROTOTYPES, allow_pickle=False)
    except ValueError as exc:
        raise BundleError(f"{path / LATENT_PROTOTYPES}: not a plain numeric array: {exc}") from None
    return BundleContents(networks, parts, reference, bundle_version_id(path))


def verify_bundle(path: Path) -> dict:
    """Check the manifest, the bundle version and every file's checksum."""
    if not path.is_dir():
        raise BundleError(f"model bundle not found: {path} is not a directory")
    manifest = _read_json(path / MANIFEST)
    version = manifest.get("bundle_version")
    if version != BUNDLE_VERSION:
        raise BundleError(
            f"{path}: unknown bundle version {version!r}; "
            f"this package reads version {BUNDLE_VERSION}"
        )
    expected = (
        {f"{n}.keras" for n in NETWORKS} | {f"{n}.json" for n in JSON_PARTS} | {LATENT_PROTOTYPES}
    )
    listed = manifest.get("files", {})
    missing_from_manifest = sorted(expected - set(listed))
    if missing_from_manifest:
        raise BundleError(f"{path / MANIFEST}: does not list {', '.join(missing_from_manifest)}")
    for name, checksum in sorted(listed.items()):
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: missing file {name}")
        if _sha256(file) != checksum:
            raise BundleError(
                f"{file}: checksum mismatch (the file changed after the bundle was written; "
                "retrain or restore the bundle)"
            )
    return manifest


def bundle_version_id(path: Path) -> str:
    """A short content id of the bundle: the first 12 hex digits of its manifest's SHA-256."""
    return hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()[:12]


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise BundleError(f"{file.parent}: missing file {file.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{file}: not valid JSON: {exc}") from None


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
