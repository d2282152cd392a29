"""Model bundles: a directory of ``.keras`` networks and JSON, with a checksum manifest.

No pickle anywhere: networks load with ``safe_mode=True``, the latent prototypes are a plain
``.npy`` array loaded with ``allow_pickle=False``, everything else is JSON. ``manifest.json``
lists the SHA-256 of every file and is verified before anything is loaded, so a truncated,
corrupted or edited bundle is refused with the name of the file that changed.

``manifest.json`` also holds the bundle's format version, checked before anything else is
read: this release writes ``BUNDLE_VERSION`` and reads every version from
``OLDEST_BUNDLE_VERSION`` on, bringing an older bundle to the current format in memory as it
loads (``anomaly.migrations``); a newer or older one is refused with one line saying which
versions this release reads.

A bundle is untrusted input: the manifest may only name files inside the bundle (no
absolute paths, no ``..``, no symbolic link that leads out), checked before any file is
read, and every JSON file must have the types its reader expects (``typed_part``), so a
damaged or hostile bundle is a ``BundleError`` naming the file and the problem.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import typing
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import keras
import numpy as np
from pydantic import ConfigDict, ValidationError, create_model

from anomaly import migrations
from anomaly.declared_weights import UnknownNetwork, declared_weights
from anomaly.errors import BundleError
from anomaly.io import cannot_write

#: The format this release writes.
BUNDLE_VERSION = 5
#: The oldest format it reads: ``migrations.MIGRATIONS`` has a step from each one before
#: ``BUNDLE_VERSION``.
OLDEST_BUNDLE_VERSION = 2
NETWORKS = ("encoder", "generator", "critic")
JSON_PARTS = ("preprocessing", "scoring", "schema", "metadata", "health", "config", "drift")
LATENT_PROTOTYPES = "latent_prototypes.npy"
MANIFEST = "manifest.json"
#: The most a network's ``.keras`` archive may unpack to, as a multiple of its own size (plus
#: ``ARCHIVE_SLACK_BYTES``). Keras stores its entries uncompressed (1x); a few kilobytes of
#: deflated blanks that unpack to gigabytes would exhaust a pod's memory at load.
MAX_UNPACKED_RATIO = 4
ARCHIVE_SLACK_BYTES = 1 << 20
#: The weights' file in a ``.keras`` archive (HDF5), and its layers' configuration (JSON).
WEIGHTS_ENTRY = "model.weights.h5"
CONFIG_ENTRY = "config.json"


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    except OSError as exc:
        raise cannot_write(path, exc) from None
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
            refuse_unlisted_entries(path)  # added while the model trained
            _swap(staging, path)
        else:
            staging.rename(path)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, a folder that cannot be replaced
            raise cannot_write(path, exc) from None
        raise
    return bundle_version_id(path)


def _swap(staging: Path, path: Path) -> None:
    """Put ``staging`` in the place of bundle ``path`` by two renames, the old bundle
    removed only once the new one is in place (removing it first lost both to a kill or a
    failed rename in between). Should the second rename fail, the old bundle goes back;
    should that fail too, the error says where it is."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}-replaced-", dir=path.parent))
    try:
        path.rename(aside / "bundle")
    except BaseException:
        aside.rmdir()
        raise
    try:
        staging.rename(path)
    except BaseException as exc:
        try:
            (aside / "bundle").rename(path)
        except OSError:
            raise OSError(
                exc.errno if isinstance(exc, OSError) else None,
                f"{exc}; the bundle that was there is now {aside / 'bundle'}",
            ) from None
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def refuse_unlisted_entries(path: Path) -> None:
    """A ``BundleError`` when bundle folder ``path`` holds anything its manifest does not
    list (the training data, notes): replacing the bundle replaces the whole folder, and
    would delete them."""
    try:
        listed = json.loads((path / MANIFEST).read_bytes()).get("files", {})
        ours = {MANIFEST, *(PurePosixPath(name).parts[0] for name in listed if name)}
    except (OSError, ValueError, AttributeError, TypeError, IndexError):
        ours = {MANIFEST}
    unlisted = sorted(entry.name for entry in path.iterdir() if entry.name not in ours)
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (
            f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else ""
        )
        raise BundleError(
            f"{path}: holds {shown} besides the model bundle; saving a model there replaces "
            "the whole directory and would delete them: move them out, or choose a new or "
            "empty directory"
        )


