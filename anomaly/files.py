"""Offline workflows over data files: train from a file, score a file into another, measure
a file's drift from the training data.

Files are read in chunks (``anomaly.io``), so a file larger than memory can be scored; the
output keeps the input's row order, id column and entity column. Rows with NaN or infinite
features stop the run with their row numbers, or, with ``on_invalid="skip"``, go to a
rejects file next to the output (with their row numbers and the reason) so nothing is
silently lost.

With an adaptive alarm stage (``[alarms]``, ``anomaly.alarms``: by default in time-series
mode), the output also gets ``p_value`` and ``alarm``: the file is one stream, or each value
of the entity column is, its rows in file order and its state carried from chunk to chunk,
exactly as the service keeps one stream per Kafka key. As there, at most
``alarms.max_streams`` entities keep their alarm state (the one seen least recently starts
afresh). In time-series mode each entity also keeps the last ``window - 1`` rows of its
window, for every entity of the file (``window * features * 4`` bytes each: 1 KB for 32
rows of 8 features, 1 GB for a million entities).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from anomaly import io
from anomaly.alarms import AlarmStage
from anomaly.config import COMPONENTS, AlarmConfig, Config
from anomaly.detector import Detector
from anomaly.drift import DriftWarning, FeatureBins, FeatureDrift
from anomaly.errors import ConfigError, DataError, SchemaError
from anomaly.store import check_save_target
from anomaly.training import train
from anomaly.windows import SeriesCuts, WindowBuffer

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class RunSummary:
    """What a file run did, for the CLI to print."""

    rows_read: int
    rows_scored: int
    anomalies: int
    rows_rejected: int
    output: Path
    rejects: Path | None
    seconds: float
    alarms: int | None = None
    """Rows with ``alarm`` true; None without an adaptive alarm stage."""

    @property
    def rows_unscored(self) -> int:
        """Rows read, not rejected, without a score: in time-series mode, rows before their
        series' first window is complete."""
        return self.rows_read - self.rows_scored - self.rows_rejected


def rejects_path(output: PathLike) -> Path:
    """Where rows rejected on the way to ``output`` are written: ``<output>.rejects.csv``."""
    output = Path(output)
    return output.with_name(output.name + ".rejects.csv")


def _partial_path(path: Path) -> Path:
    """The temporary name ``path`` is written under until the run succeeds."""
    return path.with_name(f".partial-{path.name}")


class Rejects:
    """Collects rejected rows with their row number and reason, under a temporary name until
    ``close``: the rejects file belongs to the run's output, so an earlier run's file is
    replaced (or removed) only when this run's output is in place. Used as a context manager
    around the run: a run that fails leaves no rejects file of its own (``discard``)."""

    def __init__(self, path: Path, feature_names: list[str]):
        self.path = path
        self.feature_names = feature_names
        self.count = 0
        self._writer: io.ResultWriter | None = None

    def add(self, chunk: io.Chunk, mask: np.ndarray, reason: str) -> None:
        if not mask.any():
            return
        frame = pd.DataFrame(chunk.features[mask], columns=self.feature_names)
        frame.insert(0, "reason", reason)
        frame.insert(0, "row", chunk.row_numbers[mask])
        if self._writer is None:
            self._writer = io.ResultWriter(_partial_path(self.path), final=self.path)
        self._writer.write(frame)
        self.count += int(mask.sum())

    def ready(self) -> None:
        """Finish writing this run's rejects; called before the output is put in place, so
        that a failure here leaves the earlier run's output and rejects as they were."""
        if self._writer is not None:
            self._writer.close()

    def close(self) -> Path | None:
        """Put this run's rejects in place, or remove an earlier run's when this run rejected
        nothing; the path of the rejects file, None when there is none."""
        try:
            if self._writer is None:
                # Only if there is one: unlinking a missing file on a read-only folder fails.
                if self.path.is_file() or self.path.is_symlink():
                    self.path.unlink()
                return None
            self._writer.close()
            os.replace(self._writer.path, self.path)
        except OSError as exc:
            raise io.cannot_write(self.path, exc) from None
        return self.path

    def __enter__(self) -> Rejects:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self.discard()

    def discard(self) -> None:
        """Remove what this run wrote (it failed; nothing to keep), and nothing else."""
        if self._writer is not None:
            with contextlib.suppress(DataError):
                self._writer.close()
            with contextlib.suppress(OSError):
                self._writer.path.unlink(missing_ok=True)


