"""Tables as users hold them (pandas DataFrames, pyarrow Tables, polars DataFrames) as the
model's feature arrays, by column name.

``numpy.asarray`` takes a table's columns in the table's order, so a DataFrame whose columns
are in another order than the model's scored every record against the wrong features, and
its names were lost in training. Here columns are taken by name: in the model's order,
whatever the table's; extra columns are left out (as files' are); a missing one, a column of
text or a timestamp is a message naming the column. A table whose columns have no names (a
DataFrame made from an array: columns 0, 1, 2, ...) is an array, taken in its order; so is
any table given to a model trained on an array, whose features have no names of their own
(``x0``, ``x1``, ...) when the table has none of them and as many columns.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Collection, Sequence
from decimal import Decimal

import numpy as np
import pandas as pd

from anomaly.errors import DataError, SchemaError

#: Values shown at most in a message.
_SHOWN = 3
#: The name pandas gives a column without one in a CSV's header (pandas' own index of
#: ``df.to_csv()``, the empty columns of lines ending in a separator).
_PANDAS_NAMELESS = re.compile(r"Unnamed: \d+")
#: The largest float32; a feature beyond it cannot be scored.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Names of columns that usually hold a record's role, not a measurement (lower case).
ROLE_LIKE_NAMES = frozenset(
    {"id", "label", "labels", "target", "class", "y", "anomaly", "is_anomaly", "outlier"}
)
#: Labels as text (a CSV's, or words), lower case: 0/1 or false/true.
_LABEL_WORDS = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0}


def as_frame(data) -> pd.DataFrame | None:
    """``data`` as a pandas DataFrame when it is a table with named columns (pandas; pyarrow
    and polars through their ``to_pandas``) or a row of one (a Series indexed by column name),
    else None: an array, a list, ..."""
    if isinstance(data, pd.DataFrame):
        frame = data
    elif isinstance(data, pd.Series) and not isinstance(data.index, pd.RangeIndex):
        frame = data.to_frame().T  # one record, e.g. ``df.loc[label]``: its index names values
    elif hasattr(data, "to_pandas") and (hasattr(data, "column_names") or hasattr(data, "columns")):
        frame = data.to_pandas()
    else:
        return None
    if isinstance(frame.columns, pd.RangeIndex) and frame.columns.start == 0:
        return None if frame is data else frame  # unnamed columns: positions, as an array
    return frame


def float32_records(records, what: str) -> np.ndarray:
    """``records`` (an array, nested lists) as float32; text is a ``DataError`` (numpy's
    own ``ValueError`` otherwise), and so are complex numbers, whose imaginary part numpy
    drops with only a warning."""
    try:
        if np.iscomplexobj(records):  # converts nested lists: ragged ones raise ValueError
            raise DataError(f"{what} are complex numbers; give their real values (or magnitudes)")
        return np.asarray(records, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} are not numeric: {exc}") from None


def positional_names(count: int) -> list[str]:
    """The feature names of an array's ``count`` columns, which have none: x0, x1, ..."""
    return [f"x{i}" for i in range(count)]


def column_names(frame: pd.DataFrame) -> list[str]:
    """The feature names a table gives training: its columns, as text."""
    return [str(name) for name in frame.columns]


