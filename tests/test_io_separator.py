"""How a CSV file's separator is told: a comma file whose column names hold a ';' (units such
as ``temp;C``, or a quoted name) still reads as a comma file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly.io import read_all


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
