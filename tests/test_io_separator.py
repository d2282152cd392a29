"""How a CSV file's separator is told: a comma file whose column names hold a ';' (units such
as ``temp;C``, or a quoted name) still reads as a comma file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly.errors import DataError, SchemaError
from tests._support import read_all


@pytest.mark.parametrize(
    "header",
    [
        'id,"temp;C;avg"',  # quoted, as pandas writes a name holding the separator
        "id,temp;C;avg",  # unquoted: a ';' is no separator in a comma file
    ],
)
def test_comma_csv_whose_names_hold_semicolons_reads_with_commas(
    tmp_path: Path, header: str
) -> None:
    path = tmp_path / "data.csv"
    path.write_text(f"{header}\nr1,1.5\nr2,2.5\nr3,3.5\n")

    chunk = read_all(path, features=["temp;C;avg"], id_column="id")

    np.testing.assert_array_equal(chunk.features[:, 0], [1.5, 2.5, 3.5])
    np.testing.assert_array_equal(chunk.ids, ["r1", "r2", "r3"])


def test_semicolon_csv_with_decimal_commas_in_values_reads_with_semicolons(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a;b;c\n1;2;3\n4;5;6\n")

    chunk = read_all(path)

    np.testing.assert_array_equal(chunk.features, [[1, 2, 3], [4, 5, 6]])


def test_single_column_csv_reads_as_one_column(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("temperature\n1.5\n2.5\n")

    chunk = read_all(path)

    np.testing.assert_array_equal(chunk.features[:, 0], [1.5, 2.5])


def test_excel_separator_line_names_the_separator_and_is_not_a_header(tmp_path: Path) -> None:
    # Excel writes "sep=;" first when asked to keep the separator with the file.
    path = tmp_path / "data.csv"
    path.write_bytes(b"sep=;\r\nid;a;b\r\nr1;1;2\r\nr2;3;4\r\n")

    chunk = read_all(path, id_column="id")

    np.testing.assert_array_equal(chunk.features, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(chunk.ids, ["r1", "r2"])


def test_error_after_an_excel_separator_line_names_the_file_line(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("sep=;\nid;a;b\nr1;1;2\nr2;3;4;5\n")

    with pytest.raises(DataError, match=r"line 4 has 4 fields but the header has 3"):
        read_all(path, id_column="id")


def test_a_name_written_with_spaces_is_named_as_such_when_not_found(tmp_path: Path) -> None:
    # "id, a, b" as people type it: the names are " a" and " b", which a model trained on
    # the file holds, so they are kept; asked for "a", the error shows the name as written.
    path = tmp_path / "data.csv"
    path.write_text("id, a, b\nr1, 1.5, 2\nr2, 2.5, 3\n")

    with pytest.raises(SchemaError, match=r"the file's column is ' a', with its spaces"):
        read_all(path, features=["a", "b"], id_column="id")
    chunk = read_all(path, features=[" a", " b"], id_column="id")
    np.testing.assert_array_equal(chunk.features, [[1.5, 2], [2.5, 3]])


def test_data_lines_ending_in_a_separator_read_without_pandas_warning(tmp_path: Path) -> None:
    # pandas' ParserWarning ("... loss of data with index_col=False") reached the terminal.
    import warnings

    path = tmp_path / "data.csv"
    path.write_text("id,a,b\nr1,1,2,\nr2,3,4,\n")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chunk = read_all(path, id_column="id")

    np.testing.assert_array_equal(chunk.features, [[1, 2], [3, 4]])


def test_tsv_whose_fields_hold_commas_reads_with_tabs(tmp_path: Path) -> None:
    # Split by commas, the header and each line have two fields as well: a tie, which a
    # .tsv name settles for tabs.
    path = tmp_path / "data.tsv"
    path.write_text("city, state\tvalue\nAustin, TX\t3\nBoise, ID\t4\n")

    chunk = read_all(path, features=["value"], id_column="city, state")

    np.testing.assert_array_equal(chunk.features[:, 0], [3, 4])
    np.testing.assert_array_equal(chunk.ids, ["Austin, TX", "Boise, ID"])


def test_tsv_with_a_short_line_reads_with_tabs_though_commas_split_its_header_more(
    tmp_path: Path,
) -> None:
    # No separator splits every line alike (the second line lacks its last field), and
    # commas split the header into more names than tabs: the .tsv name says tabs.
    path = tmp_path / "data.tsv"
    path.write_text("id\tload(1m,5m,15m,30m,1h)\ta\tnote\n1\t0.5\t1\tok\n2\t0.6\t3\n")

    chunk = read_all(path, features=["a"], id_column="id")

    np.testing.assert_array_equal(chunk.features[:, 0], [1, 3])
