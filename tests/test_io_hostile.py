"""Hostile files at the file edge: each one is refused in one line naming where and why, or
scored as it should be; never a traceback, never a silent change of the data.

The model is the committed ``bundle-v3`` fixture (features a, b, c, d; read, never changed),
so no test trains one.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import anomaly
from anomaly.errors import ConfigError, DataError
from anomaly.files import score_file
from anomaly.io import ResultWriter, TableReader
from pipelines.cli import cli
from tests._support import read_all, unavailable

MODEL = Path(__file__).parent / "fixtures" / "bundle-v3"
FEATURES = ["a", "b", "c", "d"]


def rows(n: int = 6) -> pd.DataFrame:
    """``n`` rows of the model's features."""
    return pd.DataFrame(np.random.default_rng(0).normal(size=(n, 4)), columns=FEATURES)


def score(data: Path, out: Path, *options: str):
    return CliRunner().invoke(
        cli,
        ["score", "--model", str(MODEL), "--data", str(data), "--out", str(out), "--no-progress"]
        + list(options),
    )


def error_line(result) -> str:
    """The one line the CLI wrote to stderr, after checking it exited with code 2."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- 1. a column name given twice ---------------------------------------------------------


def test_csv_header_naming_a_column_twice_is_refused(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,b,c,d,c\n1,2,3,4,5\n")

    line = error_line(score(data, tmp_path / "out.csv"))

    assert line == (
        f"error: {data}: column 'c' appears more than once in the file; give every column its "
        "own name"
    )


def test_parquet_schema_naming_a_column_twice_is_refused(tmp_path):
    data = tmp_path / "data.parquet"
    columns = [pa.array([float(i)]) for i in range(5)]
    pq.write_table(pa.table(columns, names=["a", "b", "c", "d", "c"]), data)

    line = error_line(score(data, tmp_path / "out.csv"))

    assert line == (
        f"error: {data}: column 'c' appears more than once in the file; give every column its "
        "own name"
    )


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_repeated_column_the_run_does_not_read_is_no_obstacle(tmp_path, suffix):
    """A spreadsheet export with two 'note' columns, neither a feature, scores as before."""
    frame = rows(3)
    data = tmp_path / f"data.{suffix}"
    if suffix == "csv":
        data.write_text(
            "a,b,c,d,note,note\n"
            + "\n".join(",".join(map(str, r)) + ",x,y" for r in frame.to_numpy())
            + "\n"
        )
    else:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.append_column("note", pa.array(["x"] * 3))
        pq.write_table(table.append_column("note", pa.array(["y"] * 3)), data)

    result = score(data, tmp_path / "out.csv")

    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "out.csv")) == 3


def test_a_csv_column_really_named_like_a_renamed_repeat_is_read(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,a.1\n1,2\n")

    assert read_all(data).features.tolist() == [[1.0, 2.0]]


# -- 2. an integer float64 cannot hold ------------------------------------------------------


def test_json_integer_beyond_float_range_names_its_row_and_column(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(
        '{"a": 1, "b": 2, "c": 3, "d": 4}\n' + f'{{"a": 1, "b": 2, "c": 3, "d": {10**400}}}\n'
    )

    line = error_line(score(data, tmp_path / "out.csv"))

    assert line == (
        f"error: {data}: column 'd' on row 2 holds an integer of 401 digits, beyond float "
        "range; fix the value or leave the column out of the features"
    )


@pytest.mark.parametrize("line", [1, 3])
def test_json_nested_deeper_than_python_reads_names_its_line(tmp_path, line):
    """An extra key nested 100,000 levels: Python's JSON reader recurses, and its
    RecursionError came out as a traceback."""
    data = tmp_path / "data.jsonl"
    lines = ['{"a": 1, "b": 2, "c": 3, "d": 4}'] * 3
    lines[line - 1] = '{"a": 1, "b": 2, "c": 3, "d": 4, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    data.write_text("\n".join(lines) + "\n")

    message = error_line(score(data, tmp_path / "out.csv"))

    assert message.startswith(f"error: {data}: line {line} nests arrays or objects deeper than")


# -- 3. Parquet output when the id column's type varies -----------------------------------


@pytest.fixture
def detector_with_ids():
    """The fixture model reading an ``id`` column, in chunks of 4 rows."""
    detector = anomaly.load(MODEL)
    detector.config = detector.config.updated(data={"id_column": "id", "chunk_rows": 4})
    return detector


def with_ids(ids: list) -> pd.DataFrame:
    frame = rows(len(ids))
    frame.insert(0, "id", ids)
    return frame


def test_csv_ids_empty_in_the_first_chunk_are_written_to_parquet(detector_with_ids, tmp_path):
    data = tmp_path / "data.csv"
    with_ids([None] * 4 + ["x", "y"]).to_csv(data, index=False)

    score_file(detector_with_ids, data, tmp_path / "out.parquet")

    ids = pd.read_parquet(tmp_path / "out.parquet")["id"]
    assert ids.isna().tolist() == [True] * 4 + [False] * 2
    assert ids.iloc[4:].tolist() == ["x", "y"]


def test_json_ids_of_mixed_types_are_written_to_parquet_as_text(detector_with_ids, tmp_path):
    data = tmp_path / "data.jsonl"
    with_ids([0, 1, "abc", 3, "x", 5]).to_json(data, orient="records", lines=True)

    score_file(detector_with_ids, data, tmp_path / "out.parquet")

    ids = pd.read_parquet(tmp_path / "out.parquet")["id"].tolist()
    assert ids == ["0", "1", "abc", "3", "x", "5"]


def test_timestamp_ids_keep_their_microseconds_in_json_lines(detector_with_ids, tmp_path):
    """pandas writes JSON timestamps to the millisecond: five distinct ids came out as one."""
    data = tmp_path / "data.parquet"
    ids = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(6), unit="us")
    with_ids(list(ids)).to_parquet(data, index=False)

    score_file(detector_with_ids, data, tmp_path / "out.jsonl")

    written = pd.read_json(tmp_path / "out.jsonl", lines=True, convert_dates=False)["id"]
    assert pd.to_datetime(written).tolist() == list(ids)


@pytest.mark.parametrize("name", ["score", "row", "alarm"])
def test_an_id_column_named_like_a_result_column_is_refused(tmp_path, name):
    """The scores written under the id column's name replaced the ids, without a word."""
    detector = anomaly.load(MODEL)
    detector.config = detector.config.updated(data={"id_column": name})
    data = tmp_path / "data.csv"
    with_ids(["a", "b", "c"]).rename(columns={"id": name}).to_csv(data, index=False)

    with pytest.raises(ConfigError, match=f"^data.id_column is '{name}', the name of a result"):
        score_file(detector, data, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


BIG_IDS = [2**60 + i for i in range(6)]
BIG_IDS[1] = None  # a null in the first chunk: pandas would make the column float64


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
@pytest.mark.parametrize("out_suffix", [".csv", ".parquet"])
def test_integer_ids_with_a_null_are_written_exactly(
    detector_with_ids, tmp_path, suffix, out_suffix
):
    data, out = tmp_path / f"data{suffix}", tmp_path / f"out{out_suffix}"
    frame = with_ids(pd.array(BIG_IDS, dtype="Int64"))
    if suffix == ".parquet":
        frame.to_parquet(data)
    else:
        frame.to_json(data, orient="records", lines=True)

    score_file(detector_with_ids, data, out)

    read = pd.read_csv if out_suffix == ".csv" else pd.read_parquet
    assert pa.array(read(out, dtype_backend="pyarrow")["id"]).to_pylist() == BIG_IDS


def test_json_ids_turning_to_text_after_numbers_is_refused_naming_the_row(
    detector_with_ids, tmp_path
):
    data = tmp_path / "data.jsonl"
    with_ids([0, 1, 2, 3, 4, "abc"]).to_json(data, orient="records", lines=True)
    out = tmp_path / "out.parquet"

    with pytest.raises(DataError) as caught:
        score_file(detector_with_ids, data, out)

    assert str(caught.value) == (
        f"cannot write {out}: column 'id' changes type at row 6, which has 'abc' after int64 "
        "values; a Parquet column has one type: write CSV or JSON lines instead, or give the "
        "column values of one type"
    )
    assert list(tmp_path.iterdir()) == [data]


@pytest.mark.parametrize("later_ids", [[7.0, 2.9], pd.Series([7, 2.9], dtype=object)])
def test_an_id_with_a_fraction_after_a_chunk_of_whole_ids_is_refused_not_cut(tmp_path, later_ids):
    """The first chunk's whole ids make the Parquet column int64; pyarrow wrote a later
    chunk's 2.9 there as 2 without a word (a JSON lines file of 70,000 rows)."""
    from anomaly.io import ResultWriter

    out = tmp_path / "out.parquet"
    with pytest.raises(DataError, match=r"column 'id' changes type at row 5, which has 2\.9"):
        with ResultWriter(out) as writer:
            writer.write(pd.DataFrame({"row": [1, 2, 3], "id": [1, 2, 3]}))
            writer.write(pd.DataFrame({"row": [4, 5], "id": later_ids}))


# -- 4. and 5. where the output cannot be written -------------------------------------------


def test_out_inside_a_regular_file_exits_2_with_one_line(tmp_path):
    rows().to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out.csv"

    line = error_line(score(tmp_path / "data.csv", out))

    assert line.startswith(f"error: cannot create the folder for {out}: ")


@pytest.fixture
def dev_full() -> Path:
    """A device whose every write fails with ENOSPC, as a full disk's does."""
    path = Path("/dev/full")
    if not path.exists():
        unavailable("/dev/full (a Linux device) is needed to fill a disk")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_full_disk_is_one_error_naming_the_output(dev_full, tmp_path, suffix):
    path = tmp_path / f"written{suffix}"
    path.symlink_to(dev_full)
    out = tmp_path / f"out{suffix}"

    with pytest.raises(DataError) as caught:
        with ResultWriter(path, final=out) as writer:
            writer.write(pd.DataFrame({"row": range(1, 100_001), "score": 0.5}))

    assert str(caught.value) == f"cannot write {out}: No space left on device"


def test_a_full_disk_while_scoring_exits_2_and_leaves_nothing(dev_full, tmp_path):
    data = tmp_path / "data.csv"
    rows(20_000).to_csv(data, index=False)
    out = tmp_path / "out.csv"
    # Where the run writes its output until it is complete: here, a full disk.
    (tmp_path / ".partial-out.csv").symlink_to(dev_full)

    line = error_line(score(data, out))

    assert line == f"error: cannot write {out}: No space left on device"
    assert sorted(tmp_path.iterdir()) == [data]


# -- 6. the output is the input ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_scoring_a_file_into_itself_is_refused_and_the_data_kept(tmp_path, suffix):
    data = tmp_path / f"data{suffix}"
    rows().to_csv(data, index=False) if suffix == ".csv" else rows().to_parquet(data)
    before = data.read_bytes()
    same = tmp_path / "." / data.name

    line = error_line(score(data, same))

    assert line == (
        f"error: {same} is the input file {data}; writing it would replace the data: "
        "choose another --out"
    )
    assert data.read_bytes() == before


def test_an_output_whose_rejects_file_is_the_input_is_refused(tmp_path):
    data = tmp_path / "out.csv.rejects.csv"
    rows().to_csv(data, index=False)

    line = error_line(score(data, tmp_path / "out.csv"))

    assert line.startswith(f"error: {data} is the input file {data}; ")
    assert sorted(tmp_path.iterdir()) == [data]


# -- 7. the rejects file belongs to the output it came with -------------------------------------


def test_a_clean_run_removes_the_rejects_an_earlier_run_left_for_the_same_out(tmp_path):
    dirty, clean = tmp_path / "dirty.csv", tmp_path / "clean.csv"
    frame = rows()
    frame.to_csv(clean, index=False)
    frame.loc[2, "b"] = np.nan
    frame.to_csv(dirty, index=False)
    out = tmp_path / "out.csv"

    first = score(dirty, out, "--on-invalid", "skip")
    assert first.exit_code == 0 and Path(f"{out}.rejects.csv").exists(), first.output
    second = score(clean, out, "--on-invalid", "skip")

    assert second.exit_code == 0, second.output
    assert "rejected" not in second.stdout
    assert not Path(f"{out}.rejects.csv").exists()
    assert len(pd.read_csv(out)) == 6


def test_a_failed_run_keeps_the_output_and_rejects_of_the_run_before(tmp_path):
    data = tmp_path / "data.csv"
    frame = rows()
    frame.loc[2, "b"] = np.nan
    frame.to_csv(data, index=False)
    out = tmp_path / "out.csv"
    assert score(data, out, "--on-invalid", "skip").exit_code == 0
    kept = {path: path.read_bytes() for path in (out, Path(f"{out}.rejects.csv"))}
    # The next run rejects row 3 in its first chunk (65,536 rows), then stops at row 70,000.
    frame = rows(70_000).astype({"a": object})
    frame.loc[2, "b"], frame.loc[69_999, "a"] = np.nan, "text"
    frame.to_csv(data, index=False)

    error_line(score(data, out, "--on-invalid", "skip"))

    assert {path: path.read_bytes() for path in kept} == kept
    assert sorted(tmp_path.iterdir()) == sorted([data, *kept])


# -- 8. finite values float32 cannot hold -------------------------------------------------------


def test_values_beyond_float32_are_shown_as_the_file_holds_them(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,b,c,d\n1,2,3,4\n1,-1e308,3,1e39\n")

    line = error_line(score(data, tmp_path / "out.csv"))

    assert line == (
        f"error: {data}: 1 row has NaN (missing) or infinite values: row 2 (column 'b' is "
        "-1e+308, beyond the float32 range the model scores in, column 'd' is 1e+39, beyond "
        "the float32 range the model scores in); fix them or use --on-invalid skip"
    )


# -- 9. timestamps and durations are not numbers --------------------------------------------


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (pd.to_datetime(["2024-01-01", "2024-01-02"]), "a timestamp (datetime64["),
        (pd.to_datetime(["2024-01-01", "2024-01-02"]).tz_localize("UTC"), "a timestamp ("),
        (pd.to_timedelta(["1s", "2s"]), "a duration (timedelta64["),
    ],
)
def test_a_timestamp_or_duration_feature_is_refused(tmp_path, values, kind):
    data = tmp_path / "data.parquet"
    frame = rows(2)
    frame["d"] = values
    frame.to_parquet(data)

    line = error_line(score(data, tmp_path / "out.csv"))

    assert line.startswith(f"error: {data}: feature column 'd' is {kind}")
    assert line.endswith("), not a number; cast it or leave it out of the features")


