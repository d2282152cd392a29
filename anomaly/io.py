"""Reading input tables and writing result tables: the package's file edge.

Inputs are CSV or JSON lines (either optionally compressed: gzip, bzip2, xz or zstd),
Parquet (a file or a folder of files) or a 2-D ``.npy`` array, read in chunks so files larger
than memory can be scored. Every problem a file can have is a ``DataError`` (``SchemaError``
for missing columns) whose message names the file, the line or row and the column, and says
what to do.

Row numbers count data records from 1: a CSV header and blank lines are not rows, so in a
CSV without blank lines, row ``r`` is on file line ``r + 1``. NaN and infinite feature
values are not errors here: ``find_invalid_rows`` finds them and the caller decides whether
to stop (``describe_invalid``) or skip them. pandas' CSV parser pads a row with too few
fields with missing values, so such a row is reported as a row with NaN values; a row with
too many fields is an error naming its line.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import json
import lzma
import math
import os
import re
import sys
import threading
import warnings
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import zstandard
from numpy.lib.format import open_memmap

from anomaly import tables
from anomaly.errors import ConfigError, DataError, SchemaError
from anomaly.zstd import open_zstd

#: Openers of compressed text files by the name's last extension, all called as ``open``: the
#: compressions pandas' CSV reader infers from the same names.
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zst": open_zstd}
#: What a damaged compressed file raises while it is read, besides ``OSError`` (gzip, bz2).
_DAMAGED = (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError)

#: Names of tab-separated files: read as CSV (whose separator is sniffed), written with tabs.
_TSV_ENDINGS = tuple(".tsv" + ending for ending in ("", *_COMPRESSED))
#: File name endings the readers understand, and the format each one means.
_READ_FORMATS = {
    **{".csv" + ending: "csv" for ending in ("", *_COMPRESSED)},
    **dict.fromkeys(_TSV_ENDINGS, "csv"),  # the separator is sniffed
    ".parquet": "parquet",
    ".pq": "parquet",
    **{".jsonl" + ending: "jsonl" for ending in ("", *_COMPRESSED)},
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".npy": "npy",
}
#: Result tables have named, mixed-type columns, which a ``.npy`` array cannot hold.
_WRITE_FORMATS = {suffix: kind for suffix, kind in _READ_FORMATS.items() if kind != "npy"}

#: Rows read when a file is opened, to find its columns and which of them are numeric.
_SAMPLE_ROWS = 1000

#: How many offending rows an error message lists before summarising the rest.
_LISTED_VALUES = 3
#: Characters of a value a message shows (a long one is cut, and its length said).
_SHOWN_CHARACTERS = 60
_LISTED_INVALID_ROWS = 10


@dataclass(frozen=True, eq=False)
class Chunk:
    """Consecutive rows of an input file, converted for the model."""

    features: np.ndarray
    """float32 ``(n, d)`` in ``feature_names`` order; may hold NaN or inf (values beyond
    float32's range read as inf)."""
    row_numbers: np.ndarray
    """int64 ``(n,)``, 1-based data-row numbers in the file (header and blank lines are not
    rows), so messages and rejects can point at rows."""
    ids: np.ndarray | None
    """Values of the id column (text for CSV, as typed otherwise), if one was given."""
    labels: np.ndarray | None
    """int8 0/1 from the label column, if one was given."""
    entities: np.ndarray | None
    """Values of the entity column (time-series grouping), if one was given."""
    beyond_float32: dict[tuple[int, int], float] = field(default_factory=dict)
    """The values read as inf because float32 cannot hold them, by (row number, feature
    index), so that messages can show what the file holds."""


class TableReader:
    """Reads a CSV / Parquet / JSON-lines / .npy file in chunks of at most `chunk_rows` rows.

    The file is opened and its columns resolved here, so a missing file, an unreadable or
    empty one, or missing columns fail before any work starts. Problems further into the
    file (a bad value on row 2,000,000) are raised while iterating.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        features: Sequence[str] | None = None,
        id_column: str | None = None,
        label_column: str | None = None,
        entity_column: str | None = None,
        chunk_rows: int = 65_536,
        label_column_optional: bool = False,
    ) -> None:
        """``label_column_optional``: a file without ``label_column`` reads without labels
        (all its rows normal), as a model's own label column is used where a file has it."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.path = Path(path)
        self.id_column = id_column
        self.label_column = label_column
        self.entity_column = entity_column
        self.chunk_rows = chunk_rows
        self._source = _open_source(self.path, text_columns=[id_column, entity_column])
        dtypes = self._source.dtypes()
        if dtypes is None:
            raise DataError(f"{self.path}: has no data rows; check that this is the right file")
        if label_column_optional and label_column not in dtypes.index:
            self.label_column = label_column = None
        self._label_remedy = (
            "fix or remove those rows, or read the file without labels (this column is the "
            "model's data.label_column)"
            if label_column_optional
            else "fix or remove those rows"
        )
        self.feature_names: list[str] = self._resolve_features(dtypes, features)
        self._flag_columns = frozenset(
            name
            for name in self.feature_names
            if name in dtypes.index and pd.api.types.is_bool_dtype(dtypes[name])
        )
        self.total_rows: int | None = self._source.total_rows
        roles = [id_column, label_column, entity_column]
        self._columns = list(dict.fromkeys(self.feature_names + [c for c in roles if c]))
        self._check_read_columns_are_named_once()

    def __iter__(self) -> Iterator[Chunk]:
        first_row = 1
        for frame in self._source.frames(self.chunk_rows, self._columns):
            rows = np.arange(first_row, first_row + len(frame), dtype=np.int64)
            first_row += len(frame)
            features, beyond = _feature_matrix(
                frame, self.feature_names, rows, self.path, self._flag_columns
            )
            yield Chunk(
                features=features,
                row_numbers=rows,
                ids=None if self.id_column is None else _as_written(frame[self.id_column]),
                labels=None
                if self.label_column is None
                else _labels(frame[self.label_column], rows, self.path, self._label_remedy),
                entities=None
                if self.entity_column is None
                else _entities(frame[self.entity_column], rows, self.path),
                beyond_float32=beyond,
            )

    def _check_read_columns_are_named_once(self) -> None:
        """Refuse a column this run reads whose name the file gives twice: pandas would
        rename the second (CSV: "a.1") or hand back both. Unread repeats do not matter."""
        repeated = self._source.repeated_names()
        if not repeated:
            return
        read = set(self._columns) | {name.rsplit(".", 1)[0] for name in self._columns}
        clash = sorted(repeated & read)
        if clash:
            raise DataError(
                f"{self.path}: column {clash[0]!r} appears more than once in the file; "
                "give every column its own name"
            )

    def _resolve_features(self, dtypes: pd.Series, features: Sequence[str] | None) -> list[str]:
        """Check that every named column exists, or pick the features by type
        (``tables.features_by_type``; a folder's partition columns are not features
        unless named)."""
        roles = {
            name: f"{role} column"
            for role, name in (
                ("id", self.id_column),
                ("label", self.label_column),
                ("entity", self.entity_column),
            )
            if name is not None
        }
        wanted = [(name, "feature") for name in features or []] + list(roles.items())
        absent = [(name, role) for name, role in wanted if name not in dtypes.index]
        if absent:
            missing = ", ".join(f"{name!r} ({role})" for name, role in absent)
            raise SchemaError(
                f"{self.path}: column(s) not found: {missing}; available: "
                f"{_quoted(dtypes.index)} (names are case-sensitive)"
                + self._source.why_not_found([name for name, _ in absent])
            )
        if features is not None:
            if not features:
                raise ConfigError("features is an empty list; name at least one column")
            both = [name for name in features if name in roles]
            if both:
                raise ConfigError(
                    f"{_quoted(both)} is listed as a feature and as the {roles[both[0]]}; "
                    "a column can only have one role"
                )
            for name in features:
                _check_not_temporal(self.path, name, dtypes[name])
            return list(features)
        sample = _sample(self._source, list(dtypes.index))
        self._refuse_numbers_with_a_comma(
            sample,
            [n for n, t in dtypes.items() if n not in roles and pd.api.types.is_string_dtype(t)],
        )
        try:
            return tables.features_by_type(sample, set(roles) | self._source.partition_columns)
        except DataError as exc:
            raise DataError(f"{self.path}: {exc}") from None

    def _refuse_numbers_with_a_comma(self, sample: pd.DataFrame, text_columns: list[str]) -> None:
        """Columns of numbers written with a decimal comma (a spreadsheet's CSV in many
        locales) are text to the reader; picked by type, they would be left out of the
        features without a word, and the model trained on the rest."""
        commas = [name for name in text_columns if _numbers_with_a_comma(sample[name])]
        if commas:
            raise DataError(
                f"{self.path}: column(s) {_quoted(commas)} hold numbers with a comma (such as "
                f"{str(sample[commas[0]].dropna().iloc[0]).strip()!r}), which are text here and "
                f"would be left out of the features; {_COMMA_REMEDY}, or name the feature "
                "columns explicitly to leave them out"
            )


def join_chunks(reader: TableReader) -> Chunk:
    """Every chunk of an opened reader as one chunk."""
    chunks = list(reader)

    def joined(field: str) -> np.ndarray | None:
        parts = [getattr(chunk, field) for chunk in chunks]
        return None if parts[0] is None else np.concatenate(parts)

    return Chunk(
        features=np.concatenate([chunk.features for chunk in chunks]),
        row_numbers=np.concatenate([chunk.row_numbers for chunk in chunks]),
        ids=joined("ids"),
        labels=joined("labels"),
        entities=joined("entities"),
        beyond_float32={key: v for chunk in chunks for key, v in chunk.beyond_float32.items()},
    )


def find_invalid_rows(features: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows with a NaN or infinite value in any feature."""
    return ~np.isfinite(features).all(axis=1)


#: What to do about rows with NaN or infinite values, for the commands that can skip them.
SKIP_REMEDY = "fix them or use --on-invalid skip"


def describe_invalid(
    row_numbers: np.ndarray,
    features: np.ndarray,
    feature_names: Sequence[str],
    path: str | os.PathLike[str],
    remedy: str = SKIP_REMEDY,
    beyond_float32: Mapping[tuple[int, int], float] | None = None,
) -> str:
    """A message naming the rows with NaN or infinite values and the columns that hold them,
    ending with ``remedy``: what the user can do. ``beyond_float32`` (``Chunk``'s) shows the
    values that are inf only as float32 as the file holds them.

    Pass all rows or only the invalid ones; the first ten invalid rows are listed.
    """
    invalid = find_invalid_rows(features)
    rows, values = row_numbers[invalid], features[invalid]
    listed = [
        f"row {row} ({_bad_columns(row, row_values, feature_names, beyond_float32 or {})})"
        for row, row_values in zip(
            rows[:_LISTED_INVALID_ROWS], values[:_LISTED_INVALID_ROWS], strict=True
        )
    ]
    more = len(rows) - len(listed)
    count = "1 row has" if len(rows) == 1 else f"{len(rows)} rows have"
    return (
        f"{path}: {count} NaN (missing) or infinite values: {', '.join(listed)}"
        + (f" and {more} more" if more else "")
        + f"; {remedy}"
    )


class ResultWriter:
    """Writes result tables chunk by chunk; format from the output extension.

    CSV gets its header once, JSON lines one object per line, Parquet one file whose column
    types are the first chunk's, except that a column of text, of missing values only or of
    mixed types is text, later values written as their text (an id column empty or mixed in
    the first chunk must not fix a type its later values cannot have). Nothing is created
    until the first ``write``. Problems are ``DataError``s naming ``final``, the path the
    user chose, where ``path`` is a temporary name for it.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, final: str | os.PathLike[str] | None = None
    ) -> None:
        self.path = Path(path)
        self.final = self.path if final is None else Path(final)
        self._format = _format_of(self.path, _WRITE_FORMATS, "write")
        self._separator = "\t" if _is_tsv(self.path) else ","
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the folder for {self.final}: {exc}") from None
        self._columns: list[str] | None = None
        self._text: TextIO | None = None
        self._parquet: pq.ParquetWriter | None = None

    def write(self, frame: pd.DataFrame) -> None:
        """Append the rows of ``frame``, whose columns must be those of the first chunk (a
        result table, whose ``row`` column holds the input's row numbers)."""
        first = self._columns is None
        if first:
            self._open(frame)
        elif list(frame.columns) != self._columns:
            raise ValueError(f"columns {list(frame.columns)} differ from {self._columns}")
        try:
            if self._parquet is not None:
                self._parquet.write_table(self._arrow_table(frame))
            elif self._format == "csv":
                frame.to_csv(self._text, header=first, index=False, sep=self._separator)
            else:
                frame.to_json(  # timestamps to the nanosecond: pandas' default cuts to ms
                    self._text,
                    orient="records",
                    lines=True,
                    double_precision=15,
                    date_format="iso",
                    date_unit="ns",
                )
        except OSError as exc:
            raise cannot_write(self.final, exc) from None
        except UnicodeDecodeError:  # bytes (a Parquet binary id) JSON cannot hold as text
            name, i = next(
                (name, int(np.argmax(found)))
                for name in frame.columns
                if (found := frame[name].map(_is_not_utf8)).any()
            )
            raise DataError(
                f"cannot write {self.final}: column {name!r} on row {frame['row'].iloc[i]} holds "
                f"bytes that are not UTF-8 text, {_show(frame[name].iloc[i])}, which JSON cannot "
                "hold; write CSV or Parquet instead"
            ) from None

    def close(self) -> None:
        """Finish the file (Parquet writes its footer here); safe to call twice."""
        try:
            if self._parquet is not None:
                self._parquet.close()
            if self._text is not None:
                self._text.close()
        except OSError as exc:
            raise cannot_write(self.final, exc) from None

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:  # the file is abandoned; the error that stopped the writing is the one to tell
            with contextlib.suppress(DataError):
                self.close()

    def _open(self, frame: pd.DataFrame) -> None:
        self._columns = list(frame.columns)
        try:
            if self._format == "parquet":
                self._parquet = pq.ParquetWriter(self.path, _parquet_schema(frame))
            else:
                self._text = _open_text(self.path, "w")
        except OSError as exc:
            raise cannot_write(self.final, exc) from None

    def _arrow_table(self, frame: pd.DataFrame) -> pa.Table:
        """``frame`` in the file's column types; a value that does not fit stops, naming its
        row."""
        schema = self._parquet.schema
        converted = frame.assign(
            **{f.name: _as_text(frame[f.name]) for f in schema if _is_text(f.type)}
        )
        for column in schema:
            if pa.types.is_integer(column.type):
                cut = np.flatnonzero(_fractions(converted[column.name]))
                if len(cut):  # pyarrow would cut 2.9 to 2 without a word
                    raise self._type_change(converted, column.name, column.type, int(cut[0]))
        try:
            return pa.Table.from_pandas(converted, schema=schema, preserve_index=False)
        except pa.ArrowException:
            name, kind = next(
                (f.name, f.type) for f in schema if not _fits(converted[f.name], f.type)
            )
            raise self._type_change(
                converted, name, kind, _first_misfit(converted[name], kind)
            ) from None

    def _type_change(self, frame: pd.DataFrame, name: str, kind: pa.DataType, i: int):
        """The error for row ``i`` of ``frame``, whose value in column ``name`` a Parquet
        column of ``kind`` (the first chunk's type) cannot hold."""
        return DataError(
            f"cannot write {self.final}: column {name!r} changes type at row "
            f"{frame['row'].iloc[i]}, which has {_show(frame[name].iloc[i])} after {kind} "
            "values; a Parquet column has one type: write CSV or JSON lines instead, or give "
            "the column values of one type"
        )


def cannot_write(path: str | os.PathLike[str], exc: OSError) -> DataError:
    """The error for an ``OSError`` met writing ``path``, e.g. "cannot write out.csv: No space
    left on device" (the errno's text: the exception's own may name a temporary file)."""
    return DataError(f"cannot write {path}: {os.strerror(exc.errno) if exc.errno else exc}")


def _parquet_schema(frame: pd.DataFrame) -> pa.Schema:
    """The first chunk's column types, text where a column holds text, nothing (all values
    missing) or values of mixed types."""
    fields = []
    for name in frame.columns:
        try:
            kind = pa.array(frame[name], from_pandas=True).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed, such as 0, 1, "abc"
            kind = _TEXT
        fields.append(pa.field(name, _TEXT if pa.types.is_null(kind) or _is_text(kind) else kind))
    return pa.schema(fields)


#: Parquet's type for text columns: the one pandas writes its own text columns as.
_TEXT = pa.large_string()


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _as_text(values: pd.Series) -> pd.Series:
    """Each value as its text (1 -> "1"), missing values kept missing."""
    if isinstance(values.dtype, pd.StringDtype) or pd.api.types.infer_dtype(values) in (
        "string",
        "empty",
    ):
        return values  # text already (a CSV's ids always are): no pass in Python per value
    return values.map(str, na_action="ignore")


def _fractions(values: pd.Series) -> np.ndarray:
    """Which ``values`` are numbers with a fraction (2.9; not 3.0, NaN or text)."""
    if pd.api.types.is_float_dtype(values.dtype):
        numbers = values.to_numpy(np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            return np.isfinite(numbers) & (np.floor(numbers) != numbers)
    if values.dtype != object:
        return np.zeros(len(values), bool)
    return values.map(
        lambda v: (
            isinstance(v, float | np.floating) and math.isfinite(v) and not float(v).is_integer()
        ),
        na_action="ignore",
    ).to_numpy(dtype=bool, na_value=False)


def _fits(values: pd.Series, kind: pa.DataType) -> bool:
    try:
        pa.array(values, type=kind, from_pandas=True)
    except pa.ArrowException:
        return False
    return True


def _first_misfit(values: pd.Series, kind: pa.DataType) -> int:
    """The position of the first value that ``kind`` cannot hold (``values`` has one)."""
    fitting, misfitting = 0, len(values)  # lengths of a prefix that fits and one that does not
    while misfitting - fitting > 1:
        middle = (fitting + misfitting) // 2
        if _fits(values.iloc[:middle], kind):
            fitting = middle
        else:
            misfitting = middle
    return fitting


# --- Sources: one per format, each yielding pandas frames of at least one row. ---------


class _Source(Protocol):
    total_rows: int | None
    partition_columns: frozenset[str]
    """Columns a folder's layout gives (``host=web/``), not its files."""

    def dtypes(self) -> pd.Series | None:
        """Column name -> pandas dtype; None when the file has no data rows."""
        ...

    def frames(self, chunk_rows: int, columns: list[str] | None) -> Iterator[pd.DataFrame]:
        """Non-empty frames of at most ``chunk_rows`` rows holding ``columns`` (None: all)."""
        ...

    def repeated_names(self) -> set[str]:
        """Column names the file gives more than once."""
        ...

    def why_not_found(self, names: list[str]) -> str:
        """What the format says about columns ``names`` not found ("; ..."), or ""."""
        ...


def _open_source(path: Path, text_columns: list[str | None]) -> _Source:
    if path.is_dir():
        return _ParquetFolderSource(path)
    if not path.exists():
        if path.is_symlink():  # exists() follows the link
            raise DataError(
                f"{path}: a symbolic link to {os.readlink(path)}, which leads to no file (a "
                "missing target, or links that lead back to themselves)"
            )
        raise DataError(f"file not found: {path}")
    if not path.is_file():
        raise DataError(f"not a regular file: {path} (a device, pipe or socket cannot be read)")
    kind = _format_of(path, _READ_FORMATS, "read")
    kept = [name for name in text_columns if name is not None]
    if kind == "csv":
        return _CsvSource(path, kept)
    if kind == "jsonl":
        return _JsonLinesSource(path, kept)
    if kind == "parquet":
        return _ParquetSource(path)
    return _NpySource(path)


#: Each open source's first rows, read once: a text file's column types are inferred from
#: them, then its features picked by type from the same rows (opening a CSV file of 2,000
#: columns took 1.3 s with a second read, 0.8 s without).
_first_rows: weakref.WeakKeyDictionary[_Source, tuple[list[str] | None, pd.DataFrame]] = (
    weakref.WeakKeyDictionary()
)


def _sample(source: _Source, columns: list[str] | None = None) -> pd.DataFrame | None:
    """The first rows of a file (of ``columns``; None: all); None when it has none."""
    asked, read = _first_rows.get(source, (None, None))
    if read is not None and (asked == columns or (asked is None and columns == list(read.columns))):
        return read
    frames = source.frames(_SAMPLE_ROWS, columns)
    try:
        sample = next(frames, None)
    finally:
        frames.close()
    if sample is not None:
        _first_rows[source] = (None if columns is None else list(columns), sample)
    return sample


def _sampled_dtypes(source: _Source) -> pd.Series | None:
    """Column types of a text file, inferred from its first rows as pandas reads them."""
    sample = _sample(source)
    return None if sample is None else sample.dtypes


#: What pandas reads as a missing value by default (its documented ``na_values`` list),
#: kept for every column but the id and entity columns.
_PANDAS_MISSING = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip


#: The separators a CSV file may use, the default first.
_SEPARATORS = (",", ";", "\t", "|")
#: Data lines after the header that the separator must split as it splits the header.
_SNIFFED_LINES = 20
#: The csv module's limit on a field's length while the header is sniffed (its largest).
_LONGEST_FIELD = 2**31 - 1
_FIELD_LIMIT_LOCK = threading.Lock()
#: The first line Excel writes to name a CSV file's separator.
_EXCEL_SEPARATOR_LINE = re.compile(r"sep=(.)")


class _CsvHeader(NamedTuple):
    """What a CSV file's first lines say about how to read it."""

    separator: str
    names: list[str]
    extra_values: int  # fields the first data line has past the header's names
    skipped_lines: int  # lines before the header (Excel's ``sep=;``)


class _CsvSource:
    """CSV through pandas' C parser, whose errors name the file line.

    Id and entity columns are kept as text so "007" stays "007" and every chunk has the
    same type, and only an empty field is missing there: "NA" (Namibia, North America) or
    "null" is a value, which pandas would read as missing. All columns are parsed (not only
    the needed ones) because pandas only checks the field count of the columns it parses.
    """

    total_rows = None
    partition_columns: frozenset[str] = frozenset()

    def __init__(self, path: Path, text_columns: list[str]) -> None:
        self.path = path
        self._dtypes = dict.fromkeys(text_columns, str)

    @cached_property
    def _header(self) -> _CsvHeader:
        """The separator and the column names (read once: a compressed file is not opened
        and unpacked again for each question). The separator is the one of ``_SEPARATORS``
        that splits the header into the most names and the first data lines into as many
        fields (a comma when none splits it), so a file saved with semicolons (Excel's in
        many locales), tabs or bars reads as it is, and a comma file whose names hold a ';'
        (``temp;C``) as a comma file. When none splits every line alike, the one that splits
        the header into the most names (a line with a field too many is then pandas' error).
        Excel's ``sep=;`` first line names the separator itself and is skipped; a ``.tsv``
        name says tabs wherever they split the header."""
        with _open_text(self.path, "r") as handle:
            lines = [handle.readline() for _ in range(2 + _SNIFFED_LINES)]
        lines[0] = lines[0].removeprefix("\ufeff")  # pandas drops a byte-order mark
        named = _EXCEL_SEPARATOR_LINE.fullmatch(lines[0].rstrip("\r\n"))
        skipped = 1 if named else 0
        lines = lines[skipped : skipped + 1 + _SNIFFED_LINES]
        rows = {sep: _split(lines, sep) for sep in _SEPARATORS}
        splits = {sep: found[0] if found else [] for sep, found in rows.items()}
        splitting = [sep for sep in _SEPARATORS if len(splits[sep]) > 1]
        even = [sep for sep in splitting if all(len(r) == len(splits[sep]) for r in rows[sep][1:])]
        if named:
            separator = named.group(1)
        elif _is_tsv(self.path) and "\t" in splitting:  # its fields may hold commas
            separator = "\t"
        else:
            separator = max(even or splitting or _SEPARATORS, key=lambda sep: len(splits[sep]))
        if separator not in rows:  # a separator named by the file that we do not sniff
            rows[separator] = _split(lines, separator)
        names = rows[separator][0] if rows[separator] else []
        first_data = rows[separator][1:2]
        extra = (
            [field for field in first_data[0][len(names) :] if field.strip()] if first_data else []
        )
        return _CsvHeader(separator, names, len(extra), skipped)

    def _missing_values(self, names: list[str]) -> dict[int, tuple[str, ...]]:
        """``na_values`` by column position (pandas renames repeated names): pandas'
        defaults, but only the empty field in the text columns."""
        return {
            i: ("",) if name in self._dtypes else _PANDAS_MISSING for i, name in enumerate(names)
        }

    def dtypes(self) -> pd.Series | None:
        return _sampled_dtypes(self)

    def why_not_found(self, names: list[str]) -> str:
        """A name written with spaces around it (``id, a, b``: `` a``), which are part of
        it (a model trained on such a file has them in its features)."""
        spaced = {name.strip(): name for name in self._header.names if name != name.strip()}
        found = [spaced[name.strip()] for name in names if name.strip() in spaced]
        if not found:
            return ""
        return (
            f"; the file's column is {found[0]!r}, with its spaces: name it so, or save the "
            "file without spaces around the separators"
        )

    def repeated_names(self) -> set[str]:
        # pandas renames a repeated name ("a" again becomes "a.1"), and names empty names
        # apart ("Unnamed: 3"), so only named ones can repeat.
        return _repeated([name for name in self._header.names if name])

    def _line_of_record(self, record: int) -> int:
        """The file line on which record ``record`` (1-based, the header first, as pandas
        numbers them in its errors) ends: a quoted value holding a line break is one record
        over several lines, which pandas counts as one."""
        try:
            header = self._header
            with _open_text(self.path, "r") as handle:
                reader = csv.reader(handle, delimiter=header.separator)
                for _ in islice(reader, header.skipped_lines + record):
                    pass
                return reader.line_num
        except (csv.Error, ValueError):  # a NUL byte, text that is not UTF-8: pandas' number
            return record

    def frames(self, chunk_rows: int, columns: list[str] | None) -> Iterator[pd.DataFrame]:
        try:
            header = self._header
            names = header.names
            if header.extra_values:
                # pandas would take the first column for the index, every value then read as
                # its left neighbour's column, or (index_col=False) drop the last, silently.
                raise DataError(
                    f"{self.path}: the first data line has {len(names) + header.extra_values} "
                    f"fields but "
                    f"the header has {len(names)}; name every column in the header"
                )
            # Opened here, not by pandas, whose Zstandard reader takes a cut file as whole.
            with (
                _open_binary(self.path) as handle,
                pd.read_csv(
                    handle,
                    sep=header.separator,
                    skiprows=header.skipped_lines,
                    chunksize=chunk_rows,
                    dtype=self._dtypes,
                    index_col=False,
                    keep_default_na=False,
                    na_values=self._missing_values(names),
                ) as chunks,
            ):
                while (frame := _next_quietly(chunks)) is not None:
                    if len(frame):
                        yield frame if columns is None else frame[columns]
        except pd.errors.EmptyDataError:
            return
        except pd.errors.ParserError as exc:
            counts = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
            if counts is None:
                raise _unreadable(self.path, "CSV", str(exc)) from None
            expected, record, seen = counts.groups()
            line = self._line_of_record(int(record))
            raise DataError(
                f"{self.path}: line {line} has {seen} fields but the header has {expected}; "
                "fix that line (is a value with a comma missing its quotes?)"
            ) from None
        except UnicodeDecodeError as exc:
            raise _not_utf8(self.path, "CSV", exc) from None
        except _DAMAGED as exc:
            raise _unreadable(self.path, "CSV", str(exc)) from None


def _next_quietly(chunks: Iterator[pd.DataFrame]) -> pd.DataFrame | None:
    """The next chunk of pandas' reader, without its warning about data lines that end in
    a separator the header does not (a field past the header that holds a value is refused
    before: ``_CsvHeader.extra_values``), which went to the user's terminal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Length of header", pd.errors.ParserWarning)
        return next(chunks, None)


class _JsonLinesSource:
    """One JSON object per line; blank lines are skipped. Id and entity columns keep the
    values as parsed: pandas would make integers with a null among them floats, and
    2**60 + 1 would read as 2**60."""

    total_rows = None
    partition_columns: frozenset[str] = frozenset()

    def __init__(self, path: Path, kept_columns: list[str]) -> None:
        self.path = path
        self._kept = kept_columns

    def repeated_names(self) -> set[str]:
        return set()  # one key per object: a JSON reader keeps the last

    def why_not_found(self, names: list[str]) -> str:
        return f"; a JSON lines file's columns are the keys of its first {_SAMPLE_ROWS} lines"

    def dtypes(self) -> pd.Series | None:
        return _sampled_dtypes(self)

    def frames(self, chunk_rows: int, columns: list[str] | None) -> Iterator[pd.DataFrame]:
        first_line = 1
        try:
            with _open_text(self.path, "r") as handle:
                while lines := list(islice(handle, chunk_rows)):
                    if first_line == 1:  # a byte-order mark, as Windows PowerShell writes
                        lines[0] = lines[0].removeprefix("\ufeff")
                    records = _parse_json_lines(lines, first_line, self.path)
                    first_line += len(lines)
                    if records:
                        yield self._frame(records, columns)
        except UnicodeDecodeError as exc:
            raise _not_utf8(self.path, "JSON lines", exc) from None
        except _DAMAGED as exc:
            raise _unreadable(self.path, "JSON lines", str(exc)) from None

    def _frame(self, records: list[dict[str, Any]], columns: list[str] | None) -> pd.DataFrame:
        frame = pd.DataFrame(records, columns=columns)
        for name in frame.columns.intersection(self._kept):
            values = [record.get(name) for record in records]
            frame[name] = pd.Series(values, index=frame.index, dtype=object)
        return frame


def _parse_json_lines(lines: list[str], first_line: int, path: Path) -> list[dict[str, Any]]:
    """Parse a block of lines in one call; line by line only to skip blanks or name an error."""
    try:
        records = json.loads("[" + ",".join(lines) + "]")
    except (ValueError, RecursionError):
        records = None
    # A blank line fails the block; two values on one line, or one object spread over
    # lines, parse into the wrong number of records.
    if records is not None and len(records) == len(lines):
        if all(isinstance(record, dict) for record in records):
            return records
    return [
        _parse_json_line(line, number, path)
        for number, line in enumerate(lines, start=first_line)
        if line.strip()
    ]


def _parse_json_line(line: str, number: int, path: Path) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise DataError(
            f"{path}: line {number} is not valid JSON ({exc}): {_clip(line)}; "
            "each line must hold one JSON object"
        ) from None
    except RecursionError:
        raise DataError(
            f"{path}: line {number} nests arrays or objects deeper than can be read "
            f"({sys.getrecursionlimit()} levels or so): {_clip(line)}; each line must hold one "
            "JSON object of values"
        ) from None
    if not isinstance(record, dict):
        raise DataError(
            f"{path}: line {number} holds a JSON {type(record).__name__}, not an object: "
            f'{_clip(line)}; each line must hold one object such as {{"a": 1.5, "b": 2}}'
        )
    return record


class _ParquetSource:
    """Parquet in record batches of the needed columns only; types and row count come from
    the footer (features picked by type read the first rows too)."""

    partition_columns: frozenset[str] = frozenset()

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            metadata = pq.read_metadata(path)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(path, "Parquet", str(exc)) from None
        self.total_rows: int | None = metadata.num_rows
        arrow_schema = metadata.schema.to_arrow_schema()
        self._schema = _stored_columns(arrow_schema)
        self._range_indexes = _range_indexes(arrow_schema)

    def repeated_names(self) -> set[str]:
        return _repeated(self._schema.names)

    def why_not_found(self, names: list[str]) -> str:
        """pandas keeps an index of evenly spaced values (``df.set_index("id")`` over ids
        0, 1, 2, ...) as a range in the file's metadata, not as a column."""
        found = [name for name in names if name in self._range_indexes]
        if not found:
            return ""
        return (
            f"; {found[0]!r} is the file's pandas index, kept as a range in its metadata, not "
            "as a column: write it as one (df.reset_index().to_parquet(...))"
        )

    def dtypes(self) -> pd.Series | None:
        if not self.total_rows:
            return None
        return self._schema.empty_table().to_pandas(types_mapper=_NULLABLE_INTEGERS.get).dtypes

    def frames(self, chunk_rows: int, columns: list[str] | None) -> Iterator[pd.DataFrame]:
        try:
            for batch in self._batches(chunk_rows, columns):
                if batch.num_rows:
                    yield batch.to_pandas(types_mapper=_NULLABLE_INTEGERS.get, ignore_metadata=True)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(self.path, "Parquet", str(exc)) from None

    def _batches(self, chunk_rows: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        with pq.ParquetFile(self.path) as file:
            yield from file.iter_batches(batch_size=chunk_rows, columns=columns)


class _ParquetFolderSource(_ParquetSource):
    """A folder of Parquet files, as Spark writes and reads one, through ``pyarrow.dataset``.

    Its ``*.parquet`` and ``*.pq`` files are read in the order of their paths, numbers in
    them compared as numbers (``part.2`` before ``part.10``), so row numbers are the same on
    every run, skipping names starting with "." or "_" (Spark's ``_SUCCESS``,
    checksums); hive-style folder names (``host=web/``) are columns, usable as id or entity
    columns. The files must agree on their columns and types."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._dataset, self.partition_columns = _folder_dataset(path)
            fragments = list(self._dataset.get_fragments())
            _check_same_columns(path, fragments)
            self.total_rows = sum(fragment.metadata.num_rows for fragment in fragments)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(path, "Parquet", str(exc)) from None
        self._schema = _stored_columns(self._dataset.schema)
        self._range_indexes = _range_indexes(self._dataset.schema)

    def _batches(self, chunk_rows: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        # In file order, with a few batches read ahead: memory stays bounded.
        return self._dataset.to_batches(columns=columns, batch_size=chunk_rows)


#: The columns pandas stores a nameless index in (``df.to_parquet()`` after filtering rows).
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")


def _stored_columns(schema: pa.Schema) -> pa.Schema:
    """The columns of a Parquet ``schema`` as stored, pandas' metadata left out (``frames``
    reads without it too): with it, pandas reads a named index (``df.set_index("id")``) as
    the frame's index, and the file's ``id`` column would be "not found". A nameless index
    holds row labels, not data, and is left out."""
    return pa.schema([f for f in schema if not _PANDAS_INDEX.fullmatch(f.name)])


def _range_indexes(schema: pa.Schema) -> set[str]:
    """The names of the indexes pandas kept as a range in ``schema``'s metadata."""
    try:
        indexes = (schema.pandas_metadata or {}).get("index_columns", [])
    except ValueError:  # metadata that is not JSON
        return set()
    return {i.get("name") for i in indexes if isinstance(i, dict) and i.get("kind") == "range"}


def _folder_dataset(folder: Path) -> tuple[ds.Dataset, frozenset[str]]:
    """The Parquet files of ``folder`` as one dataset, in path order (``_ParquetSource``),
    and the names of its partition columns."""
    files = sorted(
        (
            str(file)
            for file in folder.rglob("*")
            if file.suffix.lower() in (".parquet", ".pq")
            and not any(part.startswith((".", "_")) for part in file.relative_to(folder).parts)
            and file.is_file()
        ),
        key=_natural_order,
    )
    if not files:
        raise DataError(
            f"{folder}: is a folder without Parquet files (*.parquet, *.pq); give a data file "
            "or a folder of Parquet files"
        )
    partitions = list(
        dict.fromkeys(
            part.split("=", 1)[0]
            for file in files
            for part in Path(file).relative_to(folder).parts[:-1]
            if "=" in part
        )
    )
    stored = pq.read_schema(files[0]).names
    if clash := [name for name in partitions if name in stored]:
        raise DataError(
            f"{folder}: column {clash[0]!r} is both in the Parquet files and a folder name "
            f"({clash[0]}=...); rename the column or the folders"
        )
    # A folder name is text: ``host=007`` is the entity "007", not 7, which would also merge
    # it with ``host=7``, as pyarrow's discovery of hive folders would infer.
    as_text = pa.schema([(name, pa.string()) for name in partitions])
    dataset = ds.dataset(
        files,
        format="parquet",
        partitioning=ds.partitioning(as_text, flavor="hive") if partitions else None,
        partition_base_dir=str(folder),
    )
    return dataset, frozenset(partitions)


def _natural_order(path: str) -> list:
    """Paths with their numbers compared as numbers: ``part.2`` before ``part.10``, as Dask
    and others number their files without padding."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _check_same_columns(path: Path, fragments: list[ds.ParquetFileFragment]) -> None:
    """Refuse files of a folder that differ in a column's presence or type: pyarrow would
    take the first file's and fail, or fill nulls, further on."""
    first, *others = fragments
    expected = _column_types(first)
    for fragment in others:
        found = _column_types(fragment)
        differ = next((n for n in {**expected, **found} if expected.get(n) != found.get(n)), None)
        if differ is not None:
            raise DataError(
                f"{path}: the Parquet files do not agree on column {differ!r}: "
                f"{expected.get(differ, 'missing')} in {_relative(first, path)} but "
                f"{found.get(differ, 'missing')} in {_relative(fragment, path)}; give a folder "
                "whose files have the same columns and types"
            )


def _column_types(fragment: ds.ParquetFileFragment) -> dict[str, pa.DataType]:
    schema = fragment.physical_schema
    return dict(zip(schema.names, schema.types, strict=True))


def _relative(fragment: ds.ParquetFileFragment, folder: Path) -> str:
    return str(Path(fragment.path).relative_to(folder))


#: Arrow's integer types as pandas' nullable ones: by default a column of integers with a null
#: becomes float64, which changes ids beyond 2**53 and the id column's type between chunks.
_NULLABLE_INTEGERS = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
}


class _NpySource:
    """A 2-D numeric ``.npy`` array, memory-mapped (never unpickled); columns x0, x1, ..."""

    partition_columns: frozenset[str] = frozenset()

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._array = open_memmap(path, mode="r")
        except (ValueError, OSError) as exc:
            raise _unreadable(path, ".npy", str(exc)) from None
        if self._array.ndim != 2 or self._array.dtype.kind not in "iuf":
            raise DataError(
                f"{path}: holds a {self._array.ndim}-D array of {self._array.dtype}; "
                "a .npy input must be a 2-D array of numbers (rows x features)"
            )
        self.total_rows: int | None = self._array.shape[0]
        self._names = tables.positional_names(self._array.shape[1])

    def repeated_names(self) -> set[str]:
        return set()  # columns x0, x1, ...

    def why_not_found(self, names: list[str]) -> str:
        return ""  # the available columns say it: x0, x1, ...

    def dtypes(self) -> pd.Series | None:
        return pd.Series(self._array.dtype, index=self._names) if self.total_rows else None

    def frames(self, chunk_rows: int, columns: list[str] | None) -> Iterator[pd.DataFrame]:
        for start in range(0, self._array.shape[0], chunk_rows):
            frame = pd.DataFrame(self._array[start : start + chunk_rows], columns=self._names)
            yield frame if columns is None else frame[columns]


# --- Conversions and messages. ----------------------------------------------------------


def _feature_matrix(
    frame: pd.DataFrame,
    names: list[str],
    rows: np.ndarray,
    path: Path,
    flag_columns: frozenset[str] = frozenset(),
) -> tuple[np.ndarray, dict[tuple[int, int], float]]:
    """The features as float32, and the values too large for it (``Chunk.beyond_float32``);
    a value that is not a number stops with its column and row. A true or false is a flag
    where a measurement belongs (pandas reads 1 and 0), so it is one only in
    ``flag_columns``: the columns the file's first rows hold flags alone in, boolean
    features named as such."""
    matrix = np.empty((len(frame), len(names)), dtype=np.float32)
    beyond: dict[tuple[int, int], float] = {}
    for j, name in enumerate(names):
        column = frame[name]
        flags_here = name not in flag_columns and pd.api.types.is_bool_dtype(column.dtype)
        if flags_here or not pd.api.types.is_numeric_dtype(column.dtype):
            numbers = _to_numeric(column, rows, path)
            bad = (numbers.isna() & column.notna()).to_numpy(dtype=bool, copy=True)
            if name not in flag_columns:
                bad |= column.map(lambda value: isinstance(value, (bool, np.bool_))).to_numpy(bool)
            if bad.any():
                raise DataError(
                    f"{path}: column {name!r} is not numeric: "
                    f"{_examples(rows[bad], column[bad])}; {_non_numeric_remedy(column[bad])}"
                )
            column = numbers
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf: reported later
            matrix[:, j] = values
        # Messages list at most _LISTED_INVALID_ROWS rows: so many per column cover them, and
        # a hostile file of huge values costs no more than a normal one.
        hits = np.flatnonzero(np.isfinite(values) & ~np.isfinite(matrix[:, j]))
        for i in hits[:_LISTED_INVALID_ROWS]:
            beyond[int(rows[i]), j] = float(values[i])
    return matrix, beyond


#: A number as spreadsheets save them in many locales (with ';' between fields): a decimal
#: comma (``0,125``, ``-1,5``) or a comma grouping thousands (``1,234``); whole numbers beside
#: them have none.
_COMMA_NUMBER = re.compile(r"\s*[+-]?(\d+|\d*,\d+)\s*")
_COMMA_REMEDY = "save the file with a decimal point and no thousands separator (0.125, 1234.5)"


def _numbers_with_a_comma(values: pd.Series) -> bool:
    """Whether the values (missing ones aside) are all numbers so written, one at least
    with a comma."""
    written = values.dropna().tolist()
    return (
        bool(written)
        and all(isinstance(v, str) and _COMMA_NUMBER.fullmatch(v) for v in written)
        and any("," in v for v in written)
    )


def _non_numeric_remedy(values: pd.Series) -> str:
    """What to do about the values of a feature column that are not numbers."""
    if _numbers_with_a_comma(values):
        return f"numbers with a comma: {_COMMA_REMEDY}"
    return "fix the values or leave the column out of the features"


def _to_numeric(column: pd.Series, rows: np.ndarray, path: Path) -> pd.Series:
    """``pd.to_numeric``, NaN for what is not a number; an integer beyond float64's range (JSON
    has no limit) stops with its row."""
    try:
        return pd.to_numeric(column, errors="coerce")
    except OverflowError:
        huge = column.map(lambda value: isinstance(value, int) and abs(value) > sys.float_info.max)
        i = int(np.argmax(huge.to_numpy(dtype=bool)))
        digits = len(str(abs(column.iloc[i])))
        raise DataError(
            f"{path}: column {column.name!r} on row {rows[i]} holds an integer of {digits} "
            "digits, beyond float range; fix the value or leave the column out of the features"
        ) from None


def _check_not_temporal(path: Path, name: str, dtype: Any) -> None:
    """Refuse a timestamp or duration as a feature: ``pd.to_numeric`` would silently turn it
    into a count of time units (since 1970, for a timestamp)."""
    kind = {"M": "a timestamp", "m": "a duration"}.get(getattr(dtype, "kind", ""))
    if kind:
        raise SchemaError(
            f"{path}: feature column {name!r} is {kind} ({dtype}), not a number; "
            "cast it or leave it out of the features"
        )


def _repeated(names: Sequence[str]) -> set[str]:
    return {name for name, n in Counter(names).items() if n > 1}


def _labels(
    column: pd.Series, rows: np.ndarray, path: Path, remedy: str = "fix or remove those rows"
) -> np.ndarray:
    """0/1 labels from numbers, booleans or the words true/false; anything else stops."""
    numbers = tables.label_numbers(column)
    bad = np.isnan(numbers)
    if bad.any():
        raise DataError(
            f"{path}: label column {column.name!r} must hold 0/1 or true/false: "
            f"{_examples(rows[bad], column[bad])}; {remedy}"
        )
    return numbers.astype(np.int8)


def _entities(column: pd.Series, rows: np.ndarray, path: Path) -> np.ndarray:
    """The entity of each row; a row without one (an empty field, a null) stops: its series
    is unknown, and windows or alarm streams cannot be kept for it."""
    missing = column.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"{path}: entity column {column.name!r} must name each row's series: "
            f"{_examples(rows[missing], column[missing])}; fill those values in or remove "
            "the rows"
        )
    if column.dtype == object:
        nested = column.map(lambda value: isinstance(value, dict | list | np.ndarray))
        nested = nested.to_numpy(bool)
        if nested.any():
            raise DataError(
                f"{path}: entity column {column.name!r} must name each row's series with text "
                f"or a number, not a JSON object or array (a Parquet struct or list): "
                f"{_examples(rows[nested], column[nested])}"
            )
    return column.to_numpy()


def _as_written(column: pd.Series) -> np.ndarray:
    """A column's values as the file has them: with a missing value, as objects, since
    ``to_numpy`` makes nullable integers floats."""
    return column.to_numpy(dtype=object) if column.hasnans else column.to_numpy()


def _is_not_utf8(value: object) -> bool:
    """Whether ``value`` is bytes that are not UTF-8 text."""
    if not isinstance(value, bytes):
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _examples(rows: np.ndarray, values: pd.Series) -> str:
    """E.g. "row 4 has 'abc', row 9 has no value and at least 2 more" (from one chunk)."""
    shown = [
        f"row {row} has {_show(value)}"
        for row, value in zip(rows[:_LISTED_VALUES], values.iloc[:_LISTED_VALUES], strict=True)
    ]
    more = len(rows) - len(shown)
    return ", ".join(shown) + (f" and at least {more} more" if more else "")


def _show(value: object) -> str:
    """The value as a message names it: its start, for a long one (a message is one line)."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return "no value"
    value = value.item() if isinstance(value, np.generic) else value
    text = str(value)
    if len(text) <= _SHOWN_CHARACTERS:
        return repr(value)
    return f"{text[:_SHOWN_CHARACTERS]!r}... ({len(text):,} characters)"


def _bad_columns(
    row: int,
    values: np.ndarray,
    names: Sequence[str],
    beyond_float32: Mapping[tuple[int, int], float],
) -> str:
    """One row's non-finite values, e.g. "column 'b' is NaN, column 'c' is inf"."""

    def shown_value(j: int) -> str:
        if (row, j) in beyond_float32:
            return f"{beyond_float32[row, j]:g}, beyond the float32 range the model scores in"
        return "NaN" if np.isnan(values[j]) else str(float(values[j]))

    bad = np.flatnonzero(~np.isfinite(values))
    shown = [f"column {names[j]!r} is {shown_value(j)}" for j in bad[:_LISTED_VALUES]]
    more = len(bad) - len(shown)
    return ", ".join(shown) + (f" and {more} more columns" if more else "")


def _quoted(names: Sequence[str] | pd.Index, limit: int = 20) -> str:
    shown = ", ".join(repr(name) for name in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _clip(line: str, width: int = 80) -> str:
    line = line.rstrip("\r\n")
    return repr(line if len(line) <= width else line[:width] + "...")


def _not_utf8(path: Path, kind: str, exc: UnicodeDecodeError) -> DataError:
    """The first byte that is not UTF-8, with its line: the parser's own error knows only its
    position in a buffer (and calls a character cut by the buffer's end "unexpected end of
    data"), so the file is decoded again up to that byte."""
    found = _first_non_utf8(path)
    if found is None:  # the file changed since the parser read it
        return _unreadable(path, kind, f"not UTF-8 text: {exc.reason}")
    line, offset, byte, reason = found
    return DataError(
        f"{path}: line {line} is not UTF-8 text (byte 0x{byte:02x} at byte offset {offset}: "
        f"{reason}); check that it is a {kind} file, saved as UTF-8"
    )


def _first_non_utf8(path: Path) -> tuple[int, int, int, str] | None:
    """(line, byte offset, byte, reason) of the first byte that is not UTF-8, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    with _open_binary(path) as handle:
        while True:
            block = handle.read(1 << 20)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                # exc.object is the decoder's held-back bytes (no newline among them) + block.
                start = offset - (len(exc.object) - len(block)) + exc.start
                line = newlines + exc.object.count(b"\n", 0, exc.start) + 1
                return line, start, exc.object[exc.start], exc.reason
            if not block:
                return None
            offset += len(block)
            newlines += block.count(b"\n")


def _unreadable(path: Path, kind: str, detail: str) -> DataError:
    return DataError(
        f"{path}: cannot be read as {kind} ({detail}); check that it is a {kind} file "
        "and was fully written"
    )


def check_output_format(path: str | os.PathLike[str]) -> str:
    """The result format ``path``'s extension means; a ``DataError`` naming ``path`` and the
    supported extensions when there is none."""
    return _format_of(Path(path), _WRITE_FORMATS, "write")


def _format_of(path: Path, formats: dict[str, str], action: str) -> str:
    name = path.name.lower()
    for suffix, kind in formats.items():
        if name.endswith(suffix):
            return kind
    found = repr("".join(path.suffixes)) if path.suffix else "a file without an extension"
    raise DataError(f"{path}: cannot {action} {found}; supported extensions: {', '.join(formats)}")


def _split(lines: list[str], separator: str) -> list[list[str]]:
    """The non-empty lines' fields. The lines are in memory already, so the csv module's
    limit on a field's length (128 KiB) guards nothing here; a long field is the data's own
    (pandas, which reads the file, has no such limit)."""
    with _FIELD_LIMIT_LOCK:  # the limit is the process's: one raise and restore at a time
        limit = csv.field_size_limit(_LONGEST_FIELD)
        try:
            return [row for row in csv.reader(lines, delimiter=separator) if row]
        finally:
            csv.field_size_limit(limit)


def _is_tsv(path: Path) -> bool:
    """Whether ``path`` names a tab-separated file (``_TSV_ENDINGS``, any case)."""
    return path.name.lower().endswith(_TSV_ENDINGS)


def _open_text(path: Path, mode: str) -> TextIO:
    """UTF-8 text, compressed when the name ends in one of ``_COMPRESSED``'s extensions."""
    opener = _COMPRESSED.get(path.suffix.lower(), open)
    return opener(path, mode + "t", encoding="utf-8", newline="")


def _open_binary(path: Path) -> IO[bytes]:
    """The bytes of a file for reading, uncompressed as ``_open_text`` does."""
    return _COMPRESSED.get(path.suffix.lower(), open)(path, "rb")
