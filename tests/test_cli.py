"""The ``anomaly`` command line on real files: train, score (CSV, Parquet, JSON lines),
evaluate, drift, info, and one ``error: ...`` line on stderr with exit code 2 for every input a
user can get wrong."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import anomaly
from pipelines.cli import cli

pytestmark = pytest.mark.slow

FEATURES = [f"f{i}" for i in range(10)]
SCORE_COLUMNS = ["score", "is_anomaly", "percentile"] + [
    f"score_{c}" for c in ("reconstruction", "feature", "critic", "latent")
]
ANOMALY_SCRIPT = Path(sys.executable).with_name("anomaly")


def frame_of(rows: np.ndarray, labels: np.ndarray, prefix: str) -> pd.DataFrame:
    """id, the features, a label, and two columns that are not features."""
    frame = pd.DataFrame(rows, columns=FEATURES)
    frame.insert(0, "id", [f"{prefix}{i:05d}" for i in range(len(rows))])
    frame["label"] = labels
    frame["note"] = "text"
    frame["extra"] = np.random.default_rng(0).normal(size=len(rows)) * 1e6
    return frame


@pytest.fixture(scope="module")
def files(correlated_table, tmp_path_factory):
    """train.csv (3000 normal rows, 150 anomalies labelled 1) and eval.csv (1000 + 100)."""
    root = tmp_path_factory.mktemp("cli")
    train = frame_of(*correlated_table.labelled(3000, 150, seed=11), prefix="t")
    evaluation = frame_of(*correlated_table.labelled(1000, 100, seed=12), prefix="e")
    train.to_csv(root / "train.csv", index=False)
    evaluation.to_csv(root / "eval.csv", index=False)
    return root


@pytest.fixture(scope="module")
def trained(files):
    """The CliRunner result of ``anomaly train`` and the bundle it wrote."""
    model = files / "model"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--data",
            str(files / "train.csv"),
            "--out",
            str(model),
            "--features",
            ",".join(FEATURES),
            "--label-column",
            "label",
            "--id-column",
            "id",
            "--steps",
            "200",
        ],
    )
    assert result.exit_code == 0, result.output
    return result, model


@pytest.fixture(scope="module")
def model(trained) -> Path:
    return trained[1]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def error_line(result) -> str:
    """The one line the CLI wrote to stderr, after checking it exited with code 2."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def score(model: Path, data: Path, out: Path, *options: str):
    return run("score", "--model", str(model), "--data", str(data), "--out", str(out), *options)


def score_error(model: Path, data: Path, out: Path, *options: str) -> str:
    return error_line(score(model, data, out, "--no-progress", *options))


# -- train and info ---------------------------------------------------------------------


def test_train_uses_only_the_rows_labelled_normal(trained):
    result, _ = trained

    assert "trained on 3000 of 3150 rows" in result.stdout


def test_train_progress_off_a_terminal_is_one_plain_line_per_epoch(trained):
    """Run into a log or a pipe, Keras' live bar wrote escape codes and carriage returns
    among the result lines."""
    result, _ = trained

    assert "Epoch 1/" in result.stdout
    assert "\x1b" not in result.stdout and "\r" not in result.stdout


def test_train_keeps_the_progress_setting_of_the_configuration_file(files, tmp_path):
    """The command's own progress choice (a bar, or a line per epoch) yields to
    ``[training] verbose`` written in ``--config``: it overrode a file's 0."""
    config = tmp_path / "quiet.toml"
    config.write_text("[training]\nverbose = 0\n")
    result = run(
        "train",
        *("--data", str(files / "train.csv"), "--out", str(tmp_path / "model")),
        *("--features", ",".join(FEATURES), "--label-column", "label"),
        *("--steps", "100", "--config", str(config)),
    )

    assert result.exit_code == 0, result.output
    assert "trained on 3000 of 3150 rows" in result.stdout
    assert "Epoch" not in result.stdout


def test_info_prints_json_with_the_features_and_how_many_records_were_fitted(model):
    result = run("info", str(model))

    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["features"] == FEATURES
    assert info["formulation"] == "fanogan"
    assert info["model_version"] == anomaly.load(model).version
    meta = info["metadata"]
    assert meta["training_rows"] == 3000
    assert meta["fit_records"] + meta["held_out_records"] == 3000
    assert meta["fit_records"] == 2550
    assert meta["rows_rejected"] == 0
    assert (info["latent_prototypes"], info["latent_neighbours"]) == (256, 3)
    tail = info["calibration_tail"]  # how the threshold was set, without the kept scores
    assert tail["n"] == meta["held_out_records"] and tail["misfit"] is False
    assert "largest" not in tail