def _check_not_input(data: PathLike, target: Path) -> None:
    """Refuse an output that is the input file itself: it would replace the data."""
    try:
        same = os.path.samefile(data, target)
    except OSError:  # either is missing: the reader says so if it is the input
        return
    if same:
        raise DataError(
            f"{target} is the input file {data}; writing it would replace the data: "
            "choose another --out"
        )


#: The columns a result table may have besides the id and entity columns: an entity column
#: of one of these names is not written (its values would replace, or pass for, results).
RESULT_COLUMNS = (
    "row",
    "score",
    "is_anomaly",
    "percentile",
    *(f"score_{c}" for c in COMPONENTS),
    "top_features",
    "window_complete",
    "p_value",
    "alarm",
)


def refuse_ids_named_like_results(id_column: str | None) -> None:
    """A ``ConfigError`` when the id column has a result column's name (or ``row``): the
    scores written under that name would replace the ids, which were lost without a word."""
    if id_column in RESULT_COLUMNS:
        raise ConfigError(
            f"data.id_column is {id_column!r}, the name of a result column, whose values would "
            "replace the ids in the output: rename the column in the data and set "
            "data.id_column to the new name"
        )


#: What to do about invalid rows, for the commands that take no ``--on-invalid``.
_NO_SKIP_REMEDY = (
    "fix or remove them (calibrate and retrain skip no rows: they have no --on-invalid)"
)


def _valid_rows(
    chunk: io.Chunk,
    path: PathLike,
    names: list[str],
    on_invalid: str,
    rejects: Rejects,
    remedy: str = io.SKIP_REMEDY,
):
    """Mask of usable rows; invalid ones raise (``error``, the message ending with
    ``remedy``) or go to the rejects file (``skip``)."""
    invalid = io.find_invalid_rows(chunk.features)
    if invalid.any():
        if on_invalid == "error":
            raise DataError(
                io.describe_invalid(
                    chunk.row_numbers[invalid],
                    chunk.features[invalid],
                    names,
                    path,
                    remedy,
                    chunk.beyond_float32,
                )
            )
        rejects.add(chunk, invalid, "NaN or infinite feature value")
    return ~invalid


def train_file(
    data: PathLike, out: PathLike, config: Config | None = None
) -> tuple[Detector, RunSummary]:
    """Train on a file's normal rows (label 0 when a label column is configured), save the
    bundle to ``out`` and return the detector and a summary."""
    config = config or Config()
    d = config.data
    reader = io.TableReader(
        data,
        features=d.features,
        id_column=d.id_column,
        label_column=d.label_column,
        entity_column=d.entity_column,
        chunk_rows=d.chunk_rows,
    )

    def trained(rows, entities, rows_rejected):
        detector = train(rows, config, feature_names=reader.feature_names, entities=entities)
        detector.metadata["training_file"] = str(data)
        detector.metadata["rows_rejected"] = rows_rejected
        return detector

    return _model_from_normal_rows(reader, data, out, d.on_invalid, trained, io.SKIP_REMEDY)


def calibrate_file(
    detector: Detector, data: PathLike, out: PathLike, label_column: str | None = None
) -> tuple[Detector, RunSummary]:
    """Recalibrate ``detector`` on a file of fresh normal rows and save the new model to
    ``out`` (``anomaly.calibration.recalibrate``)."""
    from anomaly.calibration import recalibrate

    def recalibrated(rows, entities, _):
        child = recalibrate(detector, rows, entities)
        child.metadata["lineage"][-1]["calibration_file"] = str(data)
        return child

    reader = _reader_for(detector, data, label_column, model_labels=True)
    return _model_from_normal_rows(reader, data, out, "error", recalibrated, _NO_SKIP_REMEDY)


def retrain_file(
    detector: Detector,
    data: PathLike,
    out: PathLike,
    label_column: str | None = None,
    steps: int | None = None,
) -> tuple[Detector, RunSummary]:
    """Retrain ``detector`` from its weights on a file of fresh normal rows and save the new
    model to ``out`` (``anomaly.training.retrain``)."""
    from anomaly.training import retrain

    def retrained(rows, entities, _):
        child = retrain(detector, rows, steps=steps, entities=entities)
        child.metadata["training_file"] = str(data)
        return child

    reader = _reader_for(detector, data, label_column, model_labels=True)
    return _model_from_normal_rows(reader, data, out, "error", retrained, _NO_SKIP_REMEDY)


def _model_from_normal_rows(
    reader: io.TableReader,
    data: PathLike,
    out: PathLike,
    on_invalid: str,
    make,
    remedy: str,
) -> tuple[Detector, RunSummary]:
    """A model made by ``make(rows, pieces, rows_rejected)`` (``pieces``: each row's
    entity, cut where rows were taken out: ``SeriesCuts``) from the normal rows of
    ``reader`` (label 0 when it reads labels; invalid rows stop the run, the message ending
    with ``remedy``, or, with ``on_invalid="skip"``, go to ``OUT.rejects.csv``),
    saved to ``out``."""
    started = time.perf_counter()
    check_save_target(out)  # before the data is read and a model made, not after
    names = reader.feature_names
    rejects = Rejects(rejects_path(out), names)
    _check_not_input(data, rejects.path)
    table = io.join_chunks(reader)
    with rejects:
        usable = _valid_rows(table, data, names, on_invalid, rejects, remedy)
        if table.labels is not None:
            usable &= table.labels == 0
        pieces, _ = SeriesCuts().pieces(table.entities, usable)  # no window across a gap
        detector = make(table.features[usable], pieces, rejects.count)
        rejects.ready()
        detector.save(out)
        rejects_file = rejects.close()
    summary = RunSummary(
        rows_read=len(table.features),
        rows_scored=int(usable.sum()),
        anomalies=0,
        rows_rejected=rejects.count,
        output=Path(out),
        rejects=rejects_file,
        seconds=time.perf_counter() - started,
    )
    return detector, summary


def iter_scored(
    detector: Detector,
    data: PathLike,
    *,
    rejects: Rejects,
    on_invalid: str = "error",
    label_column: str | None = None,
    progress: bool | None = False,
    alarms: AlarmConfig | None = None,
):
    """Yield ``(chunk, valid_mask, result_frame)`` per chunk: one output row per valid input
    row, in input order. Shared by ``score_file`` and evaluation, whose ``rejects`` take the
    invalid rows with ``on_invalid="skip"``. ``alarms`` (default: the model's ``[alarms]``)
    may add ``p_value`` and ``alarm`` columns."""
    cfg = detector.config.data
    refuse_ids_named_like_results(cfg.id_column)
    reader = _reader_for(detector, data, label_column)
    window, entity_column = detector.schema.window, detector.schema.entity_column
    buffer = WindowBuffer(window, len(detector.feature_names)) if window else None
    cuts = SeriesCuts()  # an invalid row skipped ends its series' window
    stage = AlarmStage.for_model(detector, detector.config.alarms if alarms is None else alarms)
    # progress None: a bar only on a terminal, so logs and error lines stay clean; True: a
    # bar wherever stderr goes (asked for); False: none.
    bar = tqdm(
        total=reader.total_rows,
        unit=" rows",
        disable=None if progress is None else not progress,
        leave=False,
    )
    with bar:
        for chunk in reader:
            valid = _valid_rows(chunk, data, detector.feature_names, on_invalid, rejects)
            rows = chunk.features[valid]
            frame = pd.DataFrame({"row": chunk.row_numbers[valid]})
            if chunk.ids is not None:
                frame.insert(1, cfg.id_column, chunk.ids[valid])
            entities = chunk.entities[valid] if chunk.entities is not None else None
            if entities is not None and entity_column not in (*frame, *RESULT_COLUMNS):
                frame.insert(len(frame.columns), entity_column, entities)  # to group by
            if buffer is None:
                result = detector.score(rows) if len(rows) else None
                positions = np.arange(len(rows))
            else:
                pieces, ended = cuts.pieces(chunk.entities, valid)
                windows, positions = buffer.push(rows, pieces)
                buffer.forget(ended)
                result = detector.score(windows) if len(windows) else None
            _add_scores(frame, result, positions, detector)
            if stage is not None:
                keys = None if entities is None else entities[positions]
                decided = stage.update(result, keys) if result is not None else None
                _add_alarms(frame, decided, positions)
            bar.update(len(chunk.features))
            yield chunk, valid, frame


def _reader_for(
    detector: Detector, data: PathLike, label_column: str | None, *, model_labels: bool = False
) -> io.TableReader:
    """A reader of ``data`` for ``detector``'s features and columns. ``model_labels``: without
    ``label_column``, the model's own ``data.label_column`` where the file has one (rows for a
    new model or threshold must be normal ones, as ``anomaly.calibration.recalibrate`` and
    ``anomaly.training.retrain`` take them from a table); ``label_column=""`` reads none."""
    cfg = detector.config.data
    if label_column == "":  # asked for no labels, the model's own column included
        label_column, model_labels = None, False
    positional = Path(data).suffix == ".npy"
    entity_column = detector.schema.entity_column
    if positional and entity_column:
        raise SchemaError(
            f"{data}: a .npy array holds only feature values, but this model windows each "
            f"series of entity column {entity_column!r} separately; score a CSV, Parquet or "
            "JSON lines file that has that column"
        )
    reader = io.TableReader(
        data,
        features=None if positional else detector.feature_names,
        # A .npy array has no id column: its records are known by the output's row numbers.
        id_column=None if positional else cfg.id_column,
        label_column=label_column or (cfg.label_column if model_labels else None),
        label_column_optional=model_labels and label_column is None,
        entity_column=entity_column,
        chunk_rows=cfg.chunk_rows,
    )
    if len(reader.feature_names) != len(detector.feature_names):
        raise SchemaError(
            f"{data}: has {len(reader.feature_names)} feature columns but the model expects "
            f"{len(detector.feature_names)}"
        )
    return reader


def _add_scores(frame: pd.DataFrame, result, positions: np.ndarray, detector: Detector) -> None:
    """Add score columns; rows without a score (incomplete window) get NaN and no flag."""
    n = len(frame)
    columns = {
        "score": np.full(n, np.nan),
        "is_anomaly": np.zeros(n, bool),
        "percentile": np.full(n, np.nan),
        **{f"score_{c}": np.full(n, np.nan) for c in COMPONENTS},
        "top_features": np.full(n, "", dtype=object),
    }
    if result is not None:
        columns["score"][positions] = result.scores
        columns["is_anomaly"][positions] = result.is_anomaly
        columns["percentile"][positions] = result.percentiles
        for c in COMPONENTS:
            columns[f"score_{c}"][positions] = result.components[c]
        columns["top_features"][positions] = [",".join(names) for names in result.top_features]
    for name, values in columns.items():
        frame[name] = values
    if detector.schema.window:
        frame["window_complete"] = np.isfinite(columns["score"])


def _add_alarms(frame: pd.DataFrame, decided, positions: np.ndarray) -> None:
    """Add the alarm stage's ``p_value`` (its level) and ``alarm``; rows without a score get
    NaN and no alarm."""
    p_values, alarms = np.full(len(frame), np.nan), np.zeros(len(frame), bool)
    if decided is not None:
        p_values[positions], alarms[positions] = decided.levels, decided.alarms
    frame["p_value"], frame["alarm"] = p_values, alarms