def _keras_problem(file: Path, exc: Exception) -> str:
    """Why Keras could not load ``file``, in one line: its errors run over several lines
    (a layer's whole configuration) and name a truncated archive as "File not found"."""
    if not zipfile.is_zipfile(file):
        return (
            "cannot be loaded as a Keras model: it is not a .keras archive (a zip file); "
            f"truncated, or saved in another format; {RESTORE_HINT}"
        )
    text = str(exc)
    if "Lambda" in text:
        return (
            "cannot be loaded as a Keras model: it holds a Lambda layer, Python code that "
            "loading never runs (safe_mode); a bundle's networks are built of Keras' own layers"
        )
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    shown = first_line[:200] + ("..." if len(first_line) > 200 else "")
    return f"cannot be loaded as a Keras model: {shown or type(exc).__name__}"


def _refuse_archive_bomb(file: Path) -> None:
    """A ``BundleError`` when archive ``file`` would take far more memory to load than its
    size: when it says it unpacks to more than ``MAX_UNPACKED_RATIO`` times its size (its
    entries, which zipfile never unpacks past the size they declare, or the arrays of its
    weights file: HDF5 can compress them too, and a reviewer's 0.7 MB archive held 400 MB of
    zeros), or when its layers declare more weights than its weights file holds (Keras
    allocates them all before reading that file; ``anomaly.declared_weights``)."""
    if not zipfile.is_zipfile(file):
        return  # Keras' load says what is wrong (``_keras_problem``)
    packed = file.stat().st_size
    limit = MAX_UNPACKED_RATIO * packed + ARCHIVE_SLACK_BYTES
    try:
        with zipfile.ZipFile(file) as archive:
            missing = sorted({CONFIG_ENTRY, WEIGHTS_ENTRY} - set(archive.namelist()))
            if missing:
                raise BundleError(
                    f"{file}: not a Keras network archive: it holds no {' and no '.join(missing)}"
                    f"; {RESTORE_HINT}"
                )
            unpacked = sum(entry.file_size for entry in archive.infolist())
            if unpacked <= limit:
                stored = _stored_arrays(archive.read(WEIGHTS_ENTRY))
                if stored is None:
                    raise BundleError(
                        f"{file}: its {WEIGHTS_ENTRY} is not an HDF5 file; {RESTORE_HINT}"
                    )
                stored_values, stored_bytes = stored
                unpacked = max(unpacked, stored_bytes)
            if unpacked <= limit:
                network = json.loads(archive.read(CONFIG_ENTRY))
    except (
        zipfile.BadZipFile,
        OSError,
        RuntimeError,
        NotImplementedError,
        EOFError,
        zlib.error,
    ) as exc:
        raise BundleError(f"{file}: cannot read the archive: {exc}; {RESTORE_HINT}") from None
    except (ValueError, RecursionError):
        raise BundleError(f"{file}: its {CONFIG_ENTRY} is not JSON; {RESTORE_HINT}") from None
    if unpacked > limit:
        raise BundleError(
            f"{file}: unpacks to {unpacked:,} bytes from {packed:,} (Keras stores its archives "
            f"and weights uncompressed; more than {MAX_UNPACKED_RATIO} times their size is "
            f"refused, as a decompression bomb); {RESTORE_HINT}"
        )
    try:
        declared = declared_weights(network)
    except UnknownNetwork as exc:
        raise BundleError(f"{file}: not a network of a bundle: {exc}; {RESTORE_HINT}") from None
    if declared > stored_values or 4 * declared > stored_bytes:
        raise BundleError(
            f"{file}: its layers declare {declared:,} weights but its weights file holds "
            f"{stored_values:,} values in {stored_bytes:,} bytes (Keras would allocate them "
            f"all before reading that file); {RESTORE_HINT}"
        )


def _stored_arrays(weights: bytes) -> tuple[int, int] | None:
    """The values, and the bytes, the arrays of HDF5 file ``weights`` hold once read; None
    where it is not one."""
    import h5py

    sizes: list[tuple[int, int]] = []

    def add(_, item) -> None:
        if isinstance(item, h5py.Dataset):
            sizes.append((item.size, item.size * item.dtype.itemsize))

    try:
        with h5py.File(io.BytesIO(weights), "r") as h5:
            h5.visititems(add)
    except (OSError, ValueError, TypeError):
        return None
    return sum(values for values, _ in sizes), sum(size for _, size in sizes)