# -- score --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_score_keeps_row_order_and_ids_and_adds_score_columns(model, files, tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"

    result = score(model, files / "eval.csv", out)

    assert result.exit_code == 0, result.output
    assert "scored 1100 of 1100 rows" in result.stdout
    scored = {
        ".csv": lambda p: pd.read_csv(p, dtype={"id": str}),
        ".parquet": pd.read_parquet,
        ".jsonl": lambda p: pd.read_json(p, lines=True, dtype={"id": str}),
    }[suffix](out)
    source = pd.read_csv(files / "eval.csv", dtype={"id": str})
    assert len(scored) == len(source)
    assert list(scored.columns[:2]) == ["row", "id"]
    assert set(SCORE_COLUMNS) <= set(scored.columns)
    assert scored["row"].tolist() == list(range(1, len(source) + 1))
    assert scored["id"].tolist() == source["id"].tolist()
    expected = anomaly.load(model).score(source[FEATURES].to_numpy(np.float32))
    np.testing.assert_allclose(scored["score"], expected.scores, rtol=1e-9)
    np.testing.assert_array_equal(scored["is_anomaly"].astype(bool), expected.is_anomaly)
    np.testing.assert_allclose(scored["score_latent"], expected.components["latent"], rtol=1e-9)


def test_score_and_evaluate_read_a_folder_of_parquet_files_in_path_order(model, files, tmp_path):
    source = pd.read_csv(files / "eval.csv", dtype={"id": str})
    folder = tmp_path / "eval"
    folder.mkdir()
    for i, start in enumerate(range(0, len(source), 400)):
        source.iloc[start : start + 400].to_parquet(folder / f"part-{i:05d}.parquet")
    out = tmp_path / "scores.csv"

    result = score(model, folder, out, "--no-progress")
    evaluated = run(
        "evaluate", "--model", str(model), "--data", str(folder), "--label-column", "label"
    )

    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out, dtype={"id": str})
    assert scored["id"].tolist() == source["id"].tolist()
    expected = anomaly.load(model).score(source[FEATURES].to_numpy(np.float32))
    # Batches of 400 rows per file, not 1100: float32 sums in another order.
    np.testing.assert_allclose(scored["score"], expected.scores, rtol=1e-5, atol=1e-5)
    assert evaluated.exit_code == 0, evaluated.output
    assert "auroc" in evaluated.stdout


# -- evaluate -----------------------------------------------------------------------------


def test_evaluate_prints_auroc_and_the_other_metrics(model, files):
    result = run(
        "evaluate",
        "--model",
        str(model),
        "--data",
        str(files / "eval.csv"),
        "--label-column",
        "label",
    )

    assert result.exit_code == 0, result.output
    printed = dict(line.split() for line in result.stdout.splitlines())
    for name in ("auroc", "auprc", "best_f1", "precision", "recall", "false_positive_rate"):
        assert name in printed
    assert printed["records"] == "1100"
    assert printed["anomalies"] == "100"
    assert float(printed["auroc"]) >= 0.95


def test_an_adaptive_alarm_stage_from_config_adds_p_value_and_alarm_to_score_and_evaluate(
    model, files, tmp_path
):
    """Independent rows alarm by the model's threshold (``auto``); ``--config`` with an
    adaptive method adds the stage's columns (the file one stream) and metrics."""
    plain = tmp_path / "plain.csv"
    assert score(model, files / "eval.csv", plain, "--no-progress").exit_code == 0
    assert "p_value" not in pd.read_csv(plain).columns
    config = tmp_path / "alarms.toml"
    config.write_text('[alarms]\nmethod = "dspot"\nsemantics = "state"\nquorum = 1\n')
    out = tmp_path / "alarmed.csv"

    result = score(model, files / "eval.csv", out, "--no-progress", "--config", str(config))

    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out)
    assert scored["p_value"].between(0, 1).all()
    assert f"{int(scored['alarm'].sum())} alarms" in result.stdout
    evaluated = run(
        "evaluate",
        *("--model", str(model), "--data", str(files / "eval.csv")),
        *("--label-column", "label", "--json", "--config", str(config)),
    )
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    labels = pd.read_csv(files / "eval.csv")["label"].to_numpy()
    flagged = scored["alarm"].to_numpy()
    assert metrics["alarm_recall"] == pytest.approx((flagged & (labels == 1)).sum() / 100)
    assert "alarm_f1" in metrics and "alarm_false_positive_rate" in metrics
    config.write_text('[alarms]\nsemantics = "state"\nexit_level = 0.9999\n')
    assert "exit_level is 0.9999" in score_error(
        model, files / "eval.csv", out, "--config", str(config)
    )


