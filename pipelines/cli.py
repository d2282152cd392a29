"""The ``anomaly`` command line: a thin shell over the library.

Each verb parses its options, calls one library function and prints. Errors the user can
fix (``anomaly.AnomalyError``) are one line on stderr and exit code 2; click's usage errors
also exit 2. Ctrl-C is one line and exit code 130, as shells report a command it stopped;
SIGTERM (``kill``, ``timeout``, a job scheduler's stop) likewise, with exit code 143.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import warnings
from pathlib import Path

import click

from anomaly.errors import AnomalyError

EXIT_BAD_INPUT = 2
#: 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C, so scripts can tell it
#: from a failure (click's own "Aborted!" exits 1).
EXIT_INTERRUPTED = 130
#: 128 + SIGTERM.
EXIT_TERMINATED = 143


class _Terminated(BaseException):
    """SIGTERM, raised where the command is, so that its clean-up runs as on Ctrl-C (no
    half-written output left). A BaseException, as KeyboardInterrupt is, so that no
    ``except Exception`` on the way takes it for an error of its own."""


def _terminate(_number, _frame) -> None:
    raise _Terminated


def _config(path: str | None, defaults: dict | None = None, **sections):
    """The configuration of ``path`` (else the defaults), updated by the options given
    (``sections``; None: not given), and by ``defaults`` only where the file sets nothing:
    the command's own choices yield to what the user wrote."""
    from anomaly.config import Config

    config = Config.from_toml(path) if path else Config()
    for name, keys in (defaults or {}).items():
        written = getattr(config, name).model_fields_set
        sections[name] = {
            **{k: v for k, v in keys.items() if k not in written},
            **sections.get(name, {}),
        }
    given = {
        name: {k: v for k, v in keys.items() if v is not None} for name, keys in sections.items()
    }
    return config.updated(**{name: keys for name, keys in given.items() if keys})


@contextlib.contextmanager
def _training_warnings_kept():
    """Keep ``TrainingWarning``s off stderr: the model's health report holds each, which the
    command prints as one line (Python's own would print it again, with a source line)."""
    from anomaly.health import TrainingWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingWarning)
        yield


@contextlib.contextmanager
def _warnings_as_lines(category: type[Warning]):
    """Print warnings of ``category`` as one ``warning:`` line each, once the block is
    done (Python's own print a source line too); others are shown as Python shows them."""
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", category)
            yield
    finally:  # also when the block failed (a warning may say why), and once Python's own
        _print_warnings(caught, category)  # showwarning is back: the record's would loop


def _print_warnings(caught: list, category: type[Warning]) -> None:
    for warning in caught:
        if issubclass(warning.category, category):
            click.echo(f"warning: {warning.message}", err=True)
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )


def _features(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


class _Command(click.Command):
    """Checks that the Keras backend is installed before the command imports Keras, which
    would fail with a traceback (``KERAS_BACKEND=torch`` without PyTorch), then imports it
    without TensorFlow's start-up lines on stderr."""

    def invoke(self, ctx):
        from anomaly.backend import import_keras_quietly, require_backend

        require_backend()
        import_keras_quietly()
        return super().invoke(ctx)


class _Group(click.Group):
    """Turns ``AnomalyError`` into one line on stderr and exit code 2, Ctrl-C into one line
    and exit code 130, and SIGTERM into one line and exit code 143 (the command's own
    clean-up has run by then)."""

    command_class = _Command

    def invoke(self, ctx):
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
        try:  # `serve` installs its own handlers, to stop gracefully
            return super().invoke(ctx)
        except AnomalyError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except _Terminated:
            click.echo("terminated", err=True)
            sys.exit(EXIT_TERMINATED)
        finally:
            if on_main_thread:
                signal.signal(signal.SIGTERM, previous)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """GAN-based anomaly detection: train on normal data, score files, serve a Kafka stream."""


_alarms_config = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML file whose [alarms] keys replace the model's (the alarm stage: method, "
    "semantics, ...). Only [alarms] is used, but the whole file is validated: an unknown "
    "or moved key in any section (such as serve.alarm_level) is an error.",
)


