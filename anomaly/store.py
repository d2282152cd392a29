"""A model store: numbered bundle versions in one directory, as TensorFlow Serving lays them out.

``STORE/1/``, ``STORE/2/``, ... are bundles (``anomaly.bundle``); the highest number is the
latest. ``publish`` adds a bundle as the next version so that a reader never sees half of
one: the bundle is loaded and verified first (a bundle that cannot be served is refused
before it reaches the store), copied into a hidden staging directory inside the store,
verified again there, then renamed to its number in one step. A rename onto a number that
another publisher took in the meantime fails, and the next number is tried. Anything else
in the store (staging left by a crash, other files) is not a version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from anomaly import bundle
from anomaly.errors import BundleError

#: Prefix of the staging directories inside a store (never a version: not a number).
_STAGING = ".publishing-"


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a model store: a directory holding none of a bundle's files (a
    bundle that lost its manifest is still a bundle, and is refused as one)."""
    path = Path(path)
    parts = [
        bundle.MANIFEST,
        bundle.LATENT_PROTOTYPES,
        *(f"{name}.keras" for name in bundle.NETWORKS),
        *(f"{name}.json" for name in bundle.JSON_PARTS),
    ]
    return path.is_dir() and not any((path / name).exists() for name in parts)


def versions(store: str | os.PathLike[str]) -> list[int]:
    """The store's version numbers, ascending."""
    store = Path(store)
    found = []
    for entry in store.iterdir():
        if entry.is_dir() and entry.name.isdigit() and entry.name == str(int(entry.name)):
            found.append(int(entry.name))
    return sorted(n for n in found if n > 0)


def version_path(store: str | os.PathLike[str], version: int | None = None) -> Path:
    """The bundle of ``version`` in ``store`` (None: the latest); a ``BundleError`` when the
    store has no such version."""
    store = Path(store)
    numbers = versions(store)
    if not numbers:
        raise BundleError(f"{store}: a model store with no version yet (publish one first)")
    if version is None:
        return store / str(numbers[-1])
    if version not in numbers:
        raise BundleError(
            f"{store}: has no version {version}; it holds {', '.join(map(str, numbers))}"
        )
    return store / str(version)


def resolve(path: str | os.PathLike[str], version: int | None = None) -> Path:
    """A bundle given as itself or as a store (its ``version``, or its latest)."""
    path = Path(path)
    if is_store(path):
        return version_path(path, version)
    if version is not None:
        raise BundleError(f"{path}: is a bundle, not a model store, so it has no version {version}")
    return path


def publish(model: str | os.PathLike[str], store: str | os.PathLike[str]) -> int:
    """Copy bundle ``model`` into ``store`` (made if missing) as its next version; return the
    version's number."""
    from anomaly.detector import load  # the model must load as a server would load it

    model, store = Path(model), Path(store)
    load(model)
    if store.exists() and not is_store(store):
        raise BundleError(f"{store}: is a bundle, not a model store")
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=store))
    try:
        copy = staging / "bundle"
        shutil.copytree(model, copy, symlinks=False)
        bundle.verify_bundle(copy)
        number = (versions(store) or [0])[-1] + 1
        while True:
            try:
                copy.rename(store / str(number))
                return number
            except OSError:
                if not (store / str(number)).exists():
                    raise
                number += 1  # another publisher took it
    finally:
        shutil.rmtree(staging, ignore_errors=True)