def score_file(
    detector: Detector,
    data: PathLike,
    out: PathLike,
    *,
    on_invalid: str | None = None,
    progress: bool | None = False,
    alarms: AlarmConfig | None = None,
) -> RunSummary:
    """Score every row of ``data`` into ``out`` (CSV, TSV, Parquet or JSON lines by extension);
    ``alarms`` (default: the model's ``[alarms]``) chooses the alarm stage.

    The output and the rejects file are written under temporary names and renamed at the
    end, so a run stopped by bad input leaves nothing behind (no half-written output, no
    rejects file) and a successful one leaves a rejects file only if it rejected rows. An
    ``out`` that is ``data`` itself is refused.
    """
    started = time.perf_counter()
    out = Path(out)
    io.check_output_format(out)  # before the temporary name, which the user never chose
    if out.is_dir():  # before any row is scored: the rename at the end would fail
        raise DataError(f"{out}: is a folder; give a file name")
    on_invalid = on_invalid or detector.config.data.on_invalid
    rejects = Rejects(rejects_path(out), detector.feature_names)
    for target in (out, rejects.path):
        _check_not_input(data, target)
    partial = _partial_path(out)
    read = scored = flagged = 0
    alarmed = None
    try:
        with rejects:
            with io.ResultWriter(partial, final=out) as writer:
                for chunk, _, frame in iter_scored(
                    detector,
                    data,
                    on_invalid=on_invalid,
                    rejects=rejects,
                    progress=progress,
                    alarms=alarms,
                ):
                    writer.write(frame)
                    read += len(chunk.features)
                    scored += int(np.isfinite(frame["score"]).sum())
                    flagged += int(frame["is_anomaly"].sum())
                    if "alarm" in frame:
                        alarmed = (alarmed or 0) + int(frame["alarm"].sum())
            if read == 0:
                raise DataError(f"{data}: has no data rows")
            rejects.ready()
            try:
                os.replace(partial, out)
            except OSError as exc:
                raise io.cannot_write(out, exc) from None
            rejects_file = rejects.close()
    finally:
        with contextlib.suppress(OSError):  # the folder may not exist or be a file
            partial.unlink(missing_ok=True)
    return RunSummary(
        read,
        scored,
        flagged,
        rejects.count,
        out,
        rejects_file,
        time.perf_counter() - started,
        alarmed,
    )


@dataclass(frozen=True)
class FileDrift:
    """What ``drift_file`` measured."""

    features: list[FeatureDrift]
    """Each feature's PSI, most drifted first."""
    rows_rejected: int
    rejects: Path | None
    rows: int = 0
    """Rows measured."""
    warnings: tuple[str, ...] = ()
    """Why the figures should not be read as they stand (too few rows), each also issued as
    a ``DriftWarning``."""


def drift_file(detector: Detector, data: PathLike, *, on_invalid: str | None = None) -> FileDrift:
    """The drift of ``data``'s rows from the normal rows ``detector`` was made on: each
    feature's population stability index (``anomaly.drift``), most drifted first. The file is
    read in chunks and only bin counts are kept. Rows with NaN or infinite values stop the run
    or, with ``on_invalid="skip"``, are left out and written to ``DATA.rejects.csv``. A model
    saved before drift summaries is a ``BundleError``, before the file is read. Too few rows
    to read a shift (``FeatureBins.too_few``) is a ``DriftWarning``, also kept in the result's
    ``warnings``."""
    bins = FeatureBins(detector.drift_summary)
    names = detector.feature_names
    on_invalid = on_invalid or detector.config.data.on_invalid
    reader = _reader_for(detector, data, None)
    counts = np.zeros(bins.shape, np.int64)
    with Rejects(rejects_path(data), names) as rejects:
        for chunk in reader:
            valid = _valid_rows(chunk, data, names, on_invalid, rejects)
            counts += bins.counts(chunk.features[valid])
        if not counts.any():
            raise DataError(f"{data}: has no valid rows to measure")
        rejects_file = rejects.close()
    rows = int(counts[0].sum())  # each row is in one bin of each feature
    problem = bins.too_few(rows)
    if problem:
        warnings.warn(f"{data}: {problem}", DriftWarning, stacklevel=2)
    return FileDrift(
        bins.ranked(counts),
        rejects.count,
        rejects_file,
        rows,
        (f"{data}: {problem}",) if problem else (),
    )