def _alarms(detector, config_path: str | None):
    """The model's [alarms], with the keys of ``config_path``'s section when given; a
    warning names the file's sections that are the model's (set at training): all but
    [alarms] and the service's [serve], a file the service may share."""
    if not config_path:
        return None
    from anomaly.config import Config

    given = Config.from_toml(config_path)
    ignored = [
        f"[{name}]"
        for name in type(given).model_fields
        if name not in ("alarms", "serve") and getattr(given, name).model_fields_set
    ]
    if ignored:
        click.echo(
            f"warning: {config_path}: only [alarms] applies here; {', '.join(ignored)} "
            f"{'is' if len(ignored) == 1 else 'are'} the model's, set when it was trained "
            "(anomaly calibrate or retrain change it)",
            err=True,
        )
    return detector.config.alarms.updated_from_toml(config_path)


def _version_of(model: str, err: bool = False) -> str:
    """The bundle ``model`` names: itself, or a store's latest version, which is said (a
    result names no version, so after a rollback the line tells which one scored)."""
    from anomaly.store import is_store, resolve

    if not is_store(model):
        return model
    bundle = resolve(model)
    click.echo(f"model: version {bundle.name} of the store {model} ({bundle})", err=err)
    return str(bundle)


_progress = click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar on stderr (default: when stderr is a terminal).",
)


def _on_invalid(rejects: str):
    """The ``--on-invalid`` option of a command that writes skipped rows to ``rejects``."""
    return click.option(
        "--on-invalid",
        type=click.Choice(["error", "skip"]),
        default=None,
        help="Rows with NaN/inf: stop with their row numbers (default), or write them to "
        f"{rejects} and go on.",
    )


def _counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 ("1 row", "3 rows")."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


_model = click.option(
    "--model",
    required=True,
    type=click.Path(file_okay=False),
    help="Model bundle, or a model store (its latest version).",
)


def _from_fresh_normal_rows(command):
    """The options of the commands that make a new model from a file of fresh normal rows."""
    for option in reversed(
        [
            _model,
            click.option("--data", required=True, type=click.Path(), help="Fresh normal rows."),
            click.option(
                "--out",
                required=True,
                type=click.Path(file_okay=False),
                help="New model bundle to write (not a model store or one of its versions: "
                "`anomaly publish` it into a store).",
            ),
            click.option(
                "--label-column",
                help="Use only rows whose label is 0/false (default: the model's "
                "data.label_column, where the file has it; '' reads no labels).",
            ),
        ]
    ):
        command = option(command)
    return command


@cli.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(),
    help="CSV, Parquet, JSON lines or .npy file, or a folder of Parquet files.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Model bundle directory to write.",
)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file."
)
@click.option("--features", help="Comma-separated feature columns (default: every numeric column).")
@click.option("--label-column", help="Train only on rows whose label is 0/false.")
@click.option("--id-column", help="Record id column (excluded from features).")
@click.option("--entity-column", help="Time-series mode: column that separates series.")
@click.option("--window", type=int, help="Time-series mode: sliding-window length.")
@click.option("--steps", type=int, help="Generator updates (training length).")
@click.option("--seed", type=int, help="Random seed.")
@_on_invalid("OUT.rejects.csv, beside the model folder")
def train(
    data,
    out,
    config_path,
    features,
    label_column,
    id_column,
    entity_column,
    window,
    steps,
    seed,
    on_invalid,
):
    """Train a detector on the normal rows of DATA and save it to OUT."""
    from anomaly.files import train_file
    from anomaly.tables import FeatureRoleWarning

    config = _config(
        config_path,
        data={
            "features": _features(features),
            "label_column": label_column,
            "id_column": id_column,
            "entity_column": entity_column,
            "on_invalid": on_invalid,
        },
        model={"window": window},
        # Keras writes its progress to stdout: a live bar on a terminal, and one plain line
        # per epoch in a log or a pipe (no escape codes among the result lines).
        training={"steps": steps, "seed": seed},
        defaults={"training": {"verbose": 1 if sys.stdout.isatty() else 2}},
    )
    with _training_warnings_kept(), _warnings_as_lines(FeatureRoleWarning):
        detector, summary = train_file(data, out, config)
    click.echo(
        f"trained on {summary.rows_scored} of {summary.rows_read} rows in {summary.seconds:.1f} s; "
        f"threshold {detector.threshold:.4g} (target FPR {config.scoring.target_fpr:.2%})"
    )
    if (folds := detector.metadata["calibration_folds"]) > 1:  # why training took that long
        click.echo(
            f"calibrated on {detector.metadata['calibration_records']} records, cross-fitted "
            f"by {folds} models (training.calibration_folds)"
        )
    # Without --features every numeric column is one, and a column of text is none: say which.
    names = detector.feature_names
    click.echo(f"features ({len(names)}): {', '.join(names[:10])}{' ...' if names[10:] else ''}")
    for warning in detector.health["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if summary.rejects:
        click.echo(f"{_counted(summary.rows_rejected, 'row')} rejected -> {summary.rejects}")
    click.echo(f"model {detector.version} -> {summary.output}")


@cli.command()
@_model
@click.option(
    "--data",
    required=True,
    type=click.Path(),
    help="File or folder of Parquet files to score (--engine spark: local or any URI Spark reads).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Output .csv, .tsv, .parquet or .jsonl (--engine spark: a new folder of Parquet part "
    "files).",
)
@_progress
@_on_invalid("OUT.rejects.csv (--engine spark: the folder OUT.rejects)")
@_alarms_config
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="local: this process, in chunks. spark: Apache Spark (the spark extra), Parquet in "
    "and out; models of independent rows only.",
)
@click.option(
    "--spark-master",
    help="Spark master URL for --engine spark, e.g. local[2], yarn, k8s://... (default: "
    "spark-submit's, else local[*]).",
)
def score(model, data, out, progress, on_invalid, config_path, engine, spark_master):
    """Score every row of DATA into OUT, keeping row order, the id and entity columns.

    With an adaptive alarm stage (by default in time-series mode) OUT also gets p_value and
    alarm, per file or per entity. --engine spark writes the same columns; skipped rows go to
    OUT.rejects (a Parquet folder)."""
    import anomaly

    model = _version_of(model)

    if engine == "spark":
        from anomaly import spark

        run = spark.score_parquet(
            spark.session(spark_master),
            data,
            out,
            model,
            on_invalid=on_invalid,
            alarms=_alarms(anomaly.load(model), config_path) if config_path else None,
        )
        click.echo(
            f"scored {run.rows_scored} of {run.rows_read} rows in "
            f"{_counted(run.partitions, 'partition')} "
            f"in {run.seconds:.1f} s: {run.anomalies} flagged -> {run.output}"
        )
        if run.rejects:
            click.echo(f"{_counted(run.rows_rejected, 'row')} rejected -> {run.rejects}")
        return
    if spark_master:
        raise click.UsageError("--spark-master needs --engine spark")
    from anomaly.alarms import AlarmWarning
    from anomaly.files import score_file

    detector = anomaly.load(model)
    with _warnings_as_lines(AlarmWarning):
        summary = score_file(
            detector,
            data,
            out,
            on_invalid=on_invalid,
            progress=progress,
            alarms=_alarms(detector, config_path),
        )
    alarms = "" if summary.alarms is None else f", {_counted(summary.alarms, 'alarm')}"
    click.echo(
        f"scored {summary.rows_scored} of {summary.rows_read} rows in {summary.seconds:.1f} s: "
        f"{summary.anomalies} flagged{alarms} -> {summary.output}"
    )
    waiting = summary.rows_unscored
    window, entity = detector.config.model.window, detector.schema.entity_column
    if window and waiting:
        per = f" of one {entity}" if entity else ""
        click.echo(
            f"{_counted(waiting, 'row')} without a score (null): a row is scored once it "
            f"ends a window of {window} rows{per}"
        )
    if summary.rejects:
        click.echo(f"{_counted(summary.rows_rejected, 'row')} rejected -> {summary.rejects}")


@cli.command()
@_model
@click.option("--data", required=True, type=click.Path(), help="Labelled file or folder.")
@click.option("--label-column", required=True, help="Column with 1 for anomalies, 0 for normal.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    help="Write plots and report.md here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@_progress
@_on_invalid("DATA.rejects.csv (in --report when given)")
@_alarms_config
def evaluate(model, data, label_column, report_dir, as_json, progress, on_invalid, config_path):
    """Measure detection quality on labelled DATA (and the alarm stage's, when adaptive)."""
    import anomaly
    from anomaly.alarms import AlarmWarning
    from anomaly.evaluation import evaluate_file

    detector = anomaly.load(_version_of(model, err=as_json))
    with _warnings_as_lines(AlarmWarning):
        result = evaluate_file(
            detector,
            data,
            label_column,
            report_dir=report_dir,
            on_invalid=on_invalid,
            progress=progress,
            alarms=_alarms(detector, config_path),
        )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        for name, value in result.to_json().items():
            click.echo(
                f"{name:<22}{value:>12.4f}"
                if isinstance(value, float)
                else f"{name:<22}{value:>12}"
            )
    if report_dir:
        click.echo(f"report -> {Path(report_dir) / 'report.md'}", err=as_json)


@cli.command()
@_from_fresh_normal_rows
def calibrate(model, data, out, label_column):
    """Recalibrate a model on fresh normal data (threshold, component statistics, references)
    without retraining its networks; save it as a new model."""
    import anomaly
    from anomaly.files import calibrate_file

    parent = anomaly.load(model)
    with _training_warnings_kept():
        detector, summary = calibrate_file(parent, data, out, label_column)
    click.echo(
        f"recalibrated on {summary.rows_scored} of {summary.rows_read} rows in "
        f"{summary.seconds:.1f} s; threshold {detector.threshold:.4g} (was "
        f"{parent.threshold:.4g}, target FPR {detector.engine.params.target_fpr:.2%})"
    )
    for warning in detector.health["warnings"][len(parent.health["warnings"]) :]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"model {detector.version} (parent {parent.version}) -> {summary.output}")


@cli.command()
@_from_fresh_normal_rows
@click.option("--steps", type=int, help="Generator updates (default: the model's training.steps).")
def retrain(model, data, out, label_column, steps):
    """Retrain a model from its weights on fresh normal data, then calibrate it; save it as a
    new model (same features, configuration and standardisation)."""
    import anomaly
    from anomaly.files import retrain_file

    parent = anomaly.load(model)
    with _training_warnings_kept():
        detector, summary = retrain_file(parent, data, out, label_column, steps)
    click.echo(
        f"retrained on {summary.rows_scored} of {summary.rows_read} rows in "
        f"{summary.seconds:.1f} s; threshold {detector.threshold:.4g} (was {parent.threshold:.4g})"
    )
    for name, value in detector.metadata.get("final_metrics", {}).items():
        before = parent.metadata.get("final_metrics", {}).get(name)
        was = f" (parent {before:.4g})" if isinstance(before, float) else ""
        click.echo(f"  {name} {value:.4g}{was}")
    for warning in detector.health["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"model {detector.version} (parent {parent.version}) -> {summary.output}")


@cli.command()
@_model
@click.option("--data", required=True, type=click.Path(), help="File or folder to measure.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"features": [{"name": ..., "drift": ...}, ...]}, most drifted first.',
)
@_on_invalid("DATA.rejects.csv")
def drift(model, data, as_json, on_invalid):
    """Rank the features of DATA by their drift from the model's training data, most drifted
    first.

    The figure is each feature's population stability index (PSI) over about 10 bins of the
    training data: below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a significant
    one. On too few rows (225 for ten bins) chance alone reads a shift: a warning on stderr
    says so. Skipped rows (--on-invalid skip) go to DATA.rejects.csv."""
    import anomaly
    from anomaly.drift import DriftWarning, reading
    from anomaly.files import drift_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DriftWarning)  # printed below, as one line
        result = drift_file(anomaly.load(model), data, on_invalid=on_invalid)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        features = [{"name": f.name, "drift": f.drift} for f in result.features]
        click.echo(json.dumps({"features": features}))
    else:
        width = max(len("feature"), *(len(f.name) for f in result.features))
        click.echo(f"{'feature':<{width}}  {'PSI':>8}  reading")
        for f in result.features:
            click.echo(f"{f.name:<{width}}  {f.drift:>8.4f}  {reading(f.drift)}")
    if result.rejects:
        click.echo(
            f"{_counted(result.rows_rejected, 'row')} rejected -> {result.rejects}", err=as_json
        )


