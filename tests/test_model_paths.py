"""--model given a folder that is neither a bundle nor a store with versions: the message
says what a model folder holds and points at a bundle found inside."""

from __future__ import annotations

from pathlib import Path

import pytest

import anomaly
from anomaly.errors import BundleError


def test_the_folder_above_a_bundle_names_the_bundle(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text("{}")
    (tmp_path / "data").mkdir()

    with pytest.raises(BundleError, match=rf"no manifest.json\) .* such as {tmp_path}/model,"):
        anomaly.load(tmp_path)
    with pytest.raises(BundleError, match=r"give a bundle's folder, or publish"):
        anomaly.load(tmp_path / "data")
