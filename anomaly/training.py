"""``train``: from normal records to a calibrated ``Detector``.

The steps, in order: keep normal rows, window them (time-series mode), hold out a
validation split, fit the standardiser on the training split only, fit the GAN, measure the
training's health, calibrate the scoring engine on the held-out split (and, cross-fitting,
on the other records too, each scored by a model trained without it), and summarise the
normal rows and calibration scores for drift (``anomaly.drift``).
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
from datetime import UTC, datetime
from importlib import metadata as package_metadata

import keras
import numpy as np
import pandas as pd

from anomaly import health, tables
from anomaly.calibration import (
    MIN_STANDARDISING_RECORDS,
    calibrate,
    refuse_records_that_do_not_vary,
    resolution_warning,
    resolves,
)
from anomaly.config import Config, TrainingConfig
from anomaly.detector import Detector, Schema
from anomaly.drift import DriftSummary
from anomaly.errors import DataError, TrainingError
from anomaly.gan import AnomalyGAN
from anomaly.networks import build_networks
from anomaly.preprocessing import Standardizer
from anomaly.prototypes import kmeans_prototypes
from anomaly.scoring import ScoringEngine, ScoringParams
from anomaly.windows import SeriesCuts, records_of

#: Fewer normal records than this cannot give both a training and a calibration split.
MIN_RECORDS = 32
_MIN_STEPS_PER_EPOCH = 50


def train(
    rows: np.ndarray,
    config: Config | None = None,
    *,
    feature_names: list[str] | None = None,
    entities: np.ndarray | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    parent: Detector | None = None,
) -> Detector:
    """Train on normal rows, shape (n, d), and return a calibrated detector. ``rows`` may be
    a table (pandas DataFrame, pyarrow or polars table): its columns are the feature names,
    or ``feature_names`` picks columns by name (``anomaly.tables``).

    In time-series mode (``config.model.window``) rows must be in time order; ``entities``
    (one value per row) keeps the series of different entities apart. ``callbacks`` are
    passed to ``keras.Model.fit`` of the deployed model (checkpoints, TensorBoard, ...), not
    to cross-fitting's fold models. With ``parent`` (see
    ``retrain``), training starts from the parent's weights and keeps its standardisation.
    """
    config = config or Config()
    frame = tables.as_frame(rows)
    index = None  # a table's row labels, which messages name rows by
    if frame is not None:
        rows, feature_names, entities, index = table_records(frame, config, feature_names, entities)
    rows = tables.float32_records(rows, "training rows")
    if rows.ndim != 2:
        raise TrainingError(
            f"training rows must be a 2-D array (records x features), got shape {rows.shape}"
        )
    named = config.data.features if len(config.data.features or ()) == rows.shape[1] else None
    feature_names = list(feature_names or named or tables.positional_names(rows.shape[1]))
    if len(feature_names) != rows.shape[1]:
        raise TrainingError(f"{len(feature_names)} feature names for {rows.shape[1]} columns")
    if not_text := [name for name in feature_names if not isinstance(name, str)]:
        raise TrainingError(
            f"feature names must be text, and {not_text[0]!r} is a {type(not_text[0]).__name__}: "
            "a saved model names its features as JSON text (give str(name))"
        )
    record_shape = (
        (rows.shape[1],) if config.model.window is None else (config.model.window, rows.shape[1])
    )
    if problem := config.model.too_large_for(record_shape):
        raise TrainingError(f"model.{problem}, for records of shape {record_shape}")
    if not np.isfinite(rows).all():
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        shown = bad[:10].tolist() if index is None else index[bad[:10]].tolist()
        raise DataError(f"training rows hold NaN or infinite values at index {shown}")

    started = time.perf_counter()
    keras.utils.set_random_seed(config.training.seed)
    window = config.model.window
    records = records_of(rows, window, entities)
    if len(records) < MIN_RECORDS:
        made = (
            "normal records"
            if window is None
            else f"windows of {window} rows from {len(rows)} normal rows{_series(entities)}"
        )
        raise TrainingError(f"{len(records)} {made}; at least {MIN_RECORDS} are needed to train")
    refuse_records_that_do_not_vary(records)
    saved_config = config  # with "auto" folds, a retrain decides again on its own rows
    config = _with_calibration_folds(len(records), config)
    fit_part, held_out = _split(records, config)
    folds = _folds(fit_part, config.training)
    _progress(config, "model 1", len(fit_part))
    engine, model, history = _fit_engine(fit_part, held_out, config, parent, callbacks or [])
    generated = keras.ops.convert_to_numpy(
        model.generator(keras.random.normal((512, model.latent_dim), seed=0))
    )
    report = health.assess(history, generated, engine.standardizer.transform(fit_part))

    schedule = (_best_epoch(history), _steps_per_epoch(len(fit_part), config.training))
    cross_fitted = _fold_models(folds, held_out, config, parent, schedule)
    engine = engine.with_params(calibrate(engine, held_out, cross_fitted))
    calibration_records = len(records) if folds else len(held_out)
    health.report_warnings(
        report["warnings"],
        resolution_warning(
            calibration_records, config.scoring.target_fpr, _remedy(config, len(fit_part))
        ),
        _loose_statistics_warning(len(held_out)) if folds else None,
        _only_growing_feature_warning(rows, feature_names),
    )
    schema = Schema(feature_names, config.model.window, config.data.entity_column)
    drift_summary = DriftSummary.fit(feature_names, engine.params.reference_scores, rows)
    seconds = time.perf_counter() - started
    meta = _metadata(rows, fit_part, held_out, calibration_records, config, history, seconds)
    return Detector(engine, schema, saved_config, meta, report, drift_summary)


def retrain(
    parent: Detector,
    rows: np.ndarray,
    *,
    steps: int | None = None,
    entities: np.ndarray | None = None,
) -> Detector:
    """A new model trained from ``parent``'s weights on fresh normal ``rows`` (the same
    features, in the same order), for ``steps`` generator updates (default: the parent's
    ``training.steps``), then calibrated as its configuration says (on its held-out share,
    and with ``training.calibration_folds`` on every record, with fewer folds where the
    fresh rows are too few for the parent's). It keeps the parent's configuration and
    standardisation, so the networks see inputs scaled as before; its metadata names the
    parent, and its health report holds the parent's beside its own."""
    from anomaly.calibration import flagged_by_parent, fresh_records

    not_normal = flagged_by_parent(parent, fresh_records(parent, rows, entities)[0], "retrained")
    config = parent.config if steps is None else parent.config.updated(training={"steps": steps})
    config, fewer_folds = _fewer_folds_for(len(rows), config)
    started_from = {
        "parent_version": parent.version,
        "retrained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "steps": config.training.steps,
    }
    child = train(
        rows, config, feature_names=parent.feature_names, entities=entities, parent=parent
    )
    child.metadata["lineage"] = [*parent.metadata.get("lineage", []), started_from]
    health.report_warnings(child.health["warnings"], not_normal, fewer_folds)
    child.health["parent"] = {
        "model_version": parent.version,
        "final_metrics": parent.metadata.get("final_metrics", {}),
        "diversity_ratio": parent.health.get("diversity_ratio"),
    }
    return child


def _fewer_folds_for(n_rows: int, config: Config) -> tuple[Config, str | None]:
    """``config`` with no more cross-fitting folds than ``n_rows`` fresh rows allow, and a
    warning saying so where it lowered them: a retrained model keeps its parent's
    configuration, which its user cannot change, and a small batch should retrain with
    fewer folds, not fail."""
    training = config.training
    if training.calibration_folds == "auto":
        return config, None  # decided on the fresh rows by ``train``
    folds = _most_calibration_folds(
        n_rows - _held_out_count(n_rows, training), training, up_to=training.calibration_folds
    )
    if folds == training.calibration_folds:
        return config, None
    return config.updated(training={"calibration_folds": folds}), (
        f"the parent model cross-fitted with training.calibration_folds = "
        f"{training.calibration_folds}; {n_rows} fresh rows allow {folds}, so this model used "
        f"{folds}"
    )


def _series(entities) -> str:
    """How the rows fell into series, for the message when too few windows were made: an
    entity column that names a series per row or so (a feature given as the entity column)
    left each too short for a window."""
    if entities is None:
        return ""
    lengths = pd.Series(np.asarray(entities, dtype=object)).value_counts()
    return f" in {len(lengths)} series (the entity column), the longest of {lengths.max()} rows"


def _with_calibration_folds(n_records: int, config: Config) -> Config:
    """``config`` with ``training.calibration_folds`` a number: ``"auto"`` cross-fits (with
    as many folds as the records allow, up to 5) only where the held-out share is too small
    to resolve the target rate, and never in time-series mode."""
    training = config.training
    if training.calibration_folds != "auto":
        return config
    n_held = _held_out_count(n_records, training)
    folds = (
        1
        if resolves(n_held, config.scoring.target_fpr) or config.model.window is not None
        else _most_calibration_folds(n_records - n_held, training)
    )
    return config.updated(training={"calibration_folds": folds})


def _split(records, config):
    """Hold out normal records for calibration: a random share of rows, or the latest
    windows in time-series mode (calibrating on the future is the honest test)."""
    n_held = _held_out_count(len(records), config.training)
    if config.model.window is not None:
        return records[:-n_held], records[-n_held:]
    order = np.random.default_rng(config.training.seed).permutation(len(records))
    return records[order[n_held:]], records[order[:n_held]]


def _held_out_count(n_records: int, training: TrainingConfig) -> int:
    return max(1, int(round(n_records * training.validation_fraction)))


def _remedy(config: Config, n_fit: int) -> str:
    """What to do about too few calibration records, given what training did and the
    ``n_fit`` records outside the held-out share."""
    folds = _most_calibration_folds(n_fit, config.training)
    if config.training.calibration_folds > 1 or config.model.window is not None or folds == 1:
        return "train on more normal rows, or raise training.validation_fraction"
    return (
        f"train on more normal rows, or set training.calibration_folds = {folds} to calibrate "
        f"on every training record (at the cost of {folds - 1} more fits)"
    )


def _most_calibration_folds(n_fit: int, training: TrainingConfig, up_to: int = 5) -> int:
    """The most folds, up to ``up_to``, that leave ``n_fit`` records in folds of at least
    ``MIN_STANDARDISING_RECORDS``; 1 (no cross-fitting) where that is fewer than the
    configuration accepts."""
    most = min(up_to, 1 + n_fit // MIN_STANDARDISING_RECORDS)
    return most if most >= training.fewest_calibration_folds else 1


def _folds(records: np.ndarray, training: TrainingConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``training.calibration_folds - 1`` contiguous folds of ``records`` (in a random
    order already: see ``_split``) that cross-fitting adds to the held-out share, each as
    (the records outside it, the fold); none without cross-fitting. Refused before any
    training when a fold would be too small for its own score statistics."""
    n_folds = training.calibration_folds - 1
    if n_folds == 0:
        return []
    smallest = len(records) // n_folds
    if smallest < MIN_STANDARDISING_RECORDS:
        most = _most_calibration_folds(len(records), training, up_to=training.calibration_folds)
        instead = f"at most {most}" if most > 1 else "1 (no cross-fitting)"
        raise TrainingError(
            f"training.calibration_folds = {training.calibration_folds} splits the "
            f"{len(records)} records outside the held-out share into folds of {smallest}, too "
            f"few to fit a fold model's score statistics on (at least "
            f"{MIN_STANDARDISING_RECORDS}): set it to {instead}, or train on more normal rows"
        )
    return [
        (np.delete(records, index, axis=0), records[index])
        for index in np.array_split(np.arange(len(records)), n_folds)
    ]


def _fold_models(folds, held_out, config: Config, parent: Detector | None, schedule):
    """Cross-fitting's models, one at a time: each trained on the held-out share and the
    other folds, with the fold it never saw. Each trains as long as the deployed model did
    up to the epoch its early stopping restored (``schedule``: those epochs, of the deployed
    model's steps), not early-stopped on its fold: calibration records must play no part in
    fitting their model, and a fold that chose its model's best epoch would score lower
    than new records do. A generator, so that ``calibrate`` can let each go once it has
    scored its fold."""
    for number, (rest, fold) in enumerate(folds, start=2):
        fit_part = np.concatenate([held_out, rest])
        _progress(config, f"cross-fitting model {number}", len(fit_part))
        engine = _fit_engine(fit_part, None, config, parent, schedule=schedule)[0]
        yield engine, fold
        del engine


def _best_epoch(history: dict) -> int:
    """The epoch (counted from 1) whose weights early stopping restored: as Keras picks it,
    the first, then each that is strictly lower than the best so far."""
    errors = history["val_reconstruction"]
    best = 0
    for epoch, error in enumerate(errors):
        if error < errors[best]:
            best = epoch
    return best + 1


def _steps_per_epoch(n_fit: int, training: TrainingConfig) -> int:
    """Generator updates per epoch: ``training.steps_per_epoch``, else one pass over the
    ``n_fit`` records, at least ``_MIN_STEPS_PER_EPOCH``; never more than ``training.steps``."""
    batch_size = min(training.batch_size, n_fit)
    per_epoch = training.steps_per_epoch or max(_MIN_STEPS_PER_EPOCH, math.ceil(n_fit / batch_size))
    return min(per_epoch, training.steps)


def _progress(config: Config, model: str, n_records: int) -> None:
    """With cross-fitting and Keras progress output on, say which model the next progress
    bars are for."""
    folds = config.training.calibration_folds
    if folds > 1 and config.training.verbose:
        print(f"{model} of {folds}: training on {n_records} records", flush=True)


def table_records(
    frame, config: Config, feature_names: list[str] | None, entities
) -> tuple[np.ndarray, list[str], np.ndarray | None, pd.Index]:
    """A table's rows, feature names and series as ``anomaly train`` reads a file's: the
    features by name (``feature_names``, else ``data.features``, else picked by type as a
    file's are: ``tables.features_by_type``), the rows labelled normal where the table has
    ``data.label_column`` (a table without it is all normal rows, as ``retrain`` takes
    them), each series of ``data.entity_column`` where it has that, cut where labelled rows
    were taken out; and the row labels of the rows kept."""
    data = config.data
    roles = {data.id_column, data.label_column, data.entity_column}
    columns = tables.column_names(frame)
    names = list(feature_names or data.features or tables.features_by_type(frame, roles))
    kept = np.ones(len(frame), bool)
    if data.label_column in columns:
        kept = tables.labelled_normal(frame, data.label_column)
    if entities is None and data.entity_column in columns:
        entities = tables.column(frame, data.entity_column).to_numpy()
    pieces, _ = SeriesCuts().pieces(None if entities is None else np.asarray(entities), kept)
    return tables.feature_array(frame[kept], names), names, pieces, frame.index[kept]


def _loose_statistics_warning(n_held_out: int) -> str | None:
    """With cross-fitting, every record calibrates the threshold, but the deployed model's
    own component statistics still come from its held-out share alone."""
    if n_held_out >= MIN_STANDARDISING_RECORDS:
        return None
    return (
        f"the model's score statistics were fitted on its {n_held_out} held-out records, "
        f"too few (at least {MIN_STANDARDISING_RECORDS}) to fix the scale its threshold "
        "applies to; train on more normal rows or raise training.validation_fraction"
    )


def _only_growing_feature_warning(rows: np.ndarray, feature_names: list[str]) -> str | None:
    """A feature that grows (or falls) on every one of the training rows, in their order, is
    an id, a row counter, a clock or a running total, whose new values lie past all its
    training values: every new record scores as an anomaly for that alone (a CSV's numeric
    ``id`` column, picked as a feature by type, flagged 93 % of new normal rows). Or the
    rows were sorted by it, which the message allows. Training has at least ``MIN_RECORDS``
    rows, over which values drawn at random are monotone with probability 2 / 32!, about
    1e-35. A column at a time, most stopped within their first rows: a large training set
    is not copied."""
    monotone = [j for j in range(rows.shape[1]) if _monotone(rows[:, j])]
    if not monotone:
        return None
    names = ", ".join(repr(feature_names[j]) for j in monotone[:3])
    which = f"feature {names}" if len(monotone) == 1 else f"features {names}"
    return (
        f"{which} only grows or only falls over the {len(rows)} training rows, in their "
        "order: an id, a row counter, a clock or a running total? New records would lie "
        "beyond all its training values and score as anomalies for that alone; leave it out "
        "(data.id_column, or list data.features) or give its changes instead (if the rows "
        "were sorted by it, ignore this)"
    )


def _monotone(values: np.ndarray) -> bool:
    for part in (values[:MIN_RECORDS], values):
        steps = np.diff(part)
        if not ((steps > 0).all() or (steps < 0).all()):
            return False
    return True


def _fit_engine(
    fit_part, validation, config: Config, parent: Detector | None, callbacks=(), schedule=None
):
    """A GAN trained on ``fit_part`` (early-stopped on ``validation``; without one, for
    ``schedule``: epochs, steps per epoch), in an uncalibrated scoring engine, with the
    model and its training history. With ``parent``, training starts from its weights and
    keeps its standardisation."""
    standardizer = (
        parent.engine.standardizer
        if parent
        else Standardizer.fit(fit_part, config.model.clip_value, config.model.extremes_in_use)
    )
    x_fit = standardizer.transform(fit_part)
    initial = parent.engine.networks if parent else None
    x_held = None if validation is None else standardizer.transform(validation)
    model, history = _fit_gan(x_fit, x_held, config, list(callbacks), initial, schedule)
    latent_prototypes = kmeans_prototypes(
        model.encoder.predict(x_fit, batch_size=config.scoring.batch_size, verbose=0),
        config.scoring.latent_prototypes,
        config.training.seed,
    )
    engine = ScoringEngine(
        model.encoder,
        model.generator,
        model.critic,
        standardizer,
        latent_prototypes,
        _initial_params(config),
        batch_size=config.scoring.batch_size,
    )
    return engine, model, history


def _latent_dim(config: Config, record_shape: tuple[int, ...]) -> int:
    """z as wide as a record has values (features, times the window's length in time-series
    mode), between 2 and 32."""
    return config.model.latent_dim or min(32, max(2, math.prod(record_shape)))


def _fit_gan(x_fit, x_held, config: Config, callbacks, initial=None, schedule=None):
    """The GAN trained on ``x_fit``, early-stopped on ``x_held`` (restoring its best
    epoch); without ``x_held``, for ``schedule``: (epochs, steps per epoch)."""
    t, m = config.training, config.model
    encoder, generator, critic = build_networks(
        x_fit.shape[1:],
        _latent_dim(config, x_fit.shape[1:]),
        m.hidden_units,
        m.conv_filters,
        m.formulation,
    )
    if initial is not None:  # warm start: the same architecture, the parent's weights
        for network, name in ((encoder, "encoder"), (generator, "generator"), (critic, "critic")):
            network.set_weights(initial[name].get_weights())
    model = AnomalyGAN(
        encoder,
        generator,
        critic,
        formulation=m.formulation,
        critic_steps=t.critic_steps,
        gradient_penalty=t.gradient_penalty,
        feature_weight=t.feature_weight,
        seed=t.seed,
    )
    # XLA under TensorFlow (seeded training is reproducible with it), jax.jit under JAX;
    # PyTorch runs eagerly (torch.compile does not take the penalty's double gradient).
    model.compile(learning_rate=t.learning_rate, jit_compile=keras.backend.backend() != "torch")
    batch_size = min(t.batch_size, len(x_fit))
    if x_held is None:
        epochs, steps_per_epoch = schedule
    else:
        steps_per_epoch = _steps_per_epoch(len(x_fit), t)
        epochs = math.ceil(t.steps / steps_per_epoch)
        callbacks = [
            keras.callbacks.EarlyStopping(
                monitor="val_reconstruction",
                mode="min",
                patience=t.early_stopping_patience,
                restore_best_weights=True,
            ),
            *callbacks,
        ]
    fitted = model.fit(
        _batches(x_fit, batch_size, t.seed),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=x_held,
        validation_batch_size=config.scoring.batch_size,
        callbacks=callbacks,
        verbose=t.verbose,
        shuffle=False,
    )
    return model, fitted.history


def _batches(x: np.ndarray, batch_size: int, seed: int):
    """Batches without end, as ``(x,)`` tuples, each pass over the records in a fresh seeded
    order (the last incomplete batch of a pass left out): NumPy, so that every backend trains
    on the same batches."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch_size + 1, batch_size):
            yield (x[order[start : start + batch_size]],)


def _initial_params(config: Config) -> ScoringParams:
    s = config.scoring
    return ScoringParams(
        formulation=config.model.formulation,
        weights=dict(s.weights),
        target_fpr=s.target_fpr,
        top_features=s.top_features,
        refine_steps=s.refine_steps,
        refine_learning_rate=s.refine_learning_rate,
        latent_neighbours=s.latent_neighbours,
    )


#: Packages whose versions the bundle's metadata records, where installed.
_VERSIONED_PACKAGES = (
    "anomaly-gan",
    "keras",
    "tensorflow-cpu",
    "tensorflow",
    "jax",
    "torch",
    "numpy",
)


def _metadata(rows, fit_part, held_out, calibration_records, config, history, seconds) -> dict:
    versions = {}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            continue
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions,
        "python": platform.python_version(),
        "keras_backend": keras.backend.backend(),
        "training_data_sha256": hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest(),
        "training_rows": int(len(rows)),
        "fit_records": int(len(fit_part)),
        "held_out_records": int(len(held_out)),
        "calibration_records": int(calibration_records),
        "calibration_folds": config.training.calibration_folds,
        "training_seconds": round(seconds, 2),
        "final_metrics": {k: float(v[-1]) for k, v in history.items()},
    }
