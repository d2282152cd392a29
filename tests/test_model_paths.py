"""Model folders: one given to --model that is neither a bundle nor a store with versions,
and one given to --out that holds more than a bundle, which saving would delete."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import anomaly
from anomaly import bundle
from anomaly.errors import BundleError, DataError
from anomaly.store import check_save_target

FIXTURES = Path(__file__).parent / "fixtures"


def test_the_folder_above_a_bundle_names_the_bundle(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text("{}")
    (tmp_path / "data").mkdir()

    with pytest.raises(BundleError, match=rf"no manifest.json\) .* such as {tmp_path}/model,"):
        anomaly.load(tmp_path)
    with pytest.raises(BundleError, match=r"give a bundle's folder, or publish"):
        anomaly.load(tmp_path / "data")


def test_saving_over_a_folder_that_holds_a_config_json_and_more_is_refused(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text("{}")  # a bundle's name, but the user's file
    (project / "normal.csv").write_text("a\n1\n")

    for manifest in (None, '{"name": "web app", "icons": []}'):
        if manifest:
            (project / "manifest.json").write_text(manifest)
        with pytest.raises(BundleError, match="not a model bundle \\(it has no manifest.json of"):
            check_save_target(project)
    (project / "manifest.json").write_text('{"bundle_version": 3, "files": {}}')
    with pytest.raises(BundleError, match="holds config.json, normal.csv besides the model"):
        check_save_target(project)  # a manifest that lists neither
    (project / "normal.csv").unlink()
    (project / "manifest.json").write_text('{"bundle_version": 3, "files": {"config.json": ""}}')
    check_save_target(project)  # a bundle: replaced


def test_saving_over_a_bundle_that_also_holds_the_users_files_is_refused_and_keeps_them(
    tmp_path: Path,
):
    """Data kept beside a model (``anomaly train --data model/train.csv --out model``) is not
    the bundle's to delete, whether it was there before training or came during it."""
    detector = anomaly.load(FIXTURES / "bundle-v3")
    model = tmp_path / "model"
    detector.save(model)
    detector.save(model)  # a bundle alone: replaced
    (model / "train.csv").write_text("a\n1\n")
    (model / "notes").mkdir()

    with pytest.raises(BundleError, match=r"model: holds notes, train.csv besides the model"):
        check_save_target(model)
    with pytest.raises(BundleError, match=r"holds notes, train.csv besides"):
        detector.save(model)
    (model / "notes").rmdir()
    manifest = (model / bundle.MANIFEST).read_bytes()
    with pytest.raises(BundleError, match=r"holds train.csv besides"):
        bundle.save_bundle(model, bundle.load_bundle(model))  # checked again at the swap
    assert (model / "train.csv").read_text() == "a\n1\n"
    assert (model / bundle.MANIFEST).read_bytes() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging left


def test_a_folder_that_cannot_be_written_is_refused_before_training(tmp_path: Path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        "anomaly.store.os.access", lambda p, mode: Path(p) != locked and real_access(p, mode)
    )

    for target in (locked / "model", locked / "new" / "model"):
        with pytest.raises(BundleError, match=f"cannot write {target}: {locked} is not writable"):
            check_save_target(target)
    check_save_target(tmp_path / "model")


def test_saving_through_a_symbolic_link_is_refused_before_training(tmp_path: Path):
    (tmp_path / "model-1").mkdir()
    (tmp_path / "model-1" / "manifest.json").write_text('{"bundle_version": 3, "files": {}}')
    (tmp_path / "current").symlink_to("model-1")

    with pytest.raises(BundleError, match=r"current: is a symbolic link \(to model-1\); saving"):
        check_save_target(tmp_path / "current")


def test_a_file_on_the_way_to_the_folder_is_refused_before_training(tmp_path: Path):
    (tmp_path / "normal.csv").write_text("a\n1\n")

    with pytest.raises(BundleError, match=r"model: .*normal.csv is a file, not a directory"):
        check_save_target(tmp_path / "normal.csv" / "model")


def test_a_full_disk_while_saving_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch):
    detector = anomaly.load(FIXTURES / "bundle-v3")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bundle.np, "save", full_disk)
    with pytest.raises(DataError, match=f"^cannot write {tmp_path / 'model'}: No space left"):
        detector.save(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []
