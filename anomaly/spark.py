"""Offline scoring on Apache Spark: a DataFrame in, a DataFrame of scores out.

``score_dataframe(df, model)`` gives the rows of ``df`` the columns ``anomaly score`` writes
for a file (``anomaly.files``): ``row``, the model's id column when it has one, ``score``,
``is_anomaly``, ``percentile``, ``score_<component>`` and ``top_features``, with the same
values (the same ``Detector.score`` runs on the executors). ``score_parquet`` is the
``anomaly score --engine spark`` path: Parquet in, a folder of Parquet part files out.

How it runs:

- **Arrow batches.** Rows reach the Python workers through ``mapInArrow`` in batches of
  ``spark.sql.execution.arrow.maxRecordsPerBatch`` rows (``session`` sets
  ``ARROW_BATCH_ROWS``); the id column passes through as Arrow, untouched.
- **The bundle travels once.** The driver loads the bundle (so a bad one fails before any
  task), packs its files and broadcasts them: each executor fetches the broadcast once.
  Each Python worker process unpacks it into Spark's local directory and loads it the first
  time it needs that version, then keeps the ``Detector`` in a module-level cache keyed by
  the bundle's content version; Spark reuses its Python workers
  (``spark.python.worker.reuse``, on by default), so every later task and every later job of
  that worker scores with the loaded model. With ``ANOMALY_SPARK_LOAD_LOG=FILE`` in the
  workers' environment, each load appends ``pid version seconds python`` to FILE.
- **Row numbers.** ``row`` is the 1-based position of the row in ``df`` as Spark reads it,
  partition after partition: one small job counts the rows of each partition first (as
  ``RDD.zipWithIndex`` does), and each task numbers its rows from its partition's offset.
  They are consecutive, unlike ``monotonically_increasing_id``. For one Parquet file Spark's
  partitions follow the file, so ``row`` is the file's row number, as ``anomaly score`` writes
  it. A DataFrame whose order is not deterministic (after a shuffle) is numbered as the
  scoring job read it: checkpoint it first, or rely on the id column. A task that finds a
  different number of rows than the count did stops the job.
- **What it refuses.** Time-series models (``model.window``) score each entity's rows as
  sliding windows in order, and an adaptive alarm stage carries a state along each stream:
  both are sequential, so Spark scoring takes models of independent rows with the model's
  threshold, and says so in one line (``ConfigError``) otherwise.
- **Invalid rows** follow ``on_invalid`` as in the local path: ``error`` stops the job with a
  ``DataError`` naming the rows (global row numbers) and columns; ``skip`` leaves them out of
  the scores, and ``invalid_rows`` gives them with their row numbers and the reason (
  ``score_parquet`` writes them to ``OUT.rejects``). A value that is not a number is an error
  either way, as in the local path.

pyspark is imported only here and only when called (the ``spark`` extra): ``import anomaly``
never needs it.
"""

from __future__ import annotations

import contextlib
import functools
import io as _bytes_io
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly import errors
from anomaly.config import COMPONENTS, AlarmConfig
from anomaly.errors import ConfigError, DataError, SchemaError

log = logging.getLogger("anomaly.spark")

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from anomaly.detector import Detector

PathLike = str | os.PathLike[str]

#: ``spark.sql.execution.arrow.maxRecordsPerBatch`` set by ``session``: a multiple of the
#: scoring engine's batch (4,096 by default), big enough to amortise a batch's fixed cost
#: (bench_scoring: rows/s flattens from about 8,192 rows), small enough for wide tables.
ARROW_BATCH_ROWS = 32_768

#: ``spark.sql.files.maxPartitionBytes`` set by ``session`` (Spark's default is 128 MB): scoring
#: costs far more per byte than reading, so smaller tasks spread a file more evenly over the
#: cores (a 400 MB file is about 13 tasks instead of 4 of uneven sizes).
PARTITION_BYTES = "32m"

