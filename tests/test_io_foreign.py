"""Data files as other tools write them: pandas' indexes, spreadsheets' exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly.errors import DataError
from anomaly.io import TableReader
from tests._support import read_all


def _records(n: int = 6) -> pd.DataFrame:
    """Features a and b and an id whose values are not a range (pandas would store a range
    index as metadata only)."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"id": [17, 3, 40, 8, 25, 11][:n], "a": rng.normal(size=n), "b": rng.normal(size=n)}
    )


@pytest.mark.parametrize("as_folder", [False, True])
def test_a_parquet_index_named_by_pandas_is_the_column_it_is_stored_as(
    tmp_path: Path, as_folder: bool
):
    frame = _records()
    path = tmp_path / ("data" if as_folder else "data.parquet")
    target = path / "part-0.parquet" if as_folder else path
    target.parent.mkdir(exist_ok=True)
    frame.set_index("id").to_parquet(target)

    chunk = read_all(path, features=["a", "b"], id_column="id")

    assert chunk.ids.tolist() == frame["id"].tolist()
    np.testing.assert_array_equal(chunk.features, frame[["a", "b"]].to_numpy(np.float32))


def test_a_nameless_parquet_index_is_not_a_feature(tmp_path: Path):
    frame = _records()
    frame[frame["a"] > frame["a"].min()].to_parquet(tmp_path / "data.parquet")  # index 1, 2, ...

    assert TableReader(tmp_path / "data.parquet").feature_names == ["id", "a", "b"]


def test_a_csv_column_without_a_name_is_not_a_feature(tmp_path: Path):
    frame = _records()
    frame.to_csv(tmp_path / "indexed.csv")  # pandas' index first, its header field empty
    lines = frame.to_csv(sep=";", index=False).splitlines()  # as a spreadsheet exports:
    (tmp_path / "trailing.csv").write_text("".join(f"{line};;\r\n" for line in lines))

    for name in ("indexed.csv", "trailing.csv"):
        assert TableReader(tmp_path / name).feature_names == ["id", "a", "b"], name
    # Still a column: pandas' index may be the records' id, or a feature once named.
    named = TableReader(tmp_path / "indexed.csv", id_column="Unnamed: 0", features=["a"])
    assert named.feature_names == ["a"]
    assert next(iter(named)).ids.tolist() == [str(i) for i in range(len(frame))]  # text in CSV


def test_decimal_commas_of_a_spreadsheet_export_are_named_as_such(tmp_path: Path):
    path = tmp_path / "export.csv"
    path.write_text("id;a;b\r\n1;0,5;2\r\n2;-1,25;3\r\n")

    with pytest.raises(DataError) as caught:
        read_all(path, features=["a", "b"])

    assert str(caught.value) == (
        f"{path}: column 'a' is not numeric: row 1 has '0,5', row 2 has '-1,25'; numbers with "
        "a comma: save the file with a decimal point and no thousands separator (0.125, 1234.5)"
    )


def test_decimal_comma_columns_are_not_left_out_of_features_picked_by_type(tmp_path: Path):
    """A German spreadsheet's export: 'temp' and 'pressure' are text to the reader. Picked
    by type, the features were 'count' alone, and a model trained on it without a word."""
    path = tmp_path / "export.csv"
    path.write_text("site;temp;pressure;count\r\nA;0,126;-0,132;6\r\nB;12;1,5;7\r\nC;;2,25;8\r\n")

    with pytest.raises(DataError) as caught:
        TableReader(path)

    assert str(caught.value) == (
        f"{path}: column(s) 'temp', 'pressure' hold numbers with a comma (such as '0,126'), "
        "which are text here and would be left out of the features; save the file with a "
        "decimal point and no thousands separator (0.125, 1234.5), or name the feature "
        "columns explicitly to leave them out"
    )
    assert TableReader(path, features=["count"]).feature_names == ["count"]
    path.write_text("site;note;count\r\nA;1,2 and 3;6\r\nB;4,5;7\r\n")  # text, not numbers
    assert TableReader(path).feature_names == ["count"]