@cli.command()
@click.option(
    "--model",
    required=True,
    type=click.Path(file_okay=False),
    help="Model bundle to publish (a store's version is STORE/N; only the files its manifest "
    "lists are copied).",
)
@click.option(
    "--store",
    required=True,
    type=click.Path(file_okay=False),
    help="Model store (made if missing).",
)
def publish(model, store):
    """Add a bundle to a model store as its next version, atomically; print the number."""
    from anomaly.store import publish as publish_bundle

    click.echo(publish_bundle(model, store))


@cli.command()
@click.argument("model", type=click.Path(file_okay=False))
def info(model):
    """Show what a model bundle holds."""
    import anomaly

    click.echo(json.dumps(anomaly.load(model).describe(), indent=2, default=str))


@cli.command()
@click.option(
    "--model",
    type=click.Path(file_okay=False),
    help="Model bundle, or a model store (its latest version).",
)
@click.option("--bootstrap-servers", help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT].")
@click.option("--input-topic", help="Topic of the records to score.")
@click.option("--output-topic", help="Topic to write one result per record to.")
@click.option(
    "--dlq-topic", help="Dead-letter topic for records that cannot be scored ('' turns it off)."
)
@click.option("--alerts-topic", help="Topic that also receives the results of flagged records.")
@click.option(
    "--create-topics",
    is_flag=True,
    default=None,
    help="Create missing output, dead-letter and alerts topics at start (the input topic "
    "must exist).",
)
@click.option("--group-id", help="Kafka consumer group.")
@click.option("--metrics-port", type=int, help="Port of /metrics, /healthz, /readyz (0: any free).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML file ([serve] section; its [alarms] keys replace the model's).",
)
def serve(
    model,
    bootstrap_servers,
    input_topic,
    output_topic,
    dlq_topic,
    alerts_topic,
    create_topics,
    group_id,
    metrics_port,
    config_path,
):
    """Score a Kafka topic continuously until SIGTERM/SIGINT.

    Every option can also be set as ANOMALY_SERVE_<OPTION> (e.g. ANOMALY_SERVE_INPUT_TOPIC) or
    in the [serve] section of --config; the command line wins over the environment, which
    wins over the file. Kafka client options (TLS, SASL, compression) go in [serve.kafka] or
    ANOMALY_SERVE_KAFKA_<OPTION>. The alarm stage's settings are the model's [alarms],
    replaced key by key by the [alarms] section of --config, then by ANOMALY_ALARMS_<KEY>.
    """
    from anomaly.stream import run_service

    run_service(
        config_path,
        model=model,
        bootstrap_servers=bootstrap_servers,
        input_topic=input_topic,
        output_topic=output_topic,
        dlq_topic=dlq_topic,
        alerts_topic=alerts_topic,
        create_topics=create_topics,
        group_id=group_id,
        metrics_port=metrics_port,
    )


def main() -> None:
    cli(prog_name="anomaly")


if __name__ == "__main__":
    main()