# -- 10. text that is not UTF-8 -----------------------------------------------------------------


def test_non_utf8_csv_names_the_line_and_byte(tmp_path):
    data = tmp_path / "data.csv"
    data.write_bytes(b"a,b,c,d\n" + b"1,2,3,4\n" * 5 + b"1,2,3,4\xe9\n")

    line = error_line(score(data, tmp_path / "out.csv"))

    assert line == (
        f"error: {data}: line 7 is not UTF-8 text (byte 0xe9 at byte offset 55: invalid "
        "continuation byte); check that it is a CSV file, saved as UTF-8"
    )


@pytest.mark.parametrize("name", ["data.csv", "data.csv.gz", "data.jsonl"])
def test_a_non_utf8_byte_deep_in_a_file_is_found_on_its_line(tmp_path, name):
    good = '{"a": 1}\n' if name.endswith("jsonl") else "1\n"
    head = ("a\n" if name.startswith("data.csv") else "") + good * 300_000
    content = head.encode() + b"\xff" + good.encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    lines = head.count("\n")

    with pytest.raises(DataError) as caught:
        list(TableReader(path, features=["a"]))

    assert f": line {lines + 1} is not UTF-8 text (byte 0xff at byte offset {len(head)}: " in str(
        caught.value
    )


def test_a_failed_evaluation_leaves_no_rejects_file_of_its_own(tmp_path):
    """The run rejected a row (skip), then failed on a label: nothing of its rejects stays
    behind, under the final name or a temporary one."""
    from anomaly.evaluation import evaluate_file

    frame = rows()
    frame.loc[2, "a"] = np.nan
    frame["label"] = [0, 0, 0, 0, 2, 0]
    data = tmp_path / "labelled.csv"
    frame.to_csv(data, index=False)
    detector = anomaly.load(MODEL)
    detector.config = detector.config.updated(data={"chunk_rows": 3})  # fail in chunk 2
    with pytest.raises(DataError, match="label"):
        evaluate_file(detector, data, "label", on_invalid="skip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labelled.csv"]


