"""A model store: numbered bundle versions in one directory, as TensorFlow Serving lays them out.

``STORE/1/``, ``STORE/2/``, ... are bundles (``anomaly.bundle``); the highest number is the
latest. ``publish`` adds a bundle as the next version so that a reader never sees half of
one: the bundle is loaded and verified first (a bundle that cannot be served is refused
before it reaches the store), its manifest and the files it lists (nothing else) are copied
into a hidden staging directory inside the store, verified again there, then renamed to its
number in one step. A rename onto a number that another publisher took in the meantime
fails, and the next number is tried. Anything else in the store (staging left by a crash,
other files, names that are not plain ASCII numbers) is not a version; staging untouched for
a day is removed by the next publish.

Published versions are never changed: saving a model (``Detector.save``) over a store or
one of its versions is refused (``check_save_target``); save elsewhere and publish.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from anomaly import bundle
from anomaly.errors import BundleError
from anomaly.io import cannot_write

#: Prefix of the staging directories inside a store (never a version: not a number).
_STAGING = ".publishing-"
#: Age after which a staging directory is a killed publisher's leftover (a publish takes
#: seconds to minutes), removed by the next publish.
ABANDONED_STAGING_S = 24 * 3600
#: The name of a version: a positive number in ASCII digits, without leading zeros.
_VERSION_NAME = re.compile(r"[1-9][0-9]*")
#: The highest number the store ever gave, so that a version removed (a rollback) never has
#: its number given again to another model: results name the version that scored them.
_LAST_NUMBER = ".last-version"
#: The file publishers lock to take their numbers one at a time.
_NUMBERING_LOCK = ".publish.lock"


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
    """The store's version numbers, ascending: its directories named by a positive decimal
    number in ASCII digits without leading zeros; any other entry is not a version."""
    return sorted(int(entry.name) for entry in Path(store).iterdir() if _is_version(entry))


def _is_version(entry: Path) -> bool:
    # Not str.isdigit: it holds for "²" and other Unicode digits that int() refuses.
    return _VERSION_NAME.fullmatch(entry.name) is not None and entry.is_dir()


def version_path(store: str | os.PathLike[str], version: int | None = None) -> Path:
    """The bundle of ``version`` in ``store`` (None: the latest); a ``BundleError`` when the
    store has no such version."""
    store = Path(store)
    numbers = versions(store)
    if not numbers:
        inside = sorted(manifest.parent for manifest in store.glob(f"*/{bundle.MANIFEST}"))
        hint = f", such as {inside[0]}" if inside else ""
        raise BundleError(
            f"{store}: holds no model bundle (no {bundle.MANIFEST}) and no version yet of a "
            f"model store (1/, 2/, ...): give a bundle's folder{hint}, or publish a bundle "
            "into this store first"
        )
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
    version's number. Only ``manifest.json`` and the files it lists are copied, each a regular
    file inside the bundle (a named pipe, a device or a link leading out is refused, naming
    it), so nothing else lying in the bundle's directory reaches the store. ``model`` may not
    be a store (publish one of its versions), nor hold ``store``."""
    from anomaly.detector import load  # the model must load as a server would load it

    model, store = Path(model), Path(store)
    if is_store(model):
        numbers = versions(model)
        if numbers:
            raise BundleError(
                f"{model}: is a model store, not a bundle: publish one of its versions, e.g. "
                f"{model / str(numbers[-1])}"
            )
        raise BundleError(
            f"{model}: is not a model bundle (it holds none of a bundle's files, such as "
            f"{bundle.MANIFEST})"
        )
    candidate = load(model)
    if store.exists() and not is_store(store):
        raise BundleError(f"{store}: is a bundle, not a model store")
    _refuse_another_stream(model, candidate, store)
    if _real(store).is_relative_to(_real(model)):
        raise BundleError(
            f"{store}: is inside the bundle {model}; a model store must lie outside the bundles "
            "published into it"
        )
    try:
        return _add_version(model, store)
    except OSError as exc:  # a full disk, a file where the store's folder should be
        raise cannot_write(store, exc) from None


def _refuse_another_stream(model: Path, candidate, store: Path) -> None:
    """A ``BundleError`` when ``candidate`` cannot score the records that the versions of
    ``store`` score: a store serves one stream, the service refuses such a version, and an
    instance started later would serve it beside the others (its records' results then dead
    letters)."""
    difference = stream_difference(store, candidate.schema)
    if difference is not None:
        raise BundleError(
            f"{model}: cannot score the records of the versions in {store}: {difference}. A store "
            "serves one stream, whose service refuses such a version; publish it into a new "
            "store and point the service there"
        )


def stream_difference(
    store: str | os.PathLike[str], schema, before: int | None = None
) -> str | None:
    """Why a model of ``schema`` cannot score the store's stream: the records its oldest
    readable version scores (of those numbered below ``before``, as when it was published;
    ``Schema.stream_difference``), or None where it can, or no version can be read. The
    oldest, not any: a version put there by hand for other records must not become a
    second stream that later versions may join, which replicas already serving refuse."""
    from anomaly.detector import Schema

    store = Path(store)
    for number in versions(store) if store.is_dir() else []:
        if before is not None and number >= before:
            break
        try:
            recorded = json.loads((store / str(number) / "schema.json").read_text())
            stream = Schema(list(recorded["feature_names"]), recorded.get("window"))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged version: the service refuses that one itself
        difference = schema.stream_difference(stream)
        return None if difference is None else f"{difference} (version {number})"
    return None


