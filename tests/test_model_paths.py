"""Model folders: one given to --model that is neither a bundle nor a store with versions,
and one given to --out that holds more than a bundle, which saving would delete."""

from __future__ import annotations

from pathlib import Path

import pytest

import anomaly
from anomaly.errors import BundleError
from anomaly.store import check_save_target


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
    check_save_target(project)  # a bundle: replaced


def test_saving_through_a_symbolic_link_is_refused_before_training(tmp_path: Path):
    (tmp_path / "model-1").mkdir()
    (tmp_path / "model-1" / "manifest.json").write_text('{"bundle_version": 3, "files": {}}')
    (tmp_path / "current").symlink_to("model-1")

    with pytest.raises(BundleError, match=r"current: is a symbolic link \(to model-1\); saving"):
        check_save_target(tmp_path / "current")