def test_an_evaluation_counts_the_rows_it_left_out(tmp_path):
    from anomaly.evaluation import evaluate_file

    frame = rows()
    frame.loc[2, "a"] = np.nan
    frame["label"] = [0, 1, 0, 0, 1, 0]
    data = tmp_path / "labelled.csv"
    frame.to_csv(data, index=False)
    result = evaluate_file(anomaly.load(MODEL), data, "label", on_invalid="skip")
    assert (result.records, result.rows_rejected, result.rows_without_score) == (5, 1, 0)
    # where they went is part of the result (it was written beside the data without a word)
    assert result.to_json()["rejects"] == str(tmp_path / "labelled.csv.rejects.csv")


def test_rejects_that_fail_to_be_written_leave_the_earlier_output_and_rejects_as_they_were(
    tmp_path,
):
    """The rejects are finished before the output is put in place: a full disk while
    flushing them fails the run with the earlier run's two files unchanged."""
    out = tmp_path / "out.csv"
    first = rows()
    first.loc[2, "b"] = np.nan
    first.to_csv(tmp_path / "first.csv", index=False)
    assert score(tmp_path / "first.csv", out, "--on-invalid", "skip").exit_code == 0
    before = {p: p.read_bytes() for p in (out, tmp_path / "out.csv.rejects.csv")}
    second = rows(10)
    second.loc[5, "c"] = np.nan
    second.to_csv(tmp_path / "second.csv", index=False)
    (tmp_path / ".partial-out.csv.rejects.csv").symlink_to("/dev/full")

    result = score(tmp_path / "second.csv", out, "--on-invalid", "skip")

    assert result.exit_code == 2 and "No space left on device" in result.output
    assert {p: p.read_bytes() for p in before} == before


def test_no_rejects_on_a_read_only_folder_is_not_an_error(tmp_path, monkeypatch):
    """Nothing rejected, no earlier rejects file: nothing to remove, so a read-only folder
    beside the data (a mounted volume) does not matter."""
    from anomaly.files import drift_file

    data = tmp_path / "data.csv"
    rows(40).to_csv(data, index=False)
    real_unlink = Path.unlink

    def read_only(path, missing_ok=False):
        if path.parent == tmp_path:
            raise OSError(30, "Read-only file system", str(path))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    assert drift_file(anomaly.load(MODEL), data).rejects is None


def test_binary_ids_that_json_cannot_hold_are_one_error_naming_row_and_column(
    detector_with_ids, tmp_path
):
    data, out = tmp_path / "data.parquet", tmp_path / "out.jsonl"
    with_ids([b"a", b"\x00\xff"]).to_parquet(data)

    with pytest.raises(DataError) as caught:
        score_file(detector_with_ids, data, out)

    assert str(caught.value) == (
        f"cannot write {out}: column 'id' on row 2 holds bytes that are not UTF-8 text, "
        "b'\\x00\\xff', which JSON cannot hold; write CSV or Parquet instead"
    )
    assert list(tmp_path.iterdir()) == [data]