def load_bundle(path: str | os.PathLike[str]) -> BundleContents:
    """Verify and load a bundle, brought to the current format; every failure is a
    ``BundleError`` that says exactly why."""
    path = Path(path)
    version = verify_bundle(path)["bundle_version"]
    networks = {}
    for name in NETWORKS:
        file = path / f"{name}.keras"
        _refuse_archive_bomb(file)
        try:
            networks[name] = keras.saving.load_model(file, compile=False, safe_mode=True)
        except Exception as exc:  # Keras raises many types for a bad archive
            raise BundleError(f"{file}: {_keras_problem(file, exc)}") from None
    parts = {}
    for name in json_parts(version):
        file = path / f"{name}.json"
        parts[name] = _read_json(file)
        if not isinstance(parts[name], dict):
            raise BundleError(
                f"{file}: holds a JSON {_json_type(parts[name])}, not an object; {RESTORE_HINT}"
            )
    parts = _migrated(path, version, parts)
    try:
        reference = np.load(path / LATENT_PROTOTYPES, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path / LATENT_PROTOTYPES}: not a plain numeric array: {exc}") from None
    if reference.ndim != 2 or reference.dtype.kind != "f" or not len(reference):
        raise BundleError(
            f"{path / LATENT_PROTOTYPES}: holds a {reference.ndim}-D {reference.dtype} array of "
            f"shape {reference.shape}; expected a non-empty 2-D float array; {RESTORE_HINT}"
        )
    return BundleContents(networks, parts, reference, bundle_version_id(path))


def verify_bundle(path: Path) -> dict:
    """Check the manifest, the bundle version and every file's checksum."""
    if not path.is_dir():
        raise BundleError(f"model bundle not found: {path} is not a directory")
    manifest_file = path / MANIFEST
    manifest = _read_json(_inside(path, MANIFEST, manifest_file))
    if not isinstance(manifest, dict):
        raise BundleError(
            f"{manifest_file}: holds a JSON {_json_type(manifest)}, not an object with "
            f"bundle_version and files; {RESTORE_HINT}"
        )
    version = _readable_version(path, manifest.get("bundle_version"))
    expected = (
        {f"{n}.keras" for n in NETWORKS}
        | {f"{n}.json" for n in json_parts(version)}
        | {LATENT_PROTOTYPES}
    )
    listed = manifest.get("files", {})
    if not isinstance(listed, dict):
        raise BundleError(
            f"{manifest_file}: 'files' is a JSON {_json_type(listed)}; expected an object of "
            f"file name -> SHA-256; {RESTORE_HINT}"
        )
    # Every name is checked before any file is read (hashed), so a hostile manifest cannot
    # make the loader open anything outside the bundle.
    files = {name: _inside(path, name, manifest_file) for name in listed}
    for name, checksum in listed.items():
        if not isinstance(checksum, str):
            raise BundleError(
                f"{manifest_file}: the checksum of {name} is a JSON {_json_type(checksum)}, "
                f"not a SHA-256 hex string; {RESTORE_HINT}"
            )
    missing_from_manifest = sorted(expected - set(listed))
    if missing_from_manifest:
        raise BundleError(f"{path / MANIFEST}: does not list {', '.join(missing_from_manifest)}")
    for name, checksum in sorted(listed.items()):
        file = files[name]
        if not file.is_file():
            if file.exists():  # a named pipe would block the reader, a device never end
                raise BundleError(
                    f"{file}: is not a regular file (a named pipe, a device or a directory); "
                    "a bundle holds regular files only"
                )
            raise BundleError(f"{path}: missing file {name}")
        if _sha256(file) != checksum:
            raise BundleError(
                f"{file}: checksum mismatch (the file changed after the bundle was written; "
                "retrain or restore the bundle)"
            )
    return manifest


def json_parts(version: int) -> tuple[str, ...]:
    """The JSON parts a bundle of format ``version`` holds."""
    later = {
        name
        for step, migration in migrations.MIGRATIONS.items()
        if step >= version
        for name in migration.adds
    }
    return tuple(name for name in JSON_PARTS if name not in later)


def _readable_version(path: Path, version: object) -> int:
    """``version`` if this release reads bundles of it; otherwise a ``BundleError`` saying
    which versions it reads."""
    readable = f"this release reads bundle versions {OLDEST_BUNDLE_VERSION} to {BUNDLE_VERSION}"
    if not isinstance(version, int) or isinstance(version, bool):
        shown = json.dumps(version)
        if isinstance(version, list | dict) or len(shown) > 40:
            shown = f"a JSON {_json_type(version)}"
        raise BundleError(
            f"{path}: the bundle version in {MANIFEST} is {shown}, not an integer; {readable}; "
            "retrain it"
        )
    shown = str(version) if len(str(version)) <= 40 else f"of {len(str(abs(version)))} digits"
    if version > BUNDLE_VERSION:
        raise BundleError(
            f"{path}: bundle version {shown} was written by a later release; {readable}; "
            "upgrade the package"
        )
    if version < OLDEST_BUNDLE_VERSION:
        raise BundleError(
            f"{path}: bundle version {shown} is older than this release reads; {readable}; "
            "retrain it"
        )
    return version


