"""The file edge: every input format, chunking, conversions, and each error's message."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly.errors import ConfigError, DataError, SchemaError
from anomaly.io import (
    Chunk,
    ResultWriter,
    TableReader,
    describe_invalid,
    find_invalid_rows,
    join_chunks,
)
from tests._support import read_all

COMPRESSIONS = ["", ".gz", ".bz2", ".xz", ".zst"]
TABLE_SUFFIXES = [
    *(".csv" + ending for ending in COMPRESSIONS),
    *(".tsv" + ending for ending in COMPRESSIONS),
    ".parquet",
    ".pq",
    *(".jsonl" + ending for ending in COMPRESSIONS),
    ".ndjson",
    ".json",
]
SUPPORTED = (
    ".csv, .csv.gz, .csv.bz2, .csv.xz, .csv.zst, .tsv, .tsv.gz, .tsv.bz2, .tsv.xz, .tsv.zst, "
    ".parquet, .pq, .jsonl, .jsonl.gz, .jsonl.bz2, .jsonl.xz, .jsonl.zst, .ndjson, .json"
)


def sample_frame(n: int = 10) -> pd.DataFrame:
    """Features a and b, plus a text id, a 0/1 label, an entity and a text column."""
    rows = np.arange(n)
    return pd.DataFrame(
        {
            "id": [f"r{i:03d}" for i in rows],
            "a": rows * 1.5,
            "label": rows % 2,
            "b": rows - 3,
            "host": np.where(rows < n // 2, "web", "db"),
            "note": "text",
        }
    )


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` in the format of ``path``'s extension with pandas itself (which
    compresses by the extension)."""
    if ".csv" in path.suffixes:
        frame.to_csv(path, index=False)
    elif ".tsv" in path.suffixes:
        frame.to_csv(path, index=False, sep="\t")
    elif path.suffix in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


def error_message(path: Path, exc_type: type[Exception] = DataError, **options) -> str:
    """The message of the error raised while opening and reading all of ``path``."""
    with pytest.raises(exc_type) as caught:
        read_all(path, **options)
    return str(caught.value)


# --- Reading every format. ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", TABLE_SUFFIXES)
def test_reads_features_ids_labels_and_entities(tmp_path: Path, suffix: str) -> None:
    frame = sample_frame()
    path = write_table(frame, tmp_path / f"data{suffix}")

    chunk = read_all(path, id_column="id", label_column="label", entity_column="host")

    assert chunk.features.dtype == np.float32
    np.testing.assert_array_equal(chunk.features, frame[["a", "b"]].to_numpy(np.float32))
    np.testing.assert_array_equal(chunk.row_numbers, np.arange(1, 11))
    assert chunk.row_numbers.dtype == np.int64
    assert list(chunk.ids) == list(frame["id"])
    assert chunk.labels.dtype == np.int8
    np.testing.assert_array_equal(chunk.labels, frame["label"])
    assert list(chunk.entities) == list(frame["host"])


@pytest.mark.parametrize("suffix", TABLE_SUFFIXES)
def test_automatic_features_are_numeric_columns_except_roles(tmp_path: Path, suffix: str) -> None:
    path = write_table(sample_frame(), tmp_path / f"data{suffix}")

    with_roles = TableReader(path, id_column="id", label_column="label", entity_column="host")
    without_roles = TableReader(path)

    assert with_roles.feature_names == ["a", "b"]
    assert without_roles.feature_names == ["a", "label", "b"]


@pytest.mark.parametrize("suffix", TABLE_SUFFIXES)
def test_named_features_come_in_the_given_order(tmp_path: Path, suffix: str) -> None:
    frame = sample_frame()
    path = write_table(frame, tmp_path / f"data{suffix}")

    chunk = read_all(path, features=["b", "a"])

    np.testing.assert_array_equal(chunk.features, frame[["b", "a"]].to_numpy(np.float32))
    assert chunk.ids is None and chunk.labels is None and chunk.entities is None


