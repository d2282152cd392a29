"""What the offline commands print: each training warning once, as the command's own line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner

from anomaly.health import TrainingWarning
from pipelines.cli import cli


def test_train_prints_each_training_warning_once(tmp_path: Path):
    rows = np.random.default_rng(0).normal(size=(200, 3))  # 30 held out: too few for 1 %
    pd.DataFrame(rows, columns=["a", "b", "c"]).to_csv(tmp_path / "normal.csv", index=False)
    (held_out_only := tmp_path / "held-out.toml").write_text("[training]\ncalibration_folds = 1\n")
    args = ["train", "--data", str(tmp_path / "normal.csv"), "--out", str(tmp_path / "model")]
    args += ["--config", str(held_out_only)]

    with warnings.catch_warnings(record=True) as issued:
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, [*args, "--steps", "2"])

    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: the threshold was calibrated on 30 normal records") == 1
    assert not [w for w in issued if issubclass(w.category, TrainingWarning)]


def test_train_names_the_features_it_took(tmp_path: Path):
    """Columns of text are no features; the line shows which columns were."""
    lines = ["id;note;a"] + [f"{i};batch {i % 7};{i % 3}.25" for i in range(700)]
    (tmp_path / "export.csv").write_text("\r\n".join(lines) + "\r\n")
    args = ["train", "--data", str(tmp_path / "export.csv"), "--out", str(tmp_path / "model")]

    result = CliRunner().invoke(cli, [*args, "--steps", "2"])

    assert result.exit_code == 0, result.output
    assert "\nfeatures (2): id, a\n" in result.stdout


def test_train_refuses_a_spreadsheets_decimal_commas_rather_than_dropping_them(tmp_path: Path):
    """A spreadsheet's export with decimal commas: only the id would have been a feature."""
    lines = ["id;a;b"] + [f"{i};{i % 7},5;{i % 3},25" for i in range(200)]
    (tmp_path / "export.csv").write_text("\r\n".join(lines) + "\r\n")
    args = ["train", "--data", str(tmp_path / "export.csv"), "--out", str(tmp_path / "model")]

    result = CliRunner().invoke(cli, [*args, "--steps", "2"])

    assert result.exit_code == 2
    assert "column(s) 'a', 'b' hold numbers with a comma (such as '0,5')" in result.stderr
    assert not (tmp_path / "model").exists()