def _migrated(path: Path, version: int, parts: dict[str, dict]) -> dict[str, dict]:
    """The parts of a bundle of ``version`` brought to ``BUNDLE_VERSION``
    (``anomaly.migrations``)."""
    for step in range(version, BUNDLE_VERSION):
        migration = migrations.MIGRATIONS[step]
        try:
            parts = migration.apply(parts)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            # ArithmeticError: an integer beyond float range (OverflowError) in what it reads
            reason = f"{type(exc).__name__}: {exc}"
            reason = reason if len(reason) <= 200 else reason[:200] + "..."
            files = " and ".join(f"{name}.json" for name in migration.reads)
            raise BundleError(
                f"{path}: cannot bring bundle version {step} to {step + 1} ({reason}) from its "
                f"{files}; {RESTORE_HINT}"
            ) from None
    return parts


def bundle_version_id(path: Path) -> str:
    """A short content id of the bundle: the first 12 hex digits of its manifest's SHA-256."""
    return hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()[:12]


RESTORE_HINT = "the bundle is damaged or was not written by this package; retrain or restore it"


def typed_part(bundle: Path, name: str, values: dict, cls: type) -> dict[str, Any]:
    """``values`` of ``<name>.json`` checked against the fields of dataclass ``cls``: every
    field of the right JSON type (no coercion: a threshold of ``"0.5"`` is refused), none
    unknown. Returns the values to build ``cls`` from; a problem is a ``BundleError``
    naming the file and the key."""
    try:
        checked = _strict_model(cls).model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:3]:
            where = ".".join(str(p) for p in error["loc"]) or "the file"
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown key {where!r}")
            elif error["type"] == "missing":
                problems.append(f"missing key {where!r}")
            else:
                got = _json_type(error.get("input"))
                problems.append(f"{where}: {error['msg'].lower()}, got a JSON {got}")
        more = len(exc.errors()) - len(problems)
        raise BundleError(
            f"{bundle / (name + '.json')}: "
            + "; ".join(problems)
            + (f" and {more} more problem(s)" if more > 0 else "")
            + f"; {RESTORE_HINT}"
        ) from None
    return {field.name: getattr(checked, field.name) for field in dataclasses.fields(cls)}


@functools.cache
def _strict_model(cls: type):
    hints = typing.get_type_hints(cls)
    fields = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = ...
        fields[field.name] = (hints[field.name], default)
    config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=True)
    return create_model(f"{cls.__name__}Json", __config__=config, **fields)


def _inside(bundle: Path, name: object, manifest: Path) -> Path:
    """``bundle / name`` if ``name`` is a plain file name whose file (after symbolic links)
    is inside the bundle; otherwise a ``BundleError``. Reads nothing."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "\0" in name
        or len(PurePosixPath(name).parts) != 1
        or len(PureWindowsPath(name).parts) != 1
        or PurePosixPath(name).is_absolute()
    ):
        raise BundleError(
            f"{manifest}: names {name!r}, which is not a file of this bundle (a bundle lists "
            "only plain file names inside its folder: no absolute paths, no '..'); refused "
            "before reading anything"
        )
    file = bundle / name
    try:
        target, folder = file.resolve(), bundle.resolve()
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError for a link loop
        raise BundleError(
            f"{file}: is a symbolic link that leads round in a loop (or cannot be followed); "
            "refused before reading anything"
        ) from None
    if not target.is_relative_to(folder):
        raise BundleError(
            f"{file}: is a symbolic link to {target}, outside the bundle; refused before "
            "reading anything (copy the file into the bundle instead)"
        )
    return file


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _read_json(file: Path) -> Any:
    """The JSON value in ``file``; whatever keeps it from being read (a missing or special
    file, bytes that are not UTF-8 JSON, an integer beyond Python's digit limit, nesting
    deeper than the parser's recursion) is a one-line ``BundleError`` naming the file."""
    if file.exists() and not file.is_file():  # a named pipe would block read_text
        raise BundleError(
            f"{file}: is not a regular file (a named pipe, a device or a directory); a bundle "
            "holds regular files only"
        )
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise BundleError(f"{file.parent}: missing file {file.name}") from None
    except UnicodeDecodeError as exc:
        raise BundleError(f"{file}: not valid JSON: {exc}") from None
    except OSError as exc:
        raise BundleError(f"{file}: cannot be read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{file}: not valid JSON: {exc}") from None
    except ValueError:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        raise BundleError(
            f"{file}: holds an integer of more than {sys.get_int_max_str_digits()} digits, "
            f"which no bundle does; {RESTORE_HINT}"
        ) from None
    except RecursionError:
        raise BundleError(
            f"{file}: holds JSON nested too deeply to read, which no bundle does; {RESTORE_HINT}"
        ) from None


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