def test_an_alarms_config_file_is_validated_whole_as_its_help_says(model, files, tmp_path):
    assert "the whole file is validated" in " ".join(run("score", "--help").output.split())
    config = tmp_path / "stale.toml"
    config.write_text('[alarms]\nmethod = "dspot"\n\n[serve]\nalarm_level = 0.99\n')
    line = score_error(model, files / "eval.csv", tmp_path / "out.csv", "--config", str(config))
    assert "serve.alarm_level moved to [alarms] level" in line


def test_sections_of_an_alarms_config_file_that_do_not_apply_are_named(model, files, tmp_path):
    """[scoring] target_fpr in score's --config changed nothing, without a word."""
    config = tmp_path / "shared.toml"
    config.write_text(
        '[alarms]\nmethod = "dspot"\n\n[scoring]\ntarget_fpr = 0.0001\n\n[serve]\nlinger_ms = 5\n'
    )

    result = score(
        model, files / "eval.csv", tmp_path / "out.csv", "--no-progress", "--config", str(config)
    )

    assert result.exit_code == 0, result.output
    assert f"warning: {config}: only [alarms] applies here; [scoring] is the model's" in (
        result.stderr
    )


def test_evaluate_json_parses_and_a_report_writes_markdown_and_plots(model, files, tmp_path):
    report = tmp_path / "report"

    result = run(
        "evaluate",
        "--model",
        str(model),
        "--data",
        str(files / "eval.csv"),
        "--label-column",
        "label",
        "--json",
        "--report",
        str(report),
    )

    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["records"] == 1100 and metrics["anomalies"] == 100
    assert metrics["auroc"] >= 0.95
    assert 0 <= metrics["false_positive_rate"] < 0.05
    for name in ("scores.png", "roc.png", "pr.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (report / "report.md").read_text()
    assert "| auroc |" in markdown and "roc.png" in markdown
    assert json.loads((report / "metrics.json").read_text()) == metrics


# -- drift --------------------------------------------------------------------------------


def drift(model: Path, data: Path, *options: str):
    return run("drift", "--model", str(model), "--data", str(data), *options)


@pytest.fixture(scope="module")
def drift_files(correlated_table, tmp_path_factory):
    """normal.csv: 5000 fresh normal rows; shifted.csv: the same with f4 moved by 3 sd."""
    root = tmp_path_factory.mktemp("drift")
    rows = correlated_table.normal(5000, seed=21)
    frame = frame_of(rows, np.zeros(len(rows), np.int8), prefix="n")
    frame.to_csv(root / "normal.csv", index=False)
    frame["f4"] += 3.0 * rows[:, 4].std()
    frame.to_csv(root / "shifted.csv", index=False)
    return root


def test_drift_ranks_a_shifted_feature_first_and_finds_normal_data_stable(model, drift_files):
    stable = drift(model, drift_files / "normal.csv", "--json")
    shifted = drift(model, drift_files / "shifted.csv", "--json")

    assert stable.exit_code == 0 and shifted.exit_code == 0, stable.output + shifted.output
    assert all(f["drift"] < 0.1 for f in json.loads(stable.stdout)["features"])
    report = json.loads(shifted.stdout)
    assert list(report) == ["features"]
    assert all(list(f) == ["name", "drift"] for f in report["features"])
    assert sorted(f["name"] for f in report["features"]) == sorted(FEATURES)
    first = report["features"][0]
    assert first["name"] == "f4" and first["drift"] > 0.25
    values = [f["drift"] for f in report["features"]]
    assert values == sorted(values, reverse=True)


def test_drift_prints_a_table_of_the_features_most_drifted_first(model, drift_files):
    table = drift(model, drift_files / "shifted.csv")
    ranked = json.loads(drift(model, drift_files / "shifted.csv", "--json").stdout)["features"]

    assert table.exit_code == 0, table.output
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["feature", "PSI", "reading"]
    assert [line.split()[0] for line in lines] == [f["name"] for f in ranked]
    assert [float(line.split()[1]) for line in lines] == [round(f["drift"], 4) for f in ranked]
    assert lines[0].endswith("significant shift") and lines[-1].endswith("stable")


def test_drift_on_too_few_rows_warns_on_stderr_and_prints_the_same_json(
    model, drift_files, tmp_path
):
    few = tmp_path / "few.csv"
    pd.read_csv(drift_files / "normal.csv").head(20).to_csv(few, index=False)
    result = drift(model, few, "--json")

    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)) == ["features"]
    assert result.stderr.startswith(f"warning: {few}: 20 rows measured, under the 225 its PSI")
    assert len(result.stderr.splitlines()) == 1
    assert "warning" not in drift(model, drift_files / "normal.csv", "--json").stderr