#: Spark's log4j2 configuration in a session ``session`` starts: off, but for the scheduler's
#: warnings (a cluster that gives the job no executors says so instead of a silent wait). The
#: gateway's logger is off too, or Spark announces a default level of its own.
_LOG4J2 = """\
rootLogger.level = off
rootLogger.appenderRef.console.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.scheduler.name = org.apache.spark.scheduler.TaskSchedulerImpl
logger.scheduler.level = warn
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = off
"""

#: Environment variable naming a file where each Python worker logs its model loads.
LOAD_LOG_ENV = "ANOMALY_SPARK_LOAD_LOG"

#: Loaded detectors of this (worker) process, by bundle content version.
_DETECTORS: dict[str, Detector] = {}


def _pyspark():
    # pyspark 4.3 warns that it does not fully support pandas 3 on every import of its pandas
    # functions; scoring passes Arrow batches (mapInArrow), and pandas only inside the worker.
    warnings.filterwarnings(
        "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
    )
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ConfigError(
            "Spark scoring needs pyspark: pip install 'anomaly-gan[spark]' (and Java 17 or "
            "later for Spark 4)"
        ) from None


# -- the session -----------------------------------------------------------------------------


def session(
    master: str | None = None,
    *,
    app_name: str = "anomaly-score",
    config: Mapping[str, str] | None = None,
) -> SparkSession:
    """A SparkSession for scoring (the active one, when there is one).

    ``master`` None takes spark-submit's master, else ``local[*]``. A local master binds the
    driver to 127.0.0.1 with no web UI and runs the Python workers on this interpreter
    (unless ``PYSPARK_PYTHON`` says otherwise). Arrow batches are ``ARROW_BATCH_ROWS`` rows,
    file partitions at most ``PARTITION_BYTES``; ``config`` adds or replaces Spark settings.

    When this call starts Spark (its JVM), Spark logs nothing but the scheduler's warnings
    (``_LOG4J2``): a failed job reaches the caller as an exception, which ``anomaly score``
    prints in one line, and Spark would first log it several times over with Java stack
    traces and the Python worker's traceback. ``spark.sparkContext.setLogLevel("WARN")``
    brings its log back. An active session, or one under spark-submit, logs as its owner set
    it."""
    _pyspark()
    from pyspark.sql import SparkSession

    if master is None and "PYSPARK_GATEWAY_PORT" not in os.environ:
        master = "local[*]"  # not under spark-submit, which starts the JVM with its master
    settings = {
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_BATCH_ROWS),
        "spark.sql.files.maxPartitionBytes": PARTITION_BYTES,
        "spark.ui.showConsoleProgress": "false",
    }
    if master is not None and master.startswith("local"):
        # A process of this interpreter's environment (the venv with the package), not
        # whatever python3 is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # Every service of the driver (block manager, workers' sockets) on the loopback
        # address, not the address the host name resolves to.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        settings.update(
            {
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.ui.enabled": "false",
            }
        )
    settings.update(config or {})
    with tempfile.TemporaryDirectory(prefix="anomaly-spark-") as folder:
        if SparkSession.getActiveSession() is None:
            # Read by the JVM as it starts; a JVM already running (spark-submit's) ignores it.
            # The caller's Java options come after it, so a configuration file of theirs wins.
            log_config = Path(folder) / "log4j2.properties"
            log_config.write_text(_LOG4J2, encoding="utf-8")
            settings["spark.driver.extraJavaOptions"] = (
                f"-Dlog4j2.configurationFile={log_config.as_uri()} "
                + settings.get("spark.driver.extraJavaOptions", "")
            ).strip()
        builder = SparkSession.builder.appName(app_name)
        if master is not None:
            builder = builder.master(master)
        for key, value in settings.items():
            builder = builder.config(key, value)
        return builder.getOrCreate()


# -- the model on the driver and on the workers ----------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What each task needs, pickled with the function (small: no model, no data)."""

    version: str
    bundle: Any
    """The broadcast of the bundle's files (a tar archive's bytes)."""
    features: tuple[str, ...]
    id_column: str | None
    columns: tuple[str, ...]
    """The columns the tasks read, in order (``_narrowed``): the features, the id column."""
    on_invalid: str
    source: str
    offsets: tuple[int, ...]
    """Rows before each partition, by partition index."""
    counts: tuple[int, ...]
    """Rows in each partition."""


def _model(model: PathLike, alarms: AlarmConfig | None) -> tuple[Detector, Path]:
    """The model loaded on the driver (every check of ``anomaly.load`` before any task), or
    a ``ConfigError`` when Spark cannot score it."""
    from anomaly import bundle, store
    from anomaly.alarms import AlarmStage
    from anomaly.detector import load

    path = store.resolve(model)
    bundle.verify_bundle(path)  # checksums first: the schema read next is the bundle's own
    window = _window(path)
    if window:
        raise ConfigError(
            f"{model}: a time-series model (model.window = {window}) scores sliding windows of "
            "each series in order; Spark scoring takes models of independent rows: score this "
            "data with --engine local"
        )
    detector = load(path)
    chosen = detector.config.alarms if alarms is None else alarms
    if AlarmStage.for_model(detector, chosen) is not None:
        raise ConfigError(
            f"the alarm stage (alarms.method = {chosen.method!r}) carries a state along each "
            "stream in order; Spark scoring flags with the model's threshold only: set "
            '[alarms] method = "threshold" or score with --engine local'
        )
    return detector, path