@pytest.mark.parametrize("suffix", [*TABLE_SUFFIXES, ".npy"])
def test_row_numbers_continue_across_chunks(tmp_path: Path, suffix: str) -> None:
    frame = sample_frame(10)
    path = tmp_path / f"data{suffix}"
    if suffix == ".npy":
        np.save(path, frame[["a", "b"]].to_numpy())
    else:
        write_table(frame, path)

    chunks = list(
        TableReader(path, features=["a", "b"] if suffix != ".npy" else None, chunk_rows=3)
    )

    assert all(isinstance(chunk, Chunk) and len(chunk.features) <= 3 for chunk in chunks)
    assert len(chunks) == 4
    np.testing.assert_array_equal(np.concatenate([c.row_numbers for c in chunks]), range(1, 11))
    np.testing.assert_array_equal(
        np.concatenate([c.features for c in chunks]), frame[["a", "b"]].to_numpy(np.float32)
    )


def test_parquet_folder_reads_files_in_path_order_with_partition_columns(tmp_path: Path) -> None:
    """A hive-style folder as Spark writes it: partition values are columns (here the entity),
    files are read in path order, in chunks that do not span files, skipping _SUCCESS."""
    frame = sample_frame(12)
    for host, part in frame.groupby("host"):
        for i, rows in enumerate((part.iloc[:3], part.iloc[3:])):
            folder = tmp_path / f"host={host}"
            folder.mkdir(exist_ok=True)
            write_table(rows.drop(columns="host"), folder / f"part-{i:05d}.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    expected = pd.concat([frame[frame["host"] == "db"], frame[frame["host"] == "web"]])

    reader = TableReader(
        tmp_path, features=["a", "b"], id_column="id", entity_column="host", chunk_rows=2
    )
    chunks = list(reader)
    chunk = join_chunks(reader)

    assert reader.total_rows == 12
    assert [len(c.features) for c in chunks] == [2, 1, 2, 1] * 2
    assert list(chunk.ids) == list(expected["id"])
    assert list(chunk.entities) == list(expected["host"])
    np.testing.assert_array_equal(chunk.features, expected[["a", "b"]].to_numpy(np.float32))
    np.testing.assert_array_equal(chunk.row_numbers, np.arange(1, 13))


def test_parquet_folder_partition_values_keep_their_text(tmp_path: Path) -> None:
    """A folder name is text: ``host=007`` and ``host=7`` are two entities, not both 7, and
    a partition used as the id keeps its leading zeros, as a CSV's ids do."""
    for host in ("007", "7"):
        for day in ("01", "10"):
            folder = tmp_path / f"host={host}" / f"day={day}"
            folder.mkdir(parents=True)
            write_table(pd.DataFrame({"a": [1.0], "b": [2.0]}), folder / "part-0.parquet")

    chunk = read_all(tmp_path, features=["a", "b"], id_column="day", entity_column="host")

    pairs = sorted(zip(chunk.entities, chunk.ids, strict=True))
    assert pairs == [("007", "01"), ("007", "10"), ("7", "01"), ("7", "10")]


def test_a_column_that_is_also_a_folder_name_is_refused_naming_it(tmp_path: Path) -> None:
    """pyarrow said "cannot be read as Parquet (Unable to merge: Field host has incompatible
    types ...)", as if a file were damaged; Spark refuses such a folder too."""
    (tmp_path / "host=007").mkdir()
    write_table(pd.DataFrame({"a": [1.0], "host": ["web"]}), tmp_path / "host=007" / "p.parquet")

    assert error_message(tmp_path) == (
        f"{tmp_path}: column 'host' is both in the Parquet files and a folder name "
        "(host=...); rename the column or the folders"
    )


def test_total_rows_is_known_only_where_it_is_cheap(tmp_path: Path) -> None:
    frame = sample_frame(7)
    np.save(tmp_path / "data.npy", np.zeros((7, 2)))

    assert TableReader(write_table(frame, tmp_path / "data.parquet")).total_rows == 7
    assert TableReader(tmp_path / "data.npy").total_rows == 7
    assert TableReader(write_table(frame, tmp_path / "data.csv")).total_rows is None
    assert TableReader(write_table(frame, tmp_path / "data.jsonl")).total_rows is None


def test_npy_columns_are_named_by_position_and_selectable(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.int32).reshape(4, 3)
    np.save(tmp_path / "data.npy", values)

    reader = TableReader(tmp_path / "data.npy", features=["x2", "x0"])

    assert TableReader(tmp_path / "data.npy").feature_names == ["x0", "x1", "x2"]
    np.testing.assert_array_equal(read_all(tmp_path / "data.npy").features, values)
    np.testing.assert_array_equal(np.concatenate([c.features for c in reader]), values[:, [2, 0]])


def test_csv_ids_keep_their_text(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("id,a\n007,1\n010,2\n")

    assert list(read_all(path, id_column="id").ids) == ["007", "010"]


def test_nan_and_infinite_values_are_read_not_rejected(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\nnan,3\n4,inf\n,-inf\n5,6\n")

    chunk = read_all(path)

    np.testing.assert_array_equal(find_invalid_rows(chunk.features), [0, 1, 1, 1, 0])
    assert np.isnan(chunk.features[1, 0]) and chunk.features[2, 1] == np.inf


def test_values_beyond_float32_become_infinite(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a\n1e300\n-1e300\n")

    np.testing.assert_array_equal(read_all(path).features[:, 0], [np.inf, -np.inf])


def test_blank_lines_are_not_rows(tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text("a\n1\n\n2\n\n")
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"a": 1}\n\n  \n{"a": 2}\n\n')

    for path in (csv, jsonl):
        chunk = read_all(path)
        np.testing.assert_array_equal(chunk.features[:, 0], [1, 2])
        np.testing.assert_array_equal(chunk.row_numbers, [1, 2])


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_csv_separated_otherwise_than_by_commas_reads_as_with_commas(
    tmp_path: Path, separator: str
) -> None:
    frame = sample_frame().assign(note="a, b")  # a comma in a value is no separator
    path = tmp_path / "data.csv"
    frame.to_csv(path, sep=separator, index=False)
    options = {"id_column": "id", "entity_column": "host"}

    chunk = read_all(path, **options)

    expected = read_all(write_table(frame, tmp_path / "commas.csv"), **options)
    np.testing.assert_array_equal(chunk.features, expected.features)
    np.testing.assert_array_equal(chunk.ids, expected.ids)
    np.testing.assert_array_equal(chunk.entities, expected.entities)


def test_jsonl_missing_keys_read_as_nan(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1, "b": 2}\n{"a": 3}\n{"a": NaN, "b": null}\n')

    features = read_all(path, features=["a", "b"]).features

    np.testing.assert_array_equal(find_invalid_rows(features), [False, True, True])


# --- Labels. -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0\n1\n1\n", [0, 1, 1]),
        ("0.0\n1.0\n", [0, 1]),
        ("true\nfalse\n", [1, 0]),
        ("True\nFALSE\n", [1, 0]),
        ("true\n0\n1\n", [1, 0, 1]),
    ],
)
def test_csv_label_spellings(tmp_path: Path, text: str, expected: list[int]) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,y\n" + "".join(f"{i},{v}\n" for i, v in enumerate(text.split())))

    np.testing.assert_array_equal(read_all(path, label_column="y").labels, expected)


def test_json_boolean_and_parquet_float_labels(tmp_path: Path) -> None:
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"a": 1, "y": true}\n{"a": 2, "y": false}\n{"a": 3, "y": 1}\n')
    parquet = write_table(pd.DataFrame({"a": [1.0, 2.0], "y": [1.0, 0.0]}), tmp_path / "d.pq")

    np.testing.assert_array_equal(read_all(jsonl, label_column="y").labels, [1, 0, 1])
    np.testing.assert_array_equal(read_all(parquet, label_column="y").labels, [1, 0])


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        (["0", "1", "2"], "row 3 has 2"),
        (["0", "maybe", "1"], "row 2 has 'maybe'"),
        (["0", "", "1"], "row 2 has no value"),
        (["0.5", "1", "0"], "row 1 has 0.5"),
    ],
)
def test_bad_labels_name_row_and_value(tmp_path: Path, values: list[str], shown: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,y\n" + "".join(f"1,{v}\n" for v in values))

    message = error_message(path, label_column="y")

    assert message == (
        f"{path}: label column 'y' must hold 0/1 or true/false: {shown}; fix or remove those rows"
    )


# --- Invalid-row reports. ----------------------------------------------------------------


def test_find_invalid_rows_flags_nan_and_both_infinities() -> None:
    features = np.array([[1, 2], [np.nan, 0], [0, np.inf], [-np.inf, 1], [3, 4]], np.float32)

    np.testing.assert_array_equal(find_invalid_rows(features), [0, 1, 1, 1, 0])


def test_describe_invalid_names_rows_and_columns() -> None:
    features = np.array([[1, 2, 3], [np.nan, 1, np.inf], [1, -np.inf, 1]], np.float32)

    message = describe_invalid(np.array([4, 5, 9]), features, ["a", "b", "c"], "data.csv")

    assert message == (
        "data.csv: 2 rows have NaN (missing) or infinite values: "
        "row 5 (column 'a' is NaN, column 'c' is inf), row 9 (column 'b' is -inf); "
        "fix them or use --on-invalid skip"
    )


def test_describe_invalid_lists_ten_rows_then_counts() -> None:
    features = np.full((13, 1), np.nan, np.float32)

    message = describe_invalid(np.arange(1, 14), features, ["a"], "data.csv")

    assert message.startswith("data.csv: 13 rows have NaN (missing) or infinite values: row 1 ")
    assert "row 10 (column 'a' is NaN) and 3 more; fix them or use --on-invalid skip" in message
    assert "row 11" not in message


def test_describe_invalid_singular() -> None:
    message = describe_invalid(np.array([7]), np.array([[np.inf]]), ["a"], "x.parquet")

    assert message.startswith("x.parquet: 1 row has NaN (missing) or infinite values: row 7 ")


# --- Errors while opening. ---------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"

    assert error_message(path) == f"file not found: {path}"


def test_a_pipe_is_not_called_missing(tmp_path: Path) -> None:
    path = tmp_path / "fifo.csv"
    os.mkfifo(path)

    assert error_message(path) == (
        f"not a regular file: {path} (a device, pipe or socket cannot be read)"
    )


def test_folder_without_parquet_files(tmp_path: Path) -> None:
    write_table(sample_frame(), tmp_path / "data.csv")
    (tmp_path / "_SUCCESS").write_text("")

    assert error_message(tmp_path) == (
        f"{tmp_path}: is a folder without Parquet files (*.parquet, *.pq); give a data file or "
        "a folder of Parquet files"
    )


def test_parquet_folder_whose_files_disagree_on_a_column(tmp_path: Path) -> None:
    frame = sample_frame()
    write_table(frame, tmp_path / "part-0.parquet")
    write_table(frame.assign(b=frame["b"] / 2), tmp_path / "part-1.parquet")

    assert error_message(tmp_path) == (
        f"{tmp_path}: the Parquet files do not agree on column 'b': int64 in part-0.parquet "
        "but double in part-1.parquet; give a folder whose files have the same columns and types"
    )


@pytest.mark.parametrize(("name", "named"), [("data.txt", "'.txt'"), ("data", "a file without")])
def test_unsupported_extension(tmp_path: Path, name: str, named: str) -> None:
    path = tmp_path / name
    path.write_text("a\n1\n")

    message = error_message(path)

    assert message.startswith(f"{path}: cannot read {named}")
    assert message.endswith(f"supported extensions: {SUPPORTED}, .npy")


def test_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_text("a,b\n1,2\n")

    message = error_message(path)

    assert message.startswith(f"{path}: cannot be read as Parquet (")
    assert message.endswith("check that it is a Parquet file and was fully written")


def test_csv_with_binary_content(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")

    assert error_message(path) == (
        f"{path}: line 1 is not UTF-8 text (byte 0x89 at byte offset 0: invalid start byte); "
        "check that it is a CSV file, saved as UTF-8"
    )


@pytest.mark.parametrize(
    ("name", "content", "start"),
    [
        *(
            pytest.param(f"data.csv{ending}", b"a\n1\n", "cannot be read as CSV (", id=ending)
            for ending in COMPRESSIONS[1:]
        ),
        pytest.param("data.jsonl.xz", b"{}\n", "cannot be read as JSON lines (", id="jsonl-xz"),
        pytest.param(
            "data.npy",
            b"garbage" * 20,
            "cannot be read as .npy (the magic string is not correct",
            id="npy-not-npy",
        ),
    ],
)
def test_file_that_is_not_what_its_extension_says(
    tmp_path: Path, name: str, content: bytes, start: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    assert error_message(path).startswith(f"{path}: {start}")


@pytest.mark.parametrize("ending", COMPRESSIONS[1:])
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_compressed_file_cut_short_is_an_error_not_its_first_rows(
    tmp_path: Path, kind: str, ending: str
) -> None:
    """A truncated download or an interrupted copy: what was cut must not be scored as if
    it were all (``zstandard.open`` returned the rows before the cut, and said nothing)."""
    whole = write_table(sample_frame(5000)[["a", "b"]], tmp_path / f"whole.{kind}{ending}")
    path = tmp_path / f"data.{kind}{ending}"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    reads_as = {"csv": "CSV", "jsonl": "JSON lines"}[kind]

    assert error_message(path).startswith(f"{path}: cannot be read as {reads_as} (")


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_every_frame_of_a_zstandard_file_is_read(tmp_path: Path, kind: str) -> None:
    """zstd on concatenated files, and pzstd, write several frames; the rows of each count."""
    import zstandard

    frame = sample_frame(3000)[["a", "b"]]
    text = write_table(frame, tmp_path / f"whole.{kind}").read_bytes()
    path = tmp_path / f"data.{kind}.zst"
    half = len(text) // 2
    path.write_bytes(b"".join(zstandard.compress(part) for part in (text[:half], text[half:])))

    np.testing.assert_array_equal(read_all(path).features, frame.to_numpy(np.float32))


def test_npy_with_python_objects_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.array([[object()]], dtype=object), allow_pickle=True)
    pickled = tmp_path / "pickle.npy"
    pickled.write_bytes(pickle.dumps([[1.0, 2.0]]))

    assert "Python objects in dtype" in error_message(path)
    assert error_message(pickled).startswith(f"{pickled}: cannot be read as .npy")


def test_npy_must_be_two_dimensional_numbers(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.zeros(5))

    assert error_message(path) == (
        f"{path}: holds a 1-D array of float64; "
        "a .npy input must be a 2-D array of numbers (rows x features)"
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.csv", ""), ("header.csv", "a,b\n"), ("empty.jsonl", ""), ("blank.jsonl", "\n \n")],
)
def test_text_file_without_rows(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)

    assert error_message(path) == f"{path}: has no data rows; check that this is the right file"


def test_parquet_and_npy_without_rows(tmp_path: Path) -> None:
    parquet = write_table(sample_frame().iloc[:0], tmp_path / "data.parquet")
    npy = tmp_path / "data.npy"
    np.save(npy, np.zeros((0, 3)))

    for path in (parquet, npy):
        assert error_message(path) == f"{path}: has no data rows; check that this is the right file"


def test_missing_features_list_missing_and_available(tmp_path: Path) -> None:
    path = write_table(sample_frame(), tmp_path / "data.parquet")

    message = error_message(path, SchemaError, features=["a", "B", "c"], label_column="target")

    assert message == (
        f"{path}: column(s) not found: 'B' (feature), 'c' (feature), 'target' (label column); "
        "available: 'id', 'a', 'label', 'b', 'host', 'note' (names are case-sensitive)"
    )


def test_missing_id_and_entity_columns(tmp_path: Path) -> None:
    path = write_table(sample_frame(), tmp_path / "data.csv")

    message = error_message(path, SchemaError, id_column="key", entity_column="device")

    assert message.startswith(
        f"{path}: column(s) not found: 'key' (id column), 'device' (entity column); available: "
    )


def test_npy_has_no_label_column(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.zeros((3, 2)))

    message = error_message(path, SchemaError, label_column="label")

    assert message.endswith(
        "'label' (label column); available: 'x0', 'x1' (names are case-sensitive)"
    )


def test_feature_that_is_also_the_label(tmp_path: Path) -> None:
    path = write_table(sample_frame(), tmp_path / "data.csv")

    message = error_message(path, ConfigError, features=["a", "label"], label_column="label")

    assert message == (
        "'label' is listed as a feature and as the label column; a column can only have one role"
    )


def test_empty_feature_list(tmp_path: Path) -> None:
    path = write_table(sample_frame(), tmp_path / "data.csv")

    message = error_message(path, ConfigError, features=[])

    assert message == "features is an empty list; name at least one column"


def test_no_numeric_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\nx,y\n")

    assert error_message(path) == (
        f"{path}: no numeric columns to use as features among 'a', 'b'; "
        "name the feature columns explicitly"
    )


def test_errors_are_raised_when_the_reader_is_made(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        TableReader(tmp_path / "absent.parquet")


# --- Errors inside the data, with their line or row. -------------------------------------


def test_csv_row_with_too_many_fields_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b,c\n" + "1,2,3\n" * 10 + "1,2,3,4\n" + "1,2,3\n")

    message = error_message(path, chunk_rows=3)

    assert message == (
        f"{path}: line 12 has 4 fields but the header has 3; "
        "fix that line (is a value with a comma missing its quotes?)"
    )


def test_the_line_named_is_the_files_after_values_that_hold_line_breaks(tmp_path: Path) -> None:
    """pandas numbers records, one per quoted value over several lines; an editor, lines."""
    path = tmp_path / "data.csv.gz"
    lines = ["a,b,note", "1,2,plain", "", '1,2,"two\nlines"', '1,2,"three\n\nlines"', "1,2,x,4"]
    with gzip.open(path, "wt") as handle:
        handle.write("\r\n".join([*lines, "1,2,y"]) + "\r\n")

    assert error_message(path, chunk_rows=2).startswith(f"{path}: line 9 has 4 fields but")


def test_csv_row_with_too_few_fields_reads_as_missing_values(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b,c\n1,2,3\n1,2\n")

    chunk = read_all(path)

    np.testing.assert_array_equal(find_invalid_rows(chunk.features), [False, True])
    assert "row 2 (column 'c' is NaN)" in describe_invalid(
        chunk.row_numbers, chunk.features, ["a", "b", "c"], path
    )


def test_csv_with_unterminated_quote(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('a,b\n1,"2\n3,4\n')

    assert error_message(path, features=["a", "b"]).startswith(f"{path}: cannot be read as CSV (")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_non_numeric_feature_names_column_row_and_value(tmp_path: Path, suffix: str) -> None:
    values = [str(i) for i in range(10)]
    values[5], values[6] = "abc", "1,5"  # both in the second chunk of four rows
    path = write_table(pd.DataFrame({"a": range(10), "b": values}), tmp_path / f"data{suffix}")

    message = error_message(path, features=["a", "b"], chunk_rows=4)

    assert message == (
        f"{path}: column 'b' is not numeric: row 6 has 'abc', row 7 has '1,5'; "
        "fix the values or leave the column out of the features"
    )


@pytest.mark.parametrize("row", [1, 30])
def test_a_value_longer_than_the_csv_modules_limit_is_named_by_its_start(tmp_path, row) -> None:
    """A tester's CSV with a field of 5 MB on its first data line stopped with a traceback
    (the csv module's 128 KiB limit, while the separator was found), and one further down
    was shown whole: a message line of 200 KB."""
    lines = ["a,b"] + [f"{i},{i}" for i in range(40)]
    lines[row] = "1" * 200_000 + ",2"
    path = tmp_path / "data.csv"
    path.write_text("\n".join(lines) + "\n")

    message = error_message(path, features=["a", "b"])

    assert message == (
        f"{path}: column 'a' is not numeric: row {row} has {'1' * 60!r}... (200,000 characters); "
        "fix the values or leave the column out of the features"
    )


@pytest.mark.parametrize("chunk_rows", [65_536, 1])
def test_a_true_or_false_among_numbers_is_not_read_as_one_or_zero(tmp_path, chunk_rows) -> None:
    """A tester's JSON line with ``"a": true`` in a column of numbers was scored as 1.0; a
    reviewer's, in a chunk of its own, still was."""
    path = tmp_path / "data.jsonl"
    records = [{"a": float(i), "b": float(i)} for i in range(6)]
    records[3]["a"] = True
    path.write_text("".join(json.dumps(record) + "\n" for record in records))

    message = error_message(path, features=["a", "b"], chunk_rows=chunk_rows)

    assert message == (
        f"{path}: column 'a' is not numeric: row 4 has True; "
        "fix the values or leave the column out of the features"
    )


def test_a_named_column_of_flags_alone_is_a_boolean_feature(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    records = [{"a": i % 2 == 0, "b": float(i)} for i in range(6)]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))

    (chunk,) = TableReader(path, features=["a", "b"])

    np.testing.assert_array_equal(chunk.features[:, 0], [1, 0, 1, 0, 1, 0])


def test_a_symbolic_link_that_leads_nowhere_is_said_to_be_one(tmp_path: Path) -> None:
    """A tester's loop of two links was reported as "file not found", while it is there."""
    (tmp_path / "one.csv").symlink_to(tmp_path / "two.csv")
    (tmp_path / "two.csv").symlink_to(tmp_path / "one.csv")

    with pytest.raises(DataError) as caught:
        TableReader(tmp_path / "one.csv")

    assert str(caught.value) == (
        f"{tmp_path / 'one.csv'}: a symbolic link to {tmp_path / 'two.csv'}, which leads to no "
        "file (a missing target, or links that lead back to themselves)"
    )


def test_non_numeric_values_beyond_three_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a\n" + "x\n" * 5)

    assert "row 1 has 'x', row 2 has 'x', row 3 has 'x' and at least 2 more;" in error_message(
        path, features=["a"]
    )


def test_jsonl_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n' * 5 + '{"a": 1,,}\n' + '{"a": 1}\n')

    message = error_message(path, chunk_rows=2)

    assert message.startswith(f"{path}: line 6 is not valid JSON (")
    assert message.endswith("""): '{"a": 1,,}'; each line must hold one JSON object""")


def test_jsonl_line_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('{"a": 1}\n[1, 2]\n')

    assert error_message(path) == (
        f"{path}: line 2 holds a JSON list, not an object: '[1, 2]'; "
        'each line must hold one object such as {"a": 1.5, "b": 2}'
    )


@pytest.mark.parametrize(
    ("name", "content", "start"),
    [
        pytest.param(
            "data.jsonl",
            b'{"a": 1}\n{"a": 2} {"a": 3}\n',
            "line 2 is not valid JSON (Extra data",
            id="two-objects-on-a-line",
        ),
        pytest.param(
            "data.json",
            json.dumps([{"a": 1}, {"a": 2}]).encode(),
            "line 1 holds a JSON list, not an object",
            id="json-array-file",
        ),
        pytest.param(
            "data.jsonl",
            b'{"a": "\xff"}\n',
            "line 1 is not UTF-8 text (byte 0xff at byte offset 7: invalid start byte)",
            id="not-utf8",
        ),
    ],
)
def test_json_lines_that_cannot_be_read_are_explained(
    tmp_path: Path, name: str, content: bytes, start: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    assert error_message(path).startswith(f"{path}: {start}")


# --- Writing results. --------------------------------------------------------------------


def result_frame(start: int, n: int) -> pd.DataFrame:
    rows = np.arange(start, start + n)
    return pd.DataFrame(
        {
            "row": rows,
            "id": [f"r{i}" for i in rows],
            "score": rows / 7,
            "is_anomaly": rows % 3 == 0,
            "top_features": ["a,b"] * n,
        }
    )


def read_result(path: Path) -> pd.DataFrame:
    if ".csv" in path.suffixes:
        return pd.read_csv(path, dtype={"id": str, "top_features": str})
    if ".tsv" in path.suffixes:  # written with tabs: a comma stays in top_features
        return pd.read_csv(path, sep="\t", dtype={"id": str, "top_features": str})
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True, dtype={"id": str, "top_features": str})


@pytest.mark.parametrize("suffix", TABLE_SUFFIXES)
def test_result_writer_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "out" / "deeper" / f"scores{suffix}"
    chunks = [result_frame(1, 4), result_frame(5, 3)]

    with ResultWriter(path) as writer:
        for chunk in chunks:
            writer.write(chunk)

    pd.testing.assert_frame_equal(
        read_result(path), pd.concat(chunks, ignore_index=True), check_dtype=False
    )


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl"])
def test_written_results_read_back_with_table_reader(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"scores{suffix}"
    with ResultWriter(path) as writer:
        writer.write(result_frame(1, 5))
        writer.write(result_frame(6, 5))

    chunk = read_all(path, features=["score"], id_column="id", chunk_rows=3)

    np.testing.assert_allclose(chunk.features[:, 0], np.arange(1, 11) / 7, rtol=1e-6)
    assert list(chunk.ids) == [f"r{i}" for i in range(1, 11)]


def test_csv_header_is_written_once(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    with ResultWriter(path) as writer:
        writer.write(pd.DataFrame({"a": [1], "b": ["x"]}))
        writer.write(pd.DataFrame({"a": [2], "b": ["y"]}))

    assert path.read_text() == "a,b\n1,x\n2,y\n"


def test_jsonl_has_one_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "scores.ndjson"
    with ResultWriter(path) as writer:
        writer.write(pd.DataFrame({"a": [1.5, np.nan], "b": ["x", "y"]}))
        writer.write(pd.DataFrame({"a": [0.1], "b": ["z"]}))

    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"a": 1.5, "b": "x"},
        {"a": None, "b": "y"},
        {"a": 0.1, "b": "z"},
    ]


def test_writer_creates_nothing_until_the_first_write(tmp_path: Path) -> None:
    path = tmp_path / "out" / "scores.parquet"
    with ResultWriter(path):
        pass

    assert path.parent.is_dir() and not path.exists()


@pytest.mark.parametrize("name", ["scores.npy", "scores.xlsx"])
def test_writer_rejects_unsupported_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name

    with pytest.raises(DataError) as caught:
        ResultWriter(path)

    assert str(caught.value) == (
        f"{path}: cannot write '{path.suffix}'; supported extensions: {SUPPORTED}"
    )


def test_writer_that_cannot_create_its_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    with pytest.raises(DataError, match="cannot create the folder for"):
        ResultWriter(tmp_path / "file" / "scores.csv")


def test_writer_rejects_chunks_with_other_columns(tmp_path: Path) -> None:
    with ResultWriter(tmp_path / "scores.csv") as writer:
        writer.write(pd.DataFrame({"a": [1]}))
        with pytest.raises(ValueError, match=r"columns \['b'\] differ from \['a'\]"):
            writer.write(pd.DataFrame({"b": [1]}))