def test_drift_stops_at_invalid_rows_or_skips_them_to_a_rejects_file(model, files, tmp_path):
    frame = pd.read_csv(files / "eval.csv").head(200)
    frame.loc[2, "f1"] = np.nan
    frame.to_csv(data := tmp_path / "nan.csv", index=False)

    line = error_line(drift(model, data))
    assert "row 3 (column 'f1' is NaN)" in line and "--on-invalid skip" in line
    skipped = drift(model, data, "--on-invalid", "skip")

    assert skipped.exit_code == 0, skipped.output
    assert f"1 row rejected -> {data}.rejects.csv" in skipped.stdout
    assert pd.read_csv(f"{data}.rejects.csv")["row"].tolist() == [3]
    frame.head(3).assign(f1=np.nan).to_csv(only_invalid := tmp_path / "only-nan.csv", index=False)
    nothing_left = error_line(drift(model, only_invalid, "--on-invalid", "skip"))
    assert f"{only_invalid}: has no valid rows to measure" in nothing_left
    assert not Path(f"{only_invalid}.rejects.csv").exists()


# -- errors: one line on stderr, exit code 2 ---------------------------------------------------


def test_missing_data_file_exits_2_with_one_error_line(model, tmp_path):
    missing = tmp_path / "missing.csv"

    line = score_error(model, missing, tmp_path / "out.csv")

    assert line == f"error: file not found: {missing}"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        pytest.param(
            "data.txt",
            b"f0,f1\n1,2\n",
            "cannot read '.txt'; supported extensions: .csv",
            id="unknown-format",
        ),
        pytest.param(
            "data.parquet",
            b"this is not parquet at all",
            "cannot be read as Parquet",
            id="unreadable-parquet",
        ),
    ],
)
def test_unreadable_data_file_exits_2_saying_why(model, tmp_path, name, content, message):
    data = tmp_path / name
    data.write_bytes(content)

    line = score_error(model, data, tmp_path / "out.csv")

    assert f"{data}: {message}" in line


def test_non_numeric_feature_column_exits_2_naming_column_and_row(model, files, tmp_path):
    frame = pd.read_csv(files / "eval.csv").head(20).astype({"f3": object})
    frame.loc[4, "f3"] = "abc"
    frame.to_csv(data := tmp_path / "text.csv", index=False)

    line = score_error(model, data, tmp_path / "out.csv")

    assert "column 'f3' is not numeric: row 5 has 'abc'" in line


def test_nan_rows_exit_2_naming_their_row_numbers_and_write_no_output(model, files, tmp_path):
    frame = pd.read_csv(files / "eval.csv").head(20)
    frame.loc[2, "f1"] = np.nan
    frame.loc[6, "f8"] = np.nan
    frame.to_csv(data := tmp_path / "nan.csv", index=False)
    out = tmp_path / "out.csv"

    line = score_error(model, data, out)

    assert "2 rows have NaN (missing) or infinite values" in line
    assert "row 3 (column 'f1' is NaN), row 7 (column 'f8' is NaN)" in line
    assert "--on-invalid skip" in line
    assert not out.exists()