def _add_version(model: Path, store: Path) -> int:
    """Copy verified bundle ``model`` into ``store`` as its next version; its number."""
    store.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(store)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=store))
    try:
        copy = staging / "bundle"
        _copy_listed_files(model, copy)
        bundle.verify_bundle(copy)
        with _numbering(store):
            number = max([*versions(store), _last_number(store)]) + 1
            # Marked before the version appears: a publisher killed in between leaves a
            # number unused, never one given twice.
            marked = staging / _LAST_NUMBER
            marked.write_text(f"{number}\n")
            os.replace(marked, store / _LAST_NUMBER)
            copy.rename(store / str(number))
        return number
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _numbering(store: Path) -> Iterator[None]:
    """Publishers of one store take their numbers one at a time (an exclusive lock on the
    store's ``.publish.lock``): two that read ``.last-version`` together gave one number
    twice once a version was removed. Where the system or the file system has no such
    locks (Windows; some network file systems), publishers go on without, as before."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    with open(store / _NUMBERING_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # ENOLCK, EOPNOTSUPP: a file system without locks
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _last_number(store: Path) -> int:
    """The highest version number ``store`` gave (0 for none, or a store of an earlier
    release, whose numbers are its versions')."""
    marked = store / _LAST_NUMBER
    try:
        text = marked.read_text()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise cannot_write(store, exc) from None
    try:
        return int(text.strip())
    except ValueError:
        raise BundleError(
            f"{marked}: is damaged (not a version number); write in it the highest version "
            "number the store ever gave, so that none is given again"
        ) from None


def _remove_abandoned_staging(store: Path) -> None:
    """A publisher killed mid-copy leaves its staging directory (as large as a bundle);
    readers ignore it, and the next publish removes those not touched for a day."""
    cutoff = time.time() - ABANDONED_STAGING_S
    for entry in store.glob(_STAGING + "*"):
        try:
            if entry.is_dir() and not entry.is_symlink() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:  # gone meanwhile, or not ours to read: leave it
            continue


def check_save_target(path: str | os.PathLike[str]) -> None:
    """A ``BundleError`` when saving a bundle to ``path`` (which replaces what is there) would
    destroy what a store holds or what is not a bundle: ``path`` is a model store, a version
    of one, a non-empty directory that is not a bundle, or a bundle's directory that also
    holds files its manifest does not list. A new path, an empty directory or a bundle
    (replaced) is fine. A folder is taken for a bundle by its manifest only: a
    project folder holds a ``config.json`` or ``schema.json`` of its own."""
    path = Path(path)
    if path.is_symlink():  # the folder replaced would be the link's (a store's version?)
        raise BundleError(
            f"{path}: is a symbolic link (to {os.readlink(path)}); saving a model replaces a "
            "directory: give a new directory, or the bundle's own"
        )
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise BundleError(f"{path}: {existing} is a file, not a directory; choose another")
    if path.is_dir() and not is_store(path) and not _has_bundle_manifest(path):
        raise BundleError(
            f"{path}: is not a model bundle (it has no {bundle.MANIFEST} of one); saving a model "
            "there would delete what it holds: choose a new or empty directory"
        )
    if path.is_dir() and not is_store(path):
        bundle.refuse_unlisted_entries(path)
    writes_in = path.parent if path.exists() else existing  # the staging folder's place
    if not os.access(writes_in, os.W_OK | os.X_OK):
        raise BundleError(f"cannot write {path}: {writes_in} is not writable (permission denied)")
    if path.is_dir() and is_store(path):
        numbers = versions(path)
        if numbers:
            raise BundleError(
                f"{path}: is a model store (versions {', '.join(map(str, numbers))}); saving a "
                "model there would delete every version: save elsewhere and `anomaly publish` "
                "it into the store"
            )
        if any(path.iterdir()):
            raise BundleError(
                f"{path}: is a directory that holds no model bundle; saving a model there would "
                "delete what it holds: choose a new or empty directory"
            )
    store = path.parent
    if _VERSION_NAME.fullmatch(path.name) and store.is_dir() and is_store(store):
        if versions(store):
            raise BundleError(
                f"{path}: is a version of model store {store}: published versions are never "
                "changed, and new ones are added by `anomaly publish` only; save elsewhere and "
                "`anomaly publish` it"
            )


def _has_bundle_manifest(path: Path) -> bool:
    """Whether directory ``path`` holds a bundle's manifest: a JSON object with a version."""
    try:
        manifest = json.loads((path / bundle.MANIFEST).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "bundle_version" in manifest


def _real(path: Path) -> Path:
    """``path`` with symbolic links resolved, whether it exists or not (never raises, not
    even on a link loop, unlike ``Path.resolve`` on Python 3.11)."""
    return Path(os.path.realpath(path))


def _copy_listed_files(model: Path, copy: Path) -> None:
    """Copy the manifest of bundle ``model`` and the files it lists into new directory
    ``copy``, each as a regular file."""
    manifest = bundle.verify_bundle(model)  # names checked: plain names inside the bundle
    copy.mkdir()
    for name in [bundle.MANIFEST, *manifest["files"]]:
        _copy_regular_file(model / name, copy / name)


def _copy_regular_file(source: Path, target: Path) -> None:
    """Copy ``source`` (after symbolic links) if it is a regular file, else a ``BundleError``.
    Opened without blocking, so a named pipe is refused rather than waited on."""
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise BundleError(
            f"{source}: is not a regular file (a named pipe, a device or a directory); a "
            "bundle holds regular files only"
        )
    with os.fdopen(fd, "rb") as reader, target.open("xb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
