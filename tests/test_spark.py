"""Offline scoring on Apache Spark (``anomaly.spark``, ``anomaly score --engine spark``) on a
real ``local[2]`` Spark: the same columns and scores as the local path for the same rows,
the model loaded once per Python worker, invalid rows and unsupported models handled as the
local path does or refused in one line.

The session splits files into 32 KB partitions, so a small test file is read by several
tasks (and both workers), as a large file is on a cluster. Needs pyspark (the ``spark``
extra) and Java 17; without them the tests skip, and fail under CI=true.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import anomaly
from anomaly.config import COMPONENTS
from anomaly.errors import ConfigError, DataError, SchemaError
from anomaly.files import score_file
from pipelines.cli import cli
from tests._support import unavailable

pytestmark = pytest.mark.spark

ROWS = 4000
ROW_GROUP = 500
NAMES = [f"f{i}" for i in range(8)]
ANOMALY_SCRIPT = Path(sys.executable).with_name("anomaly")
#: The JVM's start-up warning for the module Spark 4 adds to its command line (printed by Java
#: before Spark runs, whatever the log configuration says).
JVM_NATIVE_LOG = re.compile(r"^WARNING: Using incubator modules: ")


class _Spark:
    def __init__(self, session, load_log: Path):
        self.session = session
        self.load_log = load_log

    def loads(self) -> list[tuple[str, str]]:
        """(pid, version) of every model load in a Python worker so far."""
        if not self.load_log.exists():
            return []
        return [tuple(line.split()[:2]) for line in self.load_log.read_text().splitlines()]


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    try:
        import pyspark  # noqa: F401
    except ImportError:
        unavailable("pyspark is not installed (pip install -e '.[spark]')")
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        unavailable("Spark needs Java 17 or later, and there is no java on PATH")
    from anomaly.spark import LOAD_LOG_ENV, session

    load_log = tmp_path_factory.mktemp("spark") / "loads.log"
    spark = session(
        "local[2]",
        app_name="anomaly-tests",
        config={
            "spark.sql.files.maxPartitionBytes": "32k",
            "spark.sql.shuffle.partitions": "2",
            f"spark.executorEnv.{LOAD_LOG_ENV}": str(load_log),
        },
    )
    try:
        yield _Spark(spark, load_log)
    finally:
        spark.stop()


def _rows(mixing: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Normal rows of ``tiny_bundle``'s data, every 40th pushed far off it."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, 3)) @ mixing + 0.1 * rng.normal(size=(n, 8))
    rows[::40] = rng.normal(size=(len(rows[::40]), 8)) * 4
    return rows.astype(np.float32)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, row_group_size=ROW_GROUP)
    return path


@pytest.fixture(scope="module")
def table(tiny_bundle_mixing, tmp_path_factory) -> Path:
    """A Parquet file of ``ROWS`` rows with an ``id`` column of text, in row groups of 500."""
    frame = pd.DataFrame(_rows(tiny_bundle_mixing, ROWS, seed=1), columns=NAMES)
    frame.insert(0, "id", [f"r{i:05d}" for i in range(ROWS)])
    return _write(frame, tmp_path_factory.mktemp("spark-data") / "records.parquet")


@pytest.fixture(scope="module")
def id_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """``tiny_bundle`` with ``data.id_column = "id"``."""
    detector = anomaly.load(tiny_bundle)
    detector.config = detector.config.updated(data={"id_column": "id"})
    return detector.save(tmp_path_factory.mktemp("id-bundle") / "model")


def _text_as_string(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    """Names and types, text as one type: Parquet keeps no string/large_string difference
    (pandas writes large_string, Spark string; both read back as pandas' str)."""
    return [(f.name, pa.string() if pa.types.is_large_string(f.type) else f.type) for f in schema]


def test_spark_writes_the_local_paths_columns_and_scores_for_the_same_rows(
    spark, id_bundle, table, tmp_path
):
    from anomaly.spark import score_parquet

    run = score_parquet(spark.session, str(table), str(tmp_path / "spark"), id_bundle)
    local = score_file(anomaly.load(id_bundle), table, tmp_path / "local.parquet")

    parts = sorted((tmp_path / "spark").glob("part-*.parquet"))
    assert run.partitions >= 4 and len(parts) >= 2  # several tasks wrote it
    remote = pq.read_table(tmp_path / "spark")  # part files in name order
    expected = pq.read_table(tmp_path / "local.parquet")
    assert (
        remote.column_names
        == expected.column_names
        == [
            "row",
            "id",
            "score",
            "is_anomaly",
            "percentile",
            "score_reconstruction",
            "score_feature",
            "score_critic",
            "score_latent",
            "top_features",
        ]
    )
    assert _text_as_string(remote.schema) == _text_as_string(expected.schema)
    remote, expected = remote.to_pandas(), expected.to_pandas()
    assert remote.dtypes.to_dict() == expected.dtypes.to_dict()
    # Input order: consecutive row numbers, part files in order, ids where they were.
    assert remote["row"].tolist() == list(range(1, ROWS + 1))
    assert remote["id"].tolist() == [f"r{i:05d}" for i in range(ROWS)]
    joined = expected.merge(remote, on="row", suffixes=("_local", "_spark"))
    assert len(joined) == ROWS
    assert (joined["id_local"] == joined["id_spark"]).all()
    for column in ["score", "percentile", *(f"score_{c}" for c in COMPONENTS)]:
        np.testing.assert_allclose(
            joined[f"{column}_spark"], joined[f"{column}_local"], rtol=0, atol=1e-5
        )
    assert (joined["is_anomaly_local"] == joined["is_anomaly_spark"]).all()
    assert (joined["top_features_local"] == joined["top_features_spark"]).all()
    assert (run.rows_read, run.rows_scored, run.rows_rejected) == (ROWS, ROWS, 0)
    assert run.anomalies == local.anomalies > 0


def test_a_column_with_a_dot_in_its_name_is_read_as_any_other(spark, id_bundle, table, tmp_path):
    """pyspark's mapInArrow looks every input column up by name and read ``x.y`` as field
    ``y`` of a column ``x``: any such column, even one the model does not read, failed the
    job with an AnalysisException (a traceback, exit 1), where the local path scored it."""
    from anomaly.spark import score_parquet

    frame = pq.read_table(table).to_pandas()
    frame["x.y"] = 1.0
    dotted = _write(frame, tmp_path / "dotted.parquet")
    run = score_parquet(spark.session, str(dotted), str(tmp_path / "spark"), id_bundle)
    local = score_file(anomaly.load(id_bundle), dotted, tmp_path / "local.parquet")

    remote = pq.read_table(tmp_path / "spark").to_pandas()
    expected = pq.read_table(tmp_path / "local.parquet").to_pandas()
    assert remote["row"].tolist() == list(range(1, ROWS + 1))
    assert remote["id"].tolist() == expected["id"].tolist()
    np.testing.assert_allclose(remote["score"], expected["score"], rtol=0, atol=1e-5)
    assert run.rows_scored == ROWS and run.anomalies == local.anomalies


def test_each_python_worker_loads_the_model_once_for_all_its_tasks_and_jobs(
    spark, id_bundle, table
):
    from pyspark.sql import functions as F

    from anomaly.spark import score_dataframe

    df = spark.session.read.parquet(str(table))
    partitions = df.rdd.getNumPartitions()
    version = anomaly.load(id_bundle).version
    before = len(spark.loads())
    for _ in range(2):
        scored = score_dataframe(df, id_bundle)
        assert scored.agg(F.count("score")).first()[0] == ROWS

    loads = [pid for pid, loaded in spark.loads() if loaded == version]
    assert loads, "no load was logged"
    assert len(loads) == len(set(loads)), f"a worker process loaded the model twice: {loads}"
    # 2 jobs of `partitions` tasks each on local[2]: at most one load per worker process,
    # none where the workers of an earlier test (idle for less than Spark's minute) still
    # hold the model.
    new = [pid for pid, loaded in spark.loads()[before:] if loaded == version]
    assert partitions >= 4 and len(new) <= 2 < 2 * partitions


def test_cli_engine_spark_stops_at_or_skips_invalid_rows_as_the_local_path_does(
    spark, tiny_bundle, tiny_bundle_mixing, tmp_path
):
    rows = _rows(tiny_bundle_mixing, ROWS, seed=2)
    rows[2, 1] = np.nan  # row 3
    rows[1499, 5] = np.inf  # row 1500
    data = _write(pd.DataFrame(rows, columns=NAMES), tmp_path / "invalid.parquet")
    runner = CliRunner()

    def score(*options: str):
        return runner.invoke(
            cli,
            ["score", "--model", str(tiny_bundle), "--data", str(data), *options],
        )

    out = tmp_path / "spark"
    stopped = score("--engine", "spark", "--spark-master", "local[2]", "--out", str(out))
    assert stopped.exit_code == 2, stopped.output
    assert stopped.output.count("\n") == 1 and stopped.output.startswith(f"error: {data}: ")
    assert "row 3 (column 'f1' is NaN)" in stopped.output or (
        "row 1500 (column 'f5' is inf)" in stopped.output
    )
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    skipped = score("--engine", "spark", "--out", str(out), "--on-invalid", "skip")
    assert skipped.exit_code == 0, skipped.output
    assert f"scored {ROWS - 2} of {ROWS} rows" in skipped.output
    assert f"2 rows rejected -> {out}.rejects" in skipped.output
    local = score("--out", str(tmp_path / "local.csv"), "--on-invalid", "skip", "--no-progress")
    assert local.exit_code == 0, local.output

    remote = pd.read_parquet(out)
    expected = pd.read_csv(tmp_path / "local.csv")
    assert remote["row"].tolist() == expected["row"].tolist()
    assert 3 not in remote["row"].tolist() and 1500 not in remote["row"].tolist()
    np.testing.assert_allclose(remote["score"], expected["score"], rtol=0, atol=1e-5)
    rejects = pd.read_parquet(f"{out}.rejects").sort_values("row")
    local_rejects = pd.read_csv(tmp_path / "local.csv.rejects.csv")
    assert list(rejects.columns) == list(local_rejects.columns) == ["row", "reason", *NAMES]
    assert rejects["row"].tolist() == local_rejects["row"].tolist() == [3, 1500]
    assert rejects["reason"].tolist() == local_rejects["reason"].tolist()

    # A value that is not a number stops the run, skip or not, naming its row and column.
    text = pd.DataFrame(rows[:600], columns=NAMES).fillna(0).replace(np.inf, 0)
    text["f3"] = text["f3"].astype(str)
    text.loc[6, "f3"] = "abc"
    bad = _write(text, tmp_path / "text.parquet")
    refused = runner.invoke(
        cli,
        ["score", "--engine", "spark", "--model", str(tiny_bundle), "--data", str(bad)]
        + ["--out", str(tmp_path / "text-out"), "--on-invalid", "skip"],
    )
    assert refused.exit_code == 2
    assert refused.output == (
        f"error: {bad}: column 'f3' is not numeric: row 7 has 'abc'; fix the values or leave "
        "the column out of the features\n"
    )


def test_a_failing_cli_run_prints_only_its_error_line_on_stderr(
    spark, tiny_bundle, tiny_bundle_mixing, tmp_path
):
    # Spark logged a task's failure four times over (Java stack traces, the Python worker's
    # traceback in each) before the error line: about 200 lines. A process of its own, as the
    # command starts its own Spark (the fixture only skips the test without pyspark or Java).
    rows = _rows(tiny_bundle_mixing, 600, seed=3)
    rows[5, 2] = np.nan
    data = _write(pd.DataFrame(rows, columns=NAMES), tmp_path / "nan.parquet")
    proc = subprocess.run(
        [str(ANOMALY_SCRIPT), "score", "--engine", "spark", "--spark-master", "local[2]"]
        + ["--model", str(tiny_bundle), "--data", str(data), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Py4J" not in proc.stderr, proc.stderr
    own = [line for line in proc.stderr.splitlines() if not JVM_NATIVE_LOG.match(line)]
    assert own == [
        f"error: {data}: 1 row has NaN (missing) or infinite values: row 6 (column 'f2' is "
        "NaN); fix them or use --on-invalid skip"
    ]
    assert proc.stdout == ""


def test_a_file_spark_cannot_read_is_one_error_naming_it(spark, tiny_bundle, table, tmp_path):
    from anomaly.spark import score_dataframe

    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(table, folder / "a.parquet")
    truncated = folder / "b.parquet"
    truncated.write_bytes(table.read_bytes()[:-100])  # no footer
    footer = "cannot read its Parquet footer: not a Parquet file, or truncated (Spark's "
    runner = CliRunner()

    def score(data: Path):
        return runner.invoke(
            cli,
            ["score", "--engine", "spark", "--model", str(tiny_bundle), "--data", str(data)]
            + ["--out", str(tmp_path / "out")],
        )

    # Alone, its footer is read for the schema.
    alone = score(truncated)
    assert alone.exit_code == 2
    assert alone.output == (
        f"error: {truncated}: {footer}FAILED_READ_FILE.CANNOT_READ_FILE_FOOTER); rewrite it or "
        "leave it out\n"
    )
    # In a folder, the schema is another file's and the first job (the row count) fails.
    among = score(folder)
    assert among.exit_code == 2 and among.output.count("\n") == 1
    assert among.output.startswith(f"error: {truncated}: {footer}FAILED_READ_FILE.")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match=f"^{re.escape(f'{truncated}: {footer}')}"):
        score_dataframe(spark.session.read.parquet(str(folder)), tiny_bundle)

    # A damaged page header behind a sound footer fails the scoring job, on the executors.
    page = pq.ParquetFile(table).metadata.row_group(1).column(1).data_page_offset
    damaged = bytearray(table.read_bytes())
    damaged[page : page + 64] = b"U" * 64
    (tmp_path / "damaged.parquet").write_bytes(damaged)
    result = score(tmp_path / "damaged.parquet")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(
        f"error: {tmp_path / 'damaged.parquet'}: cannot read it as Parquet ("
    )
    assert not (tmp_path / "out").exists()


def test_a_folder_name_over_a_column_the_files_store_is_refused_and_other_folders_read(
    spark, id_bundle, table, tmp_path
):
    """``id=5/part.parquet`` whose file stores ``id`` too: Spark gave every row the id 5
    (exit 0), where the local path refuses it. A hive-style folder of another key still
    gives its column."""
    from anomaly.spark import score_parquet

    clashing = tmp_path / "clashing" / "id=5"
    clashing.mkdir(parents=True)
    shutil.copy(table, clashing / "part-0.parquet")
    with pytest.raises(DataError, match=r"column 'id' is both in the Parquet files and a folder"):
        score_parquet(spark.session, str(clashing.parent), str(tmp_path / "out"), id_bundle)
    assert not (tmp_path / "out").exists()

    other = tmp_path / "other" / "host=web"
    other.mkdir(parents=True)
    shutil.copy(table, other / "part-0.parquet")
    run = score_parquet(spark.session, str(other.parent), str(tmp_path / "out"), id_bundle)
    assert run.rows_scored == ROWS


def test_time_series_models_adaptive_alarms_and_missing_columns_are_refused_in_one_line(
    spark, tiny_bundle, table, tmp_path
):
    from anomaly.spark import score_dataframe

    # The refusal reads the verified bundle's schema before loading its networks, so a
    # bundle saved with a window in its schema is refused as a trained time-series model is
    # (tiny_bundle's networks, never loaded here: no 20 s of training for a refusal).
    windowed = anomaly.load(tiny_bundle)
    windowed.schema = dataclasses.replace(windowed.schema, window=4)
    windowed.save(tmp_path / "windowed")
    alarms = tmp_path / "alarms.toml"
    alarms.write_text('[alarms]\nmethod = "conformal"\n')
    runner = CliRunner()
    base = ["score", "--engine", "spark", "--data", str(table), "--out", str(tmp_path / "o")]

    result = runner.invoke(cli, [*base, "--model", str(tmp_path / "windowed")])
    assert result.exit_code == 2
    assert result.output == (
        f"error: {tmp_path / 'windowed'}: a time-series model (model.window = 4) scores "
        "sliding windows of each series in order; Spark scoring takes models of independent "
        "rows: score this data with --engine local\n"
    )
    result = runner.invoke(cli, [*base, "--model", str(tiny_bundle), "--config", str(alarms)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "alarms.method = 'conformal'" in result.output
    assert not (tmp_path / "o").exists()

    df = spark.session.read.parquet(str(table)).drop("f7")
    with pytest.raises(SchemaError, match=r"column\(s\) not found: 'f7' \(feature\)"):
        score_dataframe(df, tiny_bundle)
    with pytest.raises(ConfigError, match="time-series model"):
        score_dataframe(df, tmp_path / "windowed")


def test_the_package_imports_without_pyspark_and_says_which_extra_to_install():
    code = (
        "import sys; sys.modules['pyspark'] = None\n"
        "import anomaly, anomaly.spark\n"
        "try:\n"
        "    anomaly.spark.session()\n"
        "except anomaly.ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'anomaly-gan[spark]'" in done.stdout


def test_the_staging_folder_goes_and_the_exception_stays_when_the_jvm_is_gone(tmp_path):
    """After SIGTERM or Ctrl-C the JVM's gateway may be gone: deleting the staging folder
    through it raised Py4JError, which replaced the 'terminated' line with a traceback
    (exit 1) and left the folder behind."""
    from anomaly.spark import _remove_staging

    staging = tmp_path / ".partial-out-0a1b2c3d"
    (staging / "scores").mkdir(parents=True)

    class GatewayGone:
        def delete(self, path):
            raise RuntimeError("org does not exist in the JVM")

        def unpersist(self):
            raise RuntimeError("the gateway is closed")

    _remove_staging(GatewayGone(), str(staging), GatewayGone())
    assert not staging.exists()


def test_a_python_worker_that_died_is_one_line():
    """A worker killed (for memory, most often) surfaced as 231 lines of Java stack."""
    from anomaly.spark import _spark_errors

    stack = "org.apache.spark.SparkException: Python worker exited unexpectedly (crashed)\n"
    with pytest.raises(anomaly.AnomalyError, match="^a Python worker of Spark exited") as caught:
        with _spark_errors():
            raise RuntimeError(stack + "\tat org.apache.spark.api.python.Runner\n" * 200)
    assert "\n" not in str(caught.value)

    segfault = (
        "Python worker exited unexpectedly (crashed) - Fatal Python error: Segmentation fault"
    )
    with pytest.raises(anomaly.AnomalyError, match=r"\(Fatal Python error: Segmentation fault\)"):
        with _spark_errors():
            raise RuntimeError(segfault + "\n\tat org.apache.spark.api.python.Runner\n")