def test_on_invalid_skip_writes_rejected_row_numbers_and_scores_the_rest(model, files, tmp_path):
    frame = pd.read_csv(files / "eval.csv", dtype={"id": str}).head(20)
    frame.loc[2, "f1"] = np.nan
    frame.loc[6, "f8"] = np.inf
    frame.to_csv(data := tmp_path / "nan.csv", index=False)
    out = tmp_path / "out.csv"

    result = score(model, data, out, "--on-invalid", "skip")

    assert result.exit_code == 0, result.output
    assert f"2 rows rejected -> {out}.rejects.csv" in result.stdout
    rejects = pd.read_csv(tmp_path / "out.csv.rejects.csv")
    assert rejects["row"].tolist() == [3, 7]
    assert rejects["reason"].str.contains("NaN or infinite").all()
    scored = pd.read_csv(out, dtype={"id": str})
    kept = [r for r in range(1, 21) if r not in (3, 7)]
    assert scored["row"].tolist() == kept
    assert scored["id"].tolist() == frame["id"].drop(index=[2, 6]).tolist()
    assert np.isfinite(scored["score"]).all()


def test_file_without_a_model_feature_exits_2_naming_the_missing_column(model, files, tmp_path):
    pd.read_csv(files / "eval.csv").head(20).drop(columns="f9").to_csv(
        data := tmp_path / "short.csv", index=False
    )

    line = score_error(model, data, tmp_path / "out.csv")

    assert "column(s) not found: 'f9' (feature)" in line


@pytest.mark.parametrize("content", ["", "id,f0,f1,f2,f3,f4,f5,f6,f7,f8,f9\n"])
def test_empty_file_exits_2_saying_it_has_no_data_rows(model, tmp_path, content):
    data = tmp_path / "empty.csv"
    data.write_text(content)

    assert score_error(model, data, tmp_path / "out.csv") == (
        f"error: {data}: has no data rows; check that this is the right file"
    )


def test_tampered_bundle_exits_2_naming_the_changed_file(model, files, tmp_path):
    bundle = Path(shutil.copytree(model, tmp_path / "model"))
    with (bundle / "scoring.json").open("a") as handle:
        handle.write("\n")

    line = score_error(bundle, files / "eval.csv", tmp_path / "out.csv")

    assert line.startswith(f"error: {bundle / 'scoring.json'}: checksum mismatch")
    assert error_line(run("info", str(bundle))) == line


def test_missing_bundle_exits_2(files, tmp_path):
    line = score_error(tmp_path / "nowhere", files / "eval.csv", tmp_path / "out.csv")

    assert line == f"error: model bundle not found: {tmp_path / 'nowhere'} is not a directory"