def feature_array(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """The columns ``names`` of ``frame``, in that order, as float32 (n, len(names)); a
    missing value is NaN. A column missing or named twice, or one that is not numbers, is a
    ``SchemaError`` or ``DataError`` naming it and, for values, their index labels."""
    if isinstance(frame.columns, pd.RangeIndex) and frame.columns.start == 0:
        labels = list(names)  # unnamed: the model's features in the table's order
        frame = frame.set_axis(labels, axis=1) if len(frame.columns) == len(labels) else frame
    given = pd.Index([str(name) for name in frame.columns])
    if (
        list(names) == positional_names(len(names))
        and len(given) == len(names)
        and not given.isin(names).any()
    ):  # a model trained on an array (or a table before its names were kept): positions
        given = pd.Index(list(names))
    missing = [name for name in names if name not in given]
    if missing:
        raise SchemaError(
            f"the table has no column {', '.join(repr(n) for n in missing)}; the model's "
            f"features are {', '.join(repr(n) for n in names)} (taken by name, in any order; "
            "other columns are left out)"
        )
    frame = frame.set_axis(given, axis=1)
    twice = sorted({name for name in names if (given == name).sum() > 1})
    if twice:
        raise DataError(
            f"the table has more than one column named {twice[0]!r}; give every column its own name"
        )
    matrix = np.empty((len(frame), len(names)), np.float32)
    for j, name in enumerate(names):
        matrix[:, j] = _numbers(frame[name], name)
    return matrix


class FeatureRoleWarning(UserWarning):
    """A column picked by type as a feature is named like an id or a label
    (``ROLE_LIKE_NAMES``): columns are left out as such only when named as such."""


def features_by_type(sample: pd.DataFrame, roles: Collection[str]) -> list[str]:
    """The features when none are named (``data.features``, ``--features``), alike for a
    file (``sample``: its first rows) and a table: the columns of numbers, decimals
    included, but the columns in ``roles`` (id, label, entity, a folder's partitions),
    booleans (flags and labels more often than measurements: name one to use it) and
    columns without a name (``Unnamed: 3``). A column of numbers with no value at all is
    refused: picked, it would make every row invalid. A picked column named like an id or
    a label is a ``FeatureRoleWarning``: a label trained on as a feature is a model that
    needs it to score."""
    names = column_names(sample)
    picked = [
        i
        for i, name in enumerate(names)
        if name not in roles
        and not _PANDAS_NAMELESS.fullmatch(name)
        and _holds_numbers(sample.iloc[:, i])
    ]
    if not picked:
        raise DataError(
            f"no numeric columns to use as features among {', '.join(map(repr, names))}; "
            "name the feature columns explicitly"
        )
    empty = [names[i] for i in picked if sample.iloc[:, i].isna().all()]
    if empty:
        raise DataError(
            f"column(s) {', '.join(map(repr, empty))} hold no value (in the first "
            f"{len(sample)} rows); name the feature columns to leave them out"
        )
    for name in (names[i] for i in picked if names[i].lower() in ROLE_LIKE_NAMES):
        warnings.warn(
            FeatureRoleWarning(
                f"column {name!r} is taken as a feature (features picked by type); if it is a "
                "label or an id, give it as data.label_column or data.id_column "
                "(--label-column, --id-column), or name the features"
            ),
            stacklevel=2,
        )
    return [names[i] for i in picked]


def _holds_numbers(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values.dtype):
        return False
    if pd.api.types.is_numeric_dtype(values.dtype):
        return True
    present = values.dropna()
    return len(present) > 0 and all(isinstance(v, Decimal) for v in present)


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """The column of ``frame`` named ``name`` as text (``column_names``)."""
    return frame.iloc[:, column_names(frame).index(name)]


def labelled_normal(frame: pd.DataFrame, label_column: str) -> np.ndarray:
    """Which rows column ``label_column`` labels normal (0), of 0/1 or false/true: the rows a
    model trains on, as ``anomaly train --label-column`` takes them from a file."""
    values = column(frame, label_column)
    labels = label_numbers(values)
    bad = np.isnan(labels)
    if bad.any():
        shown = ", ".join(
            f"index {label!r} holds {value!r}" for label, value in values[bad].iloc[:_SHOWN].items()
        )
        raise DataError(f"label column {label_column!r} must hold 0 or 1: {shown}")
    return labels == 0


def label_numbers(labels: pd.Series) -> np.ndarray:
    """Labels as 0.0 (normal) and 1.0 (anomaly), from numbers, booleans or the words
    true/false (a CSV's text, any case); NaN where a value is none of them, for the caller
    to name in its error."""
    if pd.api.types.is_numeric_dtype(labels.dtype):  # booleans included
        numbers = labels.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        words = labels.map(lambda v: _LABEL_WORDS.get(str(v).strip().lower(), np.nan))
        numbers = words.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isin(numbers, (0.0, 1.0)), numbers, np.nan)


def _numbers(column: pd.Series, name: str) -> np.ndarray:
    kind = getattr(column.dtype, "kind", "")
    if kind in ("M", "m"):
        what = "a timestamp" if kind == "M" else "a duration"
        raise DataError(
            f"column {name!r} is {what} ({column.dtype}), not a number; cast it to numbers "
            "or leave it out of the features"
        )
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(object)
    if not pd.api.types.is_numeric_dtype(column.dtype):
        numbers = pd.to_numeric(column, errors="coerce")
        bad = (numbers.isna() & column.notna()).to_numpy()
        if bad.any():
            raise DataError(
                f"column {name!r} is not numeric: {_listed(column, bad)}; fix the values or "
                "leave the column out of the features"
            )
        column = numbers
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    beyond = np.isfinite(values) & (np.abs(values) > _FLOAT32_MAX)
    if beyond.any():  # it would become inf, and be reported as an infinite value
        raise DataError(
            f"column {name!r} holds values beyond the float32 range the model computes in "
            f"(about ±3.4e38): {_listed(column, beyond)}; rescale the column or leave it out"
        )
    return values.astype(np.float32)


def _listed(column: pd.Series, which: np.ndarray) -> str:
    """The first few values of ``column`` where ``which``, each with its index label."""
    shown = ", ".join(
        f"index {label!r} holds {value!r}" for label, value in column[which].iloc[:_SHOWN].items()
    )
    count = int(which.sum())
    return shown + (f" and {count - _SHOWN} more" if count > _SHOWN else "")
