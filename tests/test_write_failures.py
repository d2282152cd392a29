"""Outputs that cannot be written (a file where a folder should be, a full disk): one line
naming the output, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import anomaly
from anomaly import files
from anomaly.errors import AnomalyError, DataError
from anomaly.evaluation import evaluate_file
from anomaly.store import publish

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def detector():
    return anomaly.load(FIXTURES / "bundle-v3")


def test_a_report_folder_under_a_file_is_one_line(detector, tmp_path: Path):
    data = pd.read_csv(FIXTURES / "bundle-v3.drift.csv").head(40)
    data["label"] = [i % 2 for i in range(len(data))]
    data.to_csv(tmp_path / "labelled.csv", index=False)
    report = tmp_path / "labelled.csv" / "report"

    with pytest.raises(AnomalyError, match=f"^cannot write {report}: Not a directory$"):
        evaluate_file(detector, tmp_path / "labelled.csv", "label", report_dir=report)


def test_a_store_under_a_file_is_one_line(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not a folder")
    store = tmp_path / "notes.txt" / "models"

    with pytest.raises(AnomalyError, match=f"^cannot write {store}: Not a directory$"):
        publish(FIXTURES / "bundle-v3", store)


def test_a_bundle_replaced_by_a_save_that_fails_at_the_swap_stays_in_place(
    detector, tmp_path: Path, monkeypatch
):
    """The old bundle was removed before the new one was renamed into place: a kill or a
    failed rename in between lost both."""
    target = tmp_path / "model"
    detector.save(target)
    before = (target / "manifest.json").read_bytes()
    other = anomaly.load(target)  # another model to save in its place
    other.config = other.config.updated(alarms={"exit_rows": detector.config.alarms.exit_rows + 1})
    rename = Path.rename

    def failing_rename(self, destination):
        if Path(destination) == target and self.name.startswith(".model-"):  # the new one
            raise OSError(28, "No space left on device")
        return rename(self, destination)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(AnomalyError, match="No space left on device"):
        other.save(target)
    monkeypatch.undo()

    assert (target / "manifest.json").read_bytes() == before
    assert anomaly.load(target).config.alarms == detector.config.alarms
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left aside


def test_scoring_into_a_folder_is_refused_before_any_row_is_scored(
    detector, tmp_path: Path, monkeypatch
):
    """Only the command line refused it: ``score_file`` scored the whole file and failed at
    the rename at the end."""
    data = pd.read_csv(FIXTURES / "bundle-v3.drift.csv").head(40)
    data.to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "scores.csv"
    out.mkdir()

    def scored(*_args, **_kwargs):
        raise AssertionError("a row was scored")

    monkeypatch.setattr(files, "iter_scored", scored)
    with pytest.raises(DataError, match=f"^{out}: is a folder; give a file name$"):
        files.score_file(detector, tmp_path / "rows.csv", out)