def test_unknown_configuration_key_exits_2_naming_it(files, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[training]\nepocs = 3\n")

    line = error_line(
        run(
            "train",
            "--data",
            str(files / "train.csv"),
            "--out",
            str(tmp_path / "m"),
            "--config",
            str(config),
        )
    )

    assert "unknown key 'training.epocs'" in line


def test_missing_required_option_exits_2_with_usage(model, tmp_path):
    result = run("score", "--model", str(model), "--out", str(tmp_path / "out.csv"))

    assert result.exit_code == 2
    assert "Missing option '--data'" in result.stderr


def test_installed_command_exits_2_with_one_error_line_on_stderr(model, tmp_path):
    missing = tmp_path / "missing.csv"

    proc = subprocess.run(
        [
            str(ANOMALY_SCRIPT),
            "score",
            "--model",
            str(model),
            "--data",
            str(missing),
            "--out",
            str(tmp_path / "out.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 2, proc.stderr
    # Nothing else: TensorFlow's C++ start-up lines (absl's "before InitializeLog" warning,
    # oneDNN's notice), written whatever TF_CPP_MIN_LOG_LEVEL says, are held back.
    assert proc.stderr.splitlines() == [f"error: file not found: {missing}"]
    assert proc.stdout == ""


@pytest.mark.slow
def test_cross_fitting_names_each_model_and_keeps_standard_error_for_warnings(tmp_path):
    """200 rows hold out 30, too few for the 1 % target: by default training cross-fits,
    and says so. Five fits of new networks of the same shapes: TensorFlow's retracing notice
    (a WARNING line per function, on stderr) is not the user's concern and is held back."""
    rows = np.random.default_rng(2).normal(size=(200, 3))
    pd.DataFrame(rows, columns=["a", "b", "c"]).to_csv(data := tmp_path / "normal.csv", index=False)
    command = [str(ANOMALY_SCRIPT), "train", "--data", str(data), "--out", str(tmp_path / "m")]
    proc = subprocess.run(
        [*command, "--steps", "5"],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert proc.returncode == 0, proc.stderr
    headers = [line for line in proc.stdout.splitlines() if "of 5: training on" in line]
    assert headers == [
        "model 1 of 5: training on 170 records",
        *(
            f"cross-fitting model {n} of 5: training on {n_fit} records"
            for n, n_fit in ((2, 157), (3, 157), (4, 158), (5, 158))
        ),
    ]
    assert "calibrated on 200 records, cross-fitted by 5 models" in proc.stdout
    assert "retracing" not in proc.stderr


def test_installed_command_exits_2_on_bad_usage(tmp_path):
    proc = subprocess.run(
        [str(ANOMALY_SCRIPT), "score", "--out", str(tmp_path / "out.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 2
    assert "Missing option '--model'" in proc.stderr


def test_progress_asked_for_is_shown_off_a_terminal_and_only_then(model, files, tmp_path):
    """An explicit --progress was ignored when stderr was not a terminal (a CI log, a
    file); without the option, a log gets no bar."""
    asked = score(model, files / "eval.csv", tmp_path / "a.csv", "--progress")
    default = score(model, files / "eval.csv", tmp_path / "b.csv")

    assert asked.exit_code == default.exit_code == 0, asked.output
    assert " rows" in asked.stderr
    assert "rows" not in default.stderr


def test_evaluate_shows_progress_as_score_does(model, files):
    """evaluate had no --progress and never showed a bar, on a terminal or off it."""
    evaluate = ["evaluate", "--model", str(model), "--data", str(files / "eval.csv")]
    asked = run(*evaluate, "--label-column", "label", "--progress")
    default = run(*evaluate, "--label-column", "label")

    assert asked.exit_code == default.exit_code == 0, asked.output
    assert " rows" in asked.stderr
    assert "rows" not in default.stderr
    assert "auroc" in asked.stdout


# -- failures leave nothing behind; .npy input with an id-column model ------------------


def test_npy_scores_with_a_model_trained_with_an_id_column_rows_numbered(model, files, tmp_path):
    rows = pd.read_csv(files / "eval.csv").head(20)[FEATURES].to_numpy()
    np.save(data := tmp_path / "rows.npy", rows)
    out = tmp_path / "out.csv"

    result = score(model, data, out, "--no-progress")

    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out)
    assert scored["row"].tolist() == list(range(1, 21))
    assert "id" not in scored.columns
    expected = anomaly.load(model).score(rows).scores
    np.testing.assert_allclose(scored["score"], expected, rtol=1e-6)


def test_unsupported_output_extension_names_the_users_path_and_leaves_nothing(
    model, files, tmp_path
):
    out = tmp_path / "results" / "out.txt"

    line = score_error(model, files / "eval.csv", out, "--on-invalid", "skip")

    assert line.startswith(f"error: {out}: cannot write '.txt'; supported extensions: .csv")
    assert ".parquet" in line and ".jsonl" in line
    assert "partial" not in line
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_ctrl_c_during_score_exits_130_in_one_line_and_leaves_nothing(
    model, files, tmp_path, monkeypatch
):
    from anomaly.io import ResultWriter

    write = ResultWriter.write

    def interrupted(self, frame):  # Ctrl-C with part of the output written
        write(self, frame)
        raise KeyboardInterrupt

    monkeypatch.setattr(ResultWriter, "write", interrupted)
    out = tmp_path / "out" / "scores.csv"

    result = score(model, files / "eval.csv", out, "--no-progress")

    assert result.exit_code == 130, result.output
    assert result.stderr == "interrupted\n"
    assert list((tmp_path / "out").iterdir()) == []


def test_sigterm_during_score_exits_143_in_one_line_and_leaves_nothing(
    model, files, tmp_path, monkeypatch
):
    """A job scheduler's stop, ``timeout`` or ``kill``: a hidden partial output was left."""
    import os
    import signal

    from anomaly.io import ResultWriter

    write = ResultWriter.write

    def terminated(self, frame):  # SIGTERM with part of the output written
        write(self, frame)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ResultWriter, "write", terminated)
    out = tmp_path / "out" / "scores.csv"
    handler = signal.getsignal(signal.SIGTERM)

    result = score(model, files / "eval.csv", out, "--no-progress")

    assert result.exit_code == 143, result.output
    assert result.stderr == "terminated\n"
    assert list((tmp_path / "out").iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == handler


def test_failed_score_with_on_invalid_skip_removes_its_rejects_and_output(model, files, tmp_path):
    frame = pd.read_csv(files / "eval.csv").head(30)
    frame["f1"] = frame["f1"].astype(object)
    frame.loc[2, "f1"] = np.nan  # rejected in the first chunk ...
    frame.loc[22, "f1"] = "abc"  # ... then a later chunk stops the run
    frame.to_csv(data := tmp_path / "bad.csv", index=False)
    detector = anomaly.load(model)
    detector.config = detector.config.updated(data={"chunk_rows": 10})
    out = tmp_path / "out" / "scores.csv"

    from anomaly.files import score_file

    with pytest.raises(anomaly.DataError, match="column 'f1' is not numeric: row 23"):
        score_file(detector, data, out, on_invalid="skip")

    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_wrongly_typed_bundle_exits_2_with_one_line_for_info_and_score(model, files, tmp_path):
    bundle = Path(shutil.copytree(model, tmp_path / "model"))
    schema = json.loads((bundle / "schema.json").read_text())
    schema["feature_names"] = 10
    (bundle / "schema.json").write_text(json.dumps(schema))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["schema.json"] = hashlib.sha256(
        (bundle / "schema.json").read_bytes()
    ).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    line = error_line(run("info", str(bundle)))

    assert line.startswith(f"error: {bundle / 'schema.json'}: feature_names: input should be")
    assert score_error(bundle, files / "eval.csv", tmp_path / "out.csv") == line


# -- the demo ----------------------------------------------------------------------------


def test_demo_reads_every_alert_the_results_flagged_even_when_alerts_come_last():
    from collections import namedtuple

    from pipelines.demo import read_stream

    message = namedtuple("Message", "topic value")
    topics = {"records": "r", "scores": "s", "dlq": "d", "alerts": "a"}
    results = [{"id": i, "is_anomaly": i in (1, 3), "score": float(i)} for i in range(4)]
    # The results and the dead letter arrive first; the alerts topic's fetch comes after.
    stream = [message("s", json.dumps(r).encode()) for r in results]
    stream += [message("d", b"{}")]
    stream += [message("a", json.dumps(r).encode()) for r in results if r["is_anomaly"]]
    stream += [message("s", b"never read")]  # what comes after is not waited for

    outcome = read_stream(iter(stream), topics, records=4, deadline=time.monotonic() + 60)

    assert outcome.flagged == 2
    assert [a["id"] for a in outcome.alerts] == [1, 3]
    assert outcome.counts == {"r": 0, "s": 4, "d": 1, "a": 2}


def test_demo_stops_reading_at_its_deadline():
    from collections import namedtuple

    from pipelines.demo import read_stream

    message = namedtuple("Message", "topic value")
    topics = {"records": "r", "scores": "s", "dlq": "d", "alerts": "a"}
    flagged = json.dumps({"is_anomaly": True}).encode()
    endless = (message("s", flagged) for _ in iter(int, 1))  # alerts never come

    outcome = read_stream(endless, topics, records=1, deadline=time.monotonic() - 1)

    assert outcome.counts["s"] == 1 and outcome.alerts == []


def test_a_training_warning_is_printed_when_the_command_then_fails(tmp_path):
    """A label taken as a feature, then a NaN in it: the error named the column, and the
    warning that said why it was a feature at all was dropped with the failure."""
    frame = pd.DataFrame({"a": np.arange(50.0), "b": np.ones(50), "label": 0.0})
    frame.loc[3, "label"] = np.nan
    frame.to_csv(tmp_path / "rows.csv", index=False)

    result = run("train", "--data", str(tmp_path / "rows.csv"), "--out", str(tmp_path / "m"))

    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("warning: column 'label' is taken as a feature")
    assert lines[-1].startswith("error: ") and "'label'" in lines[-1]