def _window(path: Path) -> int | None:
    """The window length in the bundle's schema, read before its networks are loaded (a
    schema ``load`` would refuse is left for ``load`` to report)."""
    try:
        schema = json.loads((path / "schema.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    window = schema.get("window") if isinstance(schema, dict) else None
    return window if isinstance(window, int) and not isinstance(window, bool) else None


def _packed(path: Path) -> bytes:
    """The bundle's files as an uncompressed tar archive (its networks barely compress)."""
    buffer = _bytes_io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for file in sorted(path.rglob("*")):
            if file.is_file():
                archive.add(file, arcname=str(file.relative_to(path)), recursive=False)
    return buffer.getvalue()


def _worker_detector(version: str, bundle) -> Detector:
    """This process's detector of ``version``: loaded once, on first use, from the
    broadcast bundle unpacked into Spark's local directory."""
    detector = _DETECTORS.get(version)
    if detector is not None:
        return detector
    from pyspark import SparkFiles

    from anomaly.detector import load

    started = time.perf_counter()
    try:
        root = SparkFiles.getRootDirectory()
    except Exception:  # outside a Spark task (tests calling this directly)
        root = tempfile.gettempdir()
    target = Path(tempfile.mkdtemp(prefix=f"anomaly-bundle-{version}-", dir=root))
    with tarfile.open(fileobj=_bytes_io.BytesIO(bundle.value), mode="r") as archive:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: no links or paths leading out
            archive.extractall(target, filter="data")
        else:
            archive.extractall(target)
    detector = load(target)
    if detector.version != version:
        raise errors.BundleError(
            f"the bundle that reached this executor is version {detector.version}, not "
            f"{version}; it was changed on the way"
        )
    _DETECTORS[version] = detector
    log = os.environ.get(LOAD_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            seconds = time.perf_counter() - started
            handle.write(f"{os.getpid()} {version} {seconds:.3f} {sys.executable}\n")
    return detector


# -- scoring ---------------------------------------------------------------------------------


def score_dataframe(
    df: DataFrame,
    model: PathLike,
    *,
    on_invalid: str | None = None,
    alarms: AlarmConfig | None = None,
    source: str = "input",
) -> DataFrame:
    """Score every row of ``df`` with the model bundle (or model store) ``model``.

    Returns a DataFrame of one row per valid input row with ``row`` (the 1-based position in
    ``df``, see the module's notes), the model's id column when it has one (as ``df`` has
    it), ``score``, ``is_anomaly``, ``percentile``, ``score_reconstruction``,
    ``score_feature``, ``score_critic``, ``score_latent`` and ``top_features``: the columns
    and values ``anomaly score`` writes, each partition's rows in input order.

    ``df`` needs the model's feature columns (numbers, or text that holds numbers) and its id
    column. ``on_invalid`` (default: the model's ``data.on_invalid``): ``"error"`` stops the
    job at a row with a NaN, null or infinite feature with a ``DataError`` naming it (Spark
    wraps it in its own exception; ``score_parquet`` unwraps it), ``"skip"`` leaves such rows
    out (``invalid_rows`` lists them). ``source`` names the data in messages.

    Runs one small job now (the row count of each partition); the scoring runs when the
    result is written or collected. A time-series model or an adaptive alarm stage
    (``alarms``, default the model's) is a ``ConfigError``."""
    _pyspark()
    detector, path = _model(model, alarms)
    return _scored(df, _prepare(df, detector, path, on_invalid, source))


def invalid_rows(
    df: DataFrame, model: PathLike, *, source: str = "input", alarms: AlarmConfig | None = None
) -> DataFrame:
    """The rows of ``df`` that ``score_dataframe(df, model, on_invalid="skip")`` leaves out:
    ``row``, ``reason`` and the model's features (as float32), as ``OUT.rejects.csv`` holds
    them in the local path."""
    _pyspark()
    detector, path = _model(model, alarms)
    return _invalid(df, _prepare(df, detector, path, "skip", source))


def _scored(df: DataFrame, job: _Job) -> DataFrame:
    return _narrowed(df, job.columns).mapInArrow(
        functools.partial(_score_batches, job=job), _score_schema(df, job)
    )


def _invalid(df: DataFrame, job: _Job) -> DataFrame:
    from pyspark.sql.types import FloatType, LongType, StringType, StructField, StructType

    schema = StructType(
        [StructField("row", LongType(), False), StructField("reason", StringType(), False)]
        + [StructField(name, FloatType(), True) for name in job.features]
    )
    return _narrowed(df, job.columns).mapInArrow(
        functools.partial(_invalid_batches, job=job), schema
    )


def _narrowed(df: DataFrame, columns: tuple[str, ...]) -> DataFrame:
    """Only ``columns``, under names without dots (``_c0``, ``_c1``, ...; the tasks give the
    names back in ``_numbered``). pyspark's ``mapInArrow`` looks every column of its input
    up by name, and reads a name with a dot (``x.y``) as field ``y`` of a column ``x``: any
    such column, feature or not, failed the job. Nor are other columns read for nothing."""
    from pyspark.sql import functions as F

    quoted = ("`" + name.replace("`", "``") + "`" for name in columns)
    return df.select([F.col(name).alias(f"_c{i}") for i, name in enumerate(quoted)])


def _prepare(df: DataFrame, detector: Detector, path: Path, on_invalid, source: str) -> _Job:
    from anomaly.files import refuse_ids_named_like_results

    on_invalid = on_invalid or detector.config.data.on_invalid
    if on_invalid not in ("error", "skip"):
        raise ConfigError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    features = detector.feature_names
    id_column = detector.config.data.id_column
    refuse_ids_named_like_results(id_column)
    _check_columns(df, features, id_column, source)
    columns = tuple(dict.fromkeys([*features, *([id_column] if id_column else [])]))
    offsets, counts = _partition_offsets(_narrowed(df, columns))
    spark = df.sparkSession
    bundle = spark.sparkContext.broadcast(_packed(path))
    return _Job(
        version=detector.version,
        bundle=bundle,
        features=tuple(features),
        id_column=id_column,
        columns=columns,
        on_invalid=on_invalid,
        source=source,
        offsets=offsets,
        counts=counts,
    )


def _check_columns(df: DataFrame, features, id_column: str | None, source: str) -> None:
    """The model's columns are in ``df`` and its features hold numbers or text."""
    from pyspark.sql.types import BooleanType, NumericType, StringType

    types = {field.name: field.dataType for field in df.schema.fields}
    wanted = [(name, "feature") for name in features]
    if id_column:
        wanted.append((id_column, "id column"))
    missing = [f"{name!r} ({role})" for name, role in wanted if name not in types]
    if missing:
        available = ", ".join(repr(name) for name in list(types)[:20])
        raise SchemaError(
            f"{source}: column(s) not found: {', '.join(missing)}; available: {available} "
            "(names are case-sensitive)"
        )
    for name in features:
        if not isinstance(types[name], NumericType | StringType | BooleanType):
            raise SchemaError(
                f"{source}: feature column {name!r} is {types[name].simpleString()}, not a "
                "number; cast it or leave it out of the model's features"
            )


def _partition_offsets(df: DataFrame) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Rows before each partition and in it: one job over the partition ids (no column is
    read from Parquet)."""
    from pyspark.sql import functions as F

    partitions = df.rdd.getNumPartitions()
    with _spark_errors():  # the first job: a file Spark cannot read fails here
        counted = (
            df.select(F.spark_partition_id().alias("partition"))
            .groupBy("partition")
            .count()
            .collect()
        )
    counts = [0] * partitions
    for record in counted:
        counts[record["partition"]] = record["count"]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    return tuple(offsets), tuple(counts)


def _score_schema(df: DataFrame, job: _Job):
    from pyspark.sql.types import (
        BooleanType,
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    fields = [StructField("row", LongType(), False)]
    if job.id_column:
        fields.append(df.schema[job.id_column])
    fields += [
        StructField("score", DoubleType(), True),
        StructField("is_anomaly", BooleanType(), True),
        StructField("percentile", DoubleType(), True),
        *(StructField(f"score_{c}", DoubleType(), True) for c in COMPONENTS),
        StructField("top_features", StringType(), True),
    ]
    return StructType(fields)


def _numbered(batches: Iterator[pa.RecordBatch], job: _Job):
    """Each batch with its 1-based row numbers, its features as float32 (a value that is not a
    number stops, naming its row and column) and the values too large for float32 (for the
    message); checks the partition's row count."""
    import pyarrow as pa
    from pyspark import TaskContext

    from anomaly import io

    partition = TaskContext.get().partitionId()
    first = job.offsets[partition] + 1
    seen = 0
    for narrowed in batches:
        batch = pa.RecordBatch.from_arrays(narrowed.columns, names=list(job.columns))
        rows = np.arange(first + seen, first + seen + batch.num_rows, dtype=np.int64)
        seen += batch.num_rows
        frame = batch.select(list(job.features)).to_pandas()
        # Spark's schema types each column: a boolean one is a column of flags throughout
        flags = frozenset(name for name in job.features if pa.types.is_boolean(batch[name].type))
        yield batch, rows, *io._feature_matrix(frame, list(job.features), rows, job.source, flags)
    if seen != job.counts[partition]:
        raise DataError(
            f"{job.source}: partition {partition} held {seen} rows when scored but "
            f"{job.counts[partition]} when counted; the input changed or its order is not "
            "deterministic: write it out (or checkpoint it) before scoring"
        )


def _score_batches(batches: Iterator[pa.RecordBatch], job: _Job) -> Iterator[pa.RecordBatch]:
    """A task's scoring: Arrow batches of input in, Arrow batches of scores out."""
    from anomaly.backend import import_keras_quietly

    # Before anomaly.files imports it: TensorFlow's start-up lines would go from every Python
    # worker to the executor's stderr (under local[n], the terminal of `anomaly score`).
    import_keras_quietly()
    import pandas as pd
    import pyarrow as pa

    from anomaly import io
    from anomaly.files import _add_scores

    detector = _worker_detector(job.version, job.bundle)
    for batch, rows, features, beyond_float32 in _numbered(batches, job):
        invalid = io.find_invalid_rows(features)
        if invalid.any() and job.on_invalid == "error":
            raise DataError(
                io.describe_invalid(
                    rows[invalid],
                    features[invalid],
                    list(job.features),
                    job.source,
                    beyond_float32=beyond_float32,
                )
            )
        valid = ~invalid
        frame = pd.DataFrame({"row": rows[valid]})
        result = detector.score(features[valid]) if valid.any() else None
        _add_scores(frame, result, np.arange(int(valid.sum())), detector)
        table = pa.Table.from_pandas(frame, schema=_scores_schema(), preserve_index=False)
        if job.id_column:
            ids = batch.column(job.id_column)
            ids = ids if valid.all() else ids.filter(pa.array(valid))
            table = table.add_column(1, batch.schema.field(job.id_column), ids)
        yield from table.to_batches()


@functools.cache
def _scores_schema() -> pa.Schema:
    """The score columns as Arrow types, as ``_score_schema`` declares them to Spark."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("row", pa.int64(), nullable=False),
            ("score", pa.float64()),
            ("is_anomaly", pa.bool_()),
            ("percentile", pa.float64()),
            *((f"score_{c}", pa.float64()) for c in COMPONENTS),
            ("top_features", pa.string()),
        ]
    )


def _invalid_batches(batches: Iterator[pa.RecordBatch], job: _Job) -> Iterator[pa.RecordBatch]:
    """A task's invalid rows: row number, reason and features."""
    import pyarrow as pa

    from anomaly import io

    for _, rows, features, _ in _numbered(batches, job):
        invalid = io.find_invalid_rows(features)
        if not invalid.any():
            continue
        columns = {
            "row": pa.array(rows[invalid]),
            "reason": pa.array(["NaN or infinite feature value"] * int(invalid.sum())),
        }
        for j, name in enumerate(job.features):
            columns[name] = pa.array(features[invalid, j])
        yield pa.RecordBatch.from_pydict(columns)


# -- files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparkRun:
    """What ``score_parquet`` did, for the CLI to print."""

    rows_read: int
    rows_scored: int
    anomalies: int
    rows_rejected: int
    output: str
    rejects: str | None
    partitions: int
    seconds: float


def score_parquet(
    spark: SparkSession,
    data: str,
    out: str,
    model: PathLike,
    *,
    on_invalid: str | None = None,
    alarms: AlarmConfig | None = None,
) -> SparkRun:
    """Score the Parquet file or folder of Parquet files ``data`` into ``out``, a folder of
    Parquet part files (``score_dataframe``'s columns); paths are local or any file system
    Spark reads (``hdfs://``, ``s3a://``). Rows skipped with ``on_invalid="skip"`` go to
    ``<out>.rejects``, a folder of Parquet files (``invalid_rows``).

    The output is written in a hidden folder beside ``out`` and renamed when complete, so a
    failed run leaves nothing at ``out``; an ``out`` that exists is refused. An error of the
    data (a ``DataError`` raised on an executor) is raised here as itself, and a file Spark
    cannot read (not Parquet, truncated, a damaged page) is a ``DataError`` naming it."""
    started = time.perf_counter()
    out = out.rstrip("/")
    rejects_out = out + ".rejects"
    fs = _FileSystem(spark)
    for target in (out, rejects_out):
        if fs.exists(target):
            raise DataError(
                f"{target} exists; remove it or choose another --out (Spark scoring writes a "
                "new folder)"
            )
    local = Path(data)
    if "://" not in data and local.is_file() and local.suffix.lower() not in (".parquet", ".pq"):
        raise DataError(
            f"{data}: Spark scoring reads Parquet (a .parquet file or a folder of them); "
            "score other formats with --engine local"
        )
    detector, path = _model(model, alarms)
    df = _read_parquet(spark, data)
    job = _prepare(df, detector, path, on_invalid, data)
    rows_read = sum(job.counts)
    if rows_read == 0:
        raise DataError(f"{data}: has no data rows")
    staging = fs.partial_name(out)
    scores, invalid = f"{staging}/scores", f"{staging}/rejects"
    try:
        with _spark_errors():
            _scored(df, job).write.parquet(scores)
            written = spark.read.parquet(scores)
            rows_scored = written.count()
            anomalies = written.where("is_anomaly").count()
            rejected = rows_read - rows_scored
            if rejected:
                _invalid(df, job).write.parquet(invalid)
                fs.rename(invalid, rejects_out)
            fs.rename(scores, out)
    finally:
        _remove_staging(fs, staging, job.bundle)
    return SparkRun(
        rows_read=rows_read,
        rows_scored=rows_scored,
        anomalies=anomalies,
        rows_rejected=rejected,
        output=out,
        rejects=rejects_out if rejected else None,
        partitions=len(job.counts),
        seconds=time.perf_counter() - started,
    )


def _remove_staging(fs: _FileSystem, staging: str, bundle: Any) -> None:
    """Remove the hidden staging folder and the bundle's broadcast without replacing the
    exception on its way out: after SIGTERM or Ctrl-C the JVM's gateway may be gone, and
    its Py4JError took the place of the one 'terminated' line (a traceback, exit 1), with
    the folder left behind. A local folder is then removed by Python."""
    try:
        fs.delete(staging)
    except Exception as exc:  # noqa: BLE001 (the gateway is gone: the run is ending anyway)
        local = staging.removeprefix("file:")
        if "://" not in local:
            shutil.rmtree(local, ignore_errors=True)
        else:
            log.warning("could not remove the staging folder %s: %s", staging, exc)
    with contextlib.suppress(Exception):
        bundle.unpersist()


def _read_parquet(spark: SparkSession, data: str) -> DataFrame:
    from pyspark.errors import AnalysisException

    try:
        with _spark_errors():  # the footers are read here, for the schema
            df = spark.read.parquet(data)
            _refuse_folder_names_of_stored_columns(spark, df, data)
            return df
    except AnalysisException as exc:
        detail = str(exc).strip().splitlines()[0]
        raise DataError(f"{data}: cannot be read as Parquet ({detail})") from None


def _refuse_folder_names_of_stored_columns(spark: SparkSession, df: DataFrame, data: str) -> None:
    """A ``DataError`` where a hive-style folder name below ``data`` (``id=5/``) is the key of
    a column the files store too: Spark gives every row of the folder the name's value, so
    each id became 5 without a word; the local path refuses it (``anomaly.io``). The files'
    own columns are read from one file's footer (a file read alone gets no folder columns)."""
    hadoop = spark._jvm.org.apache.hadoop.fs
    root = hadoop.Path(data)
    root = root.getFileSystem(spark._jsc.hadoopConfiguration()).makeQualified(root)
    prefix = root.toUri().getPath().rstrip("/") + "/"
    files = df.inputFiles()
    keys = dict.fromkeys(
        part.split("=", 1)[0]
        for file in files
        if (path := hadoop.Path(file).toUri().getPath()).startswith(prefix)
        for part in path[len(prefix) :].split("/")[:-1]
        if "=" in part
    )
    if not keys:
        return
    stored = spark.read.parquet(files[0]).columns
    if clash := [key for key in keys if key in stored]:
        raise DataError(
            f"{data}: column {clash[0]!r} is both in the Parquet files and a folder name "
            f"({clash[0]}=...), and Spark would give every row the folder's value; rename the "
            "column or the folders"
        )


@contextlib.contextmanager
def _spark_errors() -> Iterator[None]:
    """Raises a Spark failure that the user can fix as this package's error, in one line: an
    ``AnomalyError`` a Python worker raised as itself, a file Spark cannot read as a
    ``DataError`` naming it. Any other failure passes as it is."""
    try:
        yield
    except errors.AnomalyError:
        raise
    except Exception as exc:
        error = _worker_error(exc) or _worker_crash(exc) or _unreadable_file(exc)
        if error is None:
            raise
        raise error from None


def _worker_crash(exc: Exception) -> errors.AnomalyError | None:
    """A Python worker that died (killed for memory, most often) as one line, not the
    hundreds of lines of Spark's Java stack."""
    crash = re.search(r"Python worker exited unexpectedly \(crashed\)(?: - ([^\n]*))?", str(exc))
    if crash is None:
        return None
    said = f" ({crash.group(1).strip()[:200]})" if crash.group(1) else ""
    return errors.AnomalyError(
        f"a Python worker of Spark exited unexpectedly{said}: crashed or killed, most often "
        "for memory (each worker holds the model, 0.5-1 GB); give the workers more memory "
        "(spark.executor.pyspark.memory, the executors' memory) or fewer cores per executor"
    )


def _worker_error(exc: Exception) -> errors.AnomalyError | None:
    """The ``AnomalyError`` a Python worker raised: Spark wraps it in an exception whose text
    holds the worker's traceback."""
    found = re.findall(r"anomaly\.errors\.(\w+): (.+)", str(exc))
    if found:
        name, message = found[-1]
        cls = getattr(errors, name, errors.AnomalyError)
        if isinstance(cls, type) and issubclass(cls, errors.AnomalyError):
            return cls(message.strip())
    return None


def _unreadable_file(exc: Exception) -> DataError | None:
    """The file and the reason of Spark's ``FAILED_READ_FILE`` (raised reading the footers for
    the schema, or by a task reading the rows), as a ``DataError``."""
    from py4j.java_gateway import is_instance_of
    from py4j.protocol import Py4JJavaError
    from pyspark import SparkContext

    if not isinstance(exc, Py4JJavaError):
        return None
    failure = exc.java_exception
    while failure is not None and not (
        is_instance_of(SparkContext._gateway, failure, "org.apache.spark.SparkThrowable")
        and str(failure.getCondition()).startswith("FAILED_READ_FILE.")
    ):
        failure = failure.getCause()
    if failure is None:
        return None
    condition = str(failure.getCondition())
    cause = failure
    while cause.getCause() is not None:
        cause = cause.getCause()
    detail = str(cause.getMessage() or cause.getClass().getSimpleName()).splitlines()[0]
    # Parquet's own check of a file's last bytes, in a task reading a folder, says the same.
    if condition.endswith(".CANNOT_READ_FILE_FOOTER") or "is not a Parquet file" in detail:
        reason = "cannot read its Parquet footer: not a Parquet file, or truncated"
    else:
        reason = f"cannot read it as Parquet ({detail})"
    return DataError(
        f"{_shown(str(failure.getMessageParameters()['path']))}: {reason} (Spark's "
        f"{condition}); rewrite it or leave it out"
    )


def _shown(path: str) -> str:
    """A file as Spark names it in an error, as the user would write it: a local one without
    the ``file:`` scheme, a URI (a task names its file so, a space as %20) decoded."""
    path = re.sub(r"^file:(//)?(?=/)", "", path)
    return path if " " in path else urllib.parse.unquote(path)


class _FileSystem:
    """Hadoop's FileSystem API through the driver's JVM: the same calls for local paths,
    HDFS and object stores."""

    def __init__(self, spark: SparkSession):
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, path: str):
        hadoop_path = self._jvm.org.apache.hadoop.fs.Path(path)
        return hadoop_path.getFileSystem(self._conf), hadoop_path

    def exists(self, path: str) -> bool:
        fs, hadoop_path = self._path(path)
        return bool(fs.exists(hadoop_path))

    def delete(self, path: str) -> None:
        fs, hadoop_path = self._path(path)
        if fs.exists(hadoop_path):
            fs.delete(hadoop_path, True)

    def rename(self, source: str, target: str) -> None:
        fs, source_path = self._path(source)
        if not fs.rename(source_path, self._jvm.org.apache.hadoop.fs.Path(target)):
            raise DataError(
                f"cannot rename {source} to {target}; check that its folder is writable"
            )

    @staticmethod
    def partial_name(path: str) -> str:
        """A hidden sibling of ``path`` (readers of the folder above skip names starting with
        '.')."""
        head, _, name = path.rpartition("/")
        partial = f".partial-{name}-{uuid.uuid4().hex[:8]}"
        return f"{head}/{partial}" if head else partial