def test_json_lines_with_a_byte_order_mark_and_crlf_are_read(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    path.write_text('\ufeff{"a": 1, "b": 2}\r\n{"a": 3, "b": 4}\r\n', encoding="utf-8")

    np.testing.assert_array_equal(read_all(path, chunk_rows=1).features, [[1, 2], [3, 4]])


def test_data_lines_with_a_field_more_than_the_header_are_refused_not_shifted(tmp_path: Path):
    """pandas would take the id for the index and read each value as its left neighbour's."""
    path = tmp_path / "data.csv"
    path.write_text("id,a,b\n1,0.5,2,9\n2,0.25,3,9\n")

    with pytest.raises(DataError) as caught:
        read_all(path, features=["a", "b"], id_column="id")

    assert str(caught.value) == (
        f"{path}: the first data line has 4 fields but the header has 3; name every column in "
        "the header"
    )


def test_a_separator_ending_each_data_line_alone_is_read(tmp_path: Path):
    path = tmp_path / "data.csv"
    path.write_text("id,a,b\n1,0.5,2,\n2,0.25,3,\n")

    chunk = read_all(path, features=["a", "b"], id_column="id")

    assert chunk.ids.tolist() == ["1", "2"]
    np.testing.assert_array_equal(chunk.features, [[0.5, 2], [0.25, 3]])


def _mixed_types(n: int = 40) -> pd.DataFrame:
    """A decimal, a boolean, text and a timestamp beside two columns of numbers."""
    from decimal import Decimal

    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "a": rng.normal(size=n),
            "price": [Decimal(f"{v:.2f}") for v in rng.uniform(1, 9, size=n)],
            "flag": rng.integers(0, 2, size=n).astype(bool),
            "host": ["web"] * n,
            "seen": pd.date_range("2026-01-01", periods=n, freq="min"),
            "b": rng.integers(0, 9, size=n),
        }
    )


def test_features_picked_by_type_are_the_same_from_a_file_and_from_a_table(tmp_path: Path):
    """The command line dropped a decimal column that the Python API used, and the API
    used a boolean column that the command line left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from anomaly import tables

    frame = _mixed_types()
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)

    from_file = TableReader(path, id_column="id").feature_names
    from_table = tables.features_by_type(frame, {"id"})

    assert from_file == from_table == ["a", "price", "b"]
    with pytest.raises(DataError, match="no numeric columns to use as features among 'host'"):
        tables.features_by_type(frame[["host"]], set())  # training said "all the same record"


def test_a_column_with_no_value_is_refused_when_features_are_picked(tmp_path: Path):
    # Picked, it made every row invalid, and the error advised skipping them all.
    path = tmp_path / "data.csv"
    path.write_text("id,a,empty\n1,0.5,\n2,1.5,\n")

    with pytest.raises(DataError, match=r"column\(s\) 'empty' hold no value .*name the feature"):
        TableReader(path, id_column="id")
    assert TableReader(path, id_column="id", features=["a"]).feature_names == ["a"]


def test_a_folders_partition_columns_are_not_features_unless_named(tmp_path: Path):
    # year=2024/month=3/: a month the model never saw would score as an anomaly.
    import pyarrow as pa
    import pyarrow.parquet as pq

    for month in (1, 2):
        folder = tmp_path / "year=2024" / f"month={month}"
        folder.mkdir(parents=True)
        rows = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), folder / "p.parquet")

    assert TableReader(tmp_path).feature_names == ["a", "b"]
    assert TableReader(tmp_path, features=["a", "month"]).feature_names == ["a", "month"]


def test_a_folders_files_numbered_without_padding_are_read_in_number_order(tmp_path: Path):
    # Dask writes part.0 ... part.10: in text order part.10 came before part.2.
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i in range(12):
        rows = pd.DataFrame({"id": [f"r{i}"], "a": [float(i)]})
        pq.write_table(
            pa.Table.from_pandas(rows, preserve_index=False), tmp_path / f"part.{i}.parquet"
        )

    chunk = read_all(tmp_path, id_column="id")

    assert list(chunk.ids) == [f"r{i}" for i in range(12)]


def test_an_id_pandas_kept_as_a_range_index_is_named_as_such(tmp_path: Path):
    # df.set_index("id") over ids 0..n-1: pandas stores no "id" column, only a range.
    path = tmp_path / "indexed.parquet"
    pd.DataFrame({"id": range(5), "a": np.arange(5.0)}).set_index("id").to_parquet(path)

    with pytest.raises(DataError, match=r"'id' is the file's pandas index, kept as a range"):
        TableReader(path, id_column="id")


def test_a_json_lines_column_missing_from_the_first_lines_says_they_decide(tmp_path: Path):
    path = tmp_path / "late.jsonl"
    lines = [f'{{"a": {i}}}' for i in range(1000)] + ['{"a": 1, "c": 2}']
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(DataError, match=r"columns are the keys of its first 1000 lines"):
        TableReader(path, features=["a", "c"])
