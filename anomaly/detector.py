"""``Detector``: a trained model that scores records, and the bundle it saves to and loads from."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import keras
import numpy as np

from anomaly import bundle, store, tables
from anomaly.config import COMPONENTS, Config
from anomaly.drift import DriftSummary
from anomaly.errors import BundleError, ConfigError, DataError, SchemaError
from anomaly.preprocessing import Extremes, Standardizer
from anomaly.scoring import REFERENCE_QUANTILES, ScoringEngine, ScoringParams
from anomaly.tail import Tail


@dataclass(frozen=True)
class Schema:
    """What the model expects: feature names in order, and the window length in time-series mode."""

    feature_names: list[str]
    window: int | None = None
    entity_column: str | None = None

    @property
    def record_shape(self) -> tuple[int, ...]:
        d = len(self.feature_names)
        return (self.window, d) if self.window else (d,)

    def stream_difference(self, stream: Schema) -> str | None:
        """Why a model of this schema cannot score ``stream``'s records (another model's
        schema), or None: the features, in their order, and the window must be the same.
        One stream is what a service and a model store serve."""
        if self.feature_names != stream.feature_names:
            return (
                f"its features ({len(self.feature_names)}) are not the stream's "
                f"({len(stream.feature_names)}, in the same order)"
            )
        if self.window != stream.window:
            return f"its window is {self.window}, the stream's {stream.window}"
        return None


@dataclass(frozen=True)
class ScoreResult:
    """Scores of a batch of records (one entry per record, in input order)."""

    scores: np.ndarray
    is_anomaly: np.ndarray
    percentiles: np.ndarray
    components: dict[str, np.ndarray]
    """Each standardised component by name (see ``anomaly.scoring``)."""
    feature_residuals: np.ndarray
    """Squared residual per feature (n, d), in standardised units."""
    feature_names: list[str]
    threshold: float
    explain: int
    """How many top features ``top_features`` names per record."""

    def __len__(self) -> int:
        return len(self.scores)

    @cached_property
    def top_feature_index(self) -> np.ndarray:
        """Indices (n, k) of the features with the largest residuals, largest first."""
        k = min(self.explain, self.feature_residuals.shape[1])
        if k == 0:
            return np.empty((len(self), 0), np.int64)
        top = np.argpartition(-self.feature_residuals, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(self.feature_residuals, top, axis=1), axis=1)
        return np.take_along_axis(top, order, axis=1)

    @property
    def top_features(self) -> list[list[str]]:
        """Names of the features that drove each record's residual, largest first."""
        # Indexing an object array gives the same str objects as a lookup row by row, in C.
        names = np.array(self.feature_names, dtype=object)
        return names[self.top_feature_index].tolist()


class Detector:
    """A trained GAN anomaly detector: ``score`` arrays, ``save`` a bundle, ``load`` it back.

    ``drift_summary`` is the distribution of the normal data it was made on, which drift is
    measured against (``anomaly.drift``)."""

    def __init__(
        self,
        engine: ScoringEngine,
        schema: Schema,
        config: Config,
        metadata: dict,
        health: dict,
        drift_summary: DriftSummary,
    ):
        self.engine = engine
        self.schema = schema
        self.config = config
        self.metadata = metadata
        self.health = health
        self.drift_summary = drift_summary
        self.version = metadata.get("model_version", "unsaved")

    @property
    def feature_names(self) -> list[str]:
        return list(self.schema.feature_names)

    @property
    def threshold(self) -> float:
        return self.engine.params.threshold

    @property
    def components(self) -> tuple[str, ...]:
        return COMPONENTS

    def threshold_at(self, target_fpr: float) -> float:
        """The score threshold at another false-positive rate, from the same calibration
        (``anomaly.tail``): ``result.scores > detector.threshold_at(0.001)`` flags about
        0.1 % of normal records."""
        if not self.engine.params.tail:
            raise BundleError(
                "this model bundle keeps no calibration tail (it was saved by an older "
                "version): retrain it to get thresholds at other rates"
            )
        return Tail(**self.engine.params.tail).threshold(target_fpr)

    def score(self, x: np.ndarray) -> ScoreResult:
        """Score records: (n, d) rows, or (n, window, d) windows in time-series mode.

        Raises ``SchemaError`` for a wrong shape and ``DataError`` naming the rows that hold
        NaN or infinite values.
        """
        x = self.check_records(x)
        out = self.engine.score(x)
        return ScoreResult(
            scores=out["score"].astype(np.float64),
            is_anomaly=out["is_anomaly"].astype(bool),
            percentiles=out["percentile"].astype(np.float64),
            components={name: out[f"component_{name}"].astype(np.float64) for name in COMPONENTS},
            feature_residuals=out["feature_residuals"],
            feature_names=self.schema.feature_names,
            threshold=self.threshold,
            explain=self.engine.params.top_features,
        )

    def check_records(self, x) -> np.ndarray:
        """Validate shape and values at the edge; return a float32 array. A table (pandas
        DataFrame, pyarrow or polars table) gives the model's features by column name
        (``anomaly.tables``)."""
        frame = tables.as_frame(x)
        if frame is not None:
            if self.schema.window:
                raise SchemaError(
                    f"this time-series model scores windows of {self.schema.window} "
                    "consecutive rows of one series, and a table is rows: make the windows "
                    "first (anomaly.windows.WindowBuffer(window, features).push(rows, "
                    "entities) keeps each entity's series apart and says which row completes "
                    "each window), or score the file with `anomaly score`"
                )
            x = tables.feature_array(frame, self.schema.feature_names)
        x = tables.float32_records(x, "records")
        expected = self.schema.record_shape
        if x.ndim == len(expected):
            x = x[None]
        if x.shape[1:] != expected:
            names = ", ".join(self.schema.feature_names[:8])
            more = ", ..." if len(self.schema.feature_names) > 8 else ""
            raise SchemaError(
                f"wrong feature count: the model expects records of shape {expected} "
                f"(features {names}{more}), got records of shape {x.shape[1:]}"
            )
        bad = ~np.isfinite(x.reshape(len(x), math.prod(expected))).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            by_label = frame is not None and len(frame) == len(x)  # a table's rows: its labels
            shown = frame.index[rows[:10]].tolist() if by_label else rows[:10].tolist()
            listed = ", ".join(repr(r) if by_label else str(r) for r in shown)
            more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
            raise DataError(
                f"{len(rows)} record(s) hold NaN or infinite values: index {listed}{more}"
            )
        return x

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model bundle to directory ``path`` (replacing a bundle there) and return
        the path. A ``BundleError``, before anything is written, when ``path`` is a model
        store, one of its versions, or a non-empty directory that is not a bundle: save
        elsewhere and ``anomaly publish`` into a store (``store.check_save_target``)."""
        store.check_save_target(path)
        e = self.engine
        parts = {
            "preprocessing": e.standardizer.to_json(),
            "scoring": e.params.to_json(),
            "schema": {
                "feature_names": self.schema.feature_names,
                "window": self.schema.window,
                "entity_column": self.schema.entity_column,
            },
            "metadata": {k: v for k, v in self.metadata.items() if k != "model_version"},
            "health": self.health,
            "config": self.config.for_bundle(),  # no deployment secrets in bundles
            "drift": self.drift_summary.to_json(),
        }
        contents = bundle.BundleContents(e.networks, parts, e.latent_prototypes, version="")
        self.version = bundle.save_bundle(path, contents)
        self.metadata["model_version"] = self.version
        return Path(path)

    def describe(self) -> dict:
        """What the bundle holds, for ``anomaly info``."""
        p = self.engine.params
        return {
            "model_version": self.version,
            "formulation": p.formulation,
            "features": self.feature_names,
            "window": self.schema.window,
            "threshold": p.threshold,
            "target_fpr": p.target_fpr,
            # how the threshold was set (``anomaly.tail``); the kept scores are left out
            "calibration_tail": {k: v for k, v in p.tail.items() if k != "largest"},
            "weights": p.weights,
            "component_location": p.location,
            "component_scale": p.scale,
            "latent_prototypes": len(self.engine.latent_prototypes),
            "latent_neighbours": p.latent_neighbours,
            "metadata": self.metadata,
            "health": {k: v for k, v in self.health.items() if k != "losses"},
        }


def load(path: str | os.PathLike[str], *, jit_compile: bool = False) -> Detector:
    """Load a model bundle written by ``Detector.save``, or the latest version of a model
    store (``anomaly.store``); any problem is a ``BundleError``. ``jit_compile``: XLA under
    TensorFlow (off: ``python -m pipelines.bench_scoring --jit-compile`` measures it)."""
    path = store.resolve(path)
    contents = bundle.load_bundle(path)
    parts = contents.parts
    try:
        config = Config.from_bundle(parts["config"])
    except ConfigError as exc:
        raise BundleError(f"{path / 'config.json'}: {exc}; {bundle.RESTORE_HINT}") from None
    schema = Schema(**bundle.typed_part(path, "schema", parts["schema"], Schema))
    params = ScoringParams(**bundle.typed_part(path, "scoring", parts["scoring"], ScoringParams))
    if params.tail:
        params = replace(params, tail=bundle.typed_part(path, "scoring.tail", params.tail, Tail))
    standardizer = Standardizer.from_json(
        bundle.typed_part(path, "preprocessing", parts["preprocessing"], _StandardizerJson)
    )
    drift_summary = DriftSummary(**bundle.typed_part(path, "drift", parts["drift"], DriftSummary))
    _check_shapes(path, contents, schema, standardizer, params, drift_summary)
    _check_config_matches(path, config, schema, standardizer)
    engine = ScoringEngine(
        contents.networks["encoder"],
        contents.networks["generator"],
        contents.networks["critic"],
        standardizer,
        contents.latent_prototypes,
        params,
        batch_size=config.scoring.batch_size,
        jit_compile=jit_compile,
    )
    metadata = {**parts["metadata"], "model_version": contents.version}
    return Detector(engine, schema, config, metadata, _health(path, parts["health"]), drift_summary)


@dataclass(frozen=True)
class _HealthWarnings:
    """What the CLI reads of ``health.json`` (the rest is a report for people)."""

    warnings: list[str] = field(default_factory=list)


def _health(path: Path, values: dict) -> dict:
    """``health.json`` with its warnings checked as text (none where it has no list of them:
    a hand-made bundle)."""
    warnings_ = {k: v for k, v in values.items() if k == "warnings"}
    return {**values, **bundle.typed_part(path, "health", warnings_, _HealthWarnings)}


@dataclass(frozen=True)
class _StandardizerJson:
    """What ``preprocessing.json`` holds (``Standardizer.to_json``)."""

    mean: list[float]
    scale: list[float]
    clip_value: float
    extremes: Extremes


def _check_config_matches(
    path: Path, config: Config, schema: Schema, standardizer: Standardizer
) -> None:
    """``config.json`` agrees with ``schema.json`` (window, entity column) and with
    ``preprocessing.json`` (clip, extremes), as training writes them: scoring reads the
    schema and the preprocessing, retraining the configuration, so a bundle where they
    differ would retrain into another model than the one it serves."""
    model, preprocessing = config.model, "preprocessing.json"
    for key, in_config, other, in_other in (
        ("model.window", model.window, "schema.json", schema.window),
        ("data.entity_column", config.data.entity_column, "schema.json", schema.entity_column),
        ("model.clip_value", model.clip_value, preprocessing, standardizer.clip_value),
        ("model.extremes", model.extremes_in_use, preprocessing, standardizer.extremes),
    ):
        if in_config != in_other:
            raise BundleError(
                f"{path / 'config.json'}: {key} is {in_config!r}, but {other}'s is "
                f"{in_other!r}; {bundle.RESTORE_HINT}"
            )


def _check_shapes(
    path: Path,
    contents,
    schema: Schema,
    standardizer: Standardizer,
    params: ScoringParams,
    drift_summary: DriftSummary,
) -> None:
    """The parts agree with each other and with the networks, or the bundle is refused."""
    d = len(schema.feature_names)
    problems = []
    if params.formulation not in ("fanogan", "bigan"):
        problems.append(f"{path / 'scoring.json'}: unknown formulation {params.formulation!r}")
    for name in ("location", "scale"):
        missing = [c for c in COMPONENTS if c not in getattr(params, name)]
        if missing:
            problems.append(f"{path / 'scoring.json'}: {name} lacks {', '.join(missing)}")
    problems.extend(f"{path / 'scoring.json'}: {p}" for p in _calibration_problems(params))
    if not d:
        problems.append(f"{path / 'schema.json'}: feature_names is empty")
    for name in ("mean", "scale"):
        if len(getattr(standardizer, name)) != d:
            problems.append(
                f"{path / 'preprocessing.json'}: {name} has {len(getattr(standardizer, name))} "
                f"values for {d} features"
            )
    problems.extend(
        f"{path / 'drift.json'}: {p}" for p in drift_summary.problems(schema.feature_names)
    )
    problems.extend(_signature_problems(path, contents.networks, schema, params.formulation))
    latent = contents.networks["encoder"].outputs[0].shape[-1]
    if contents.latent_prototypes.shape[1] != latent:
        problems.append(
            f"{path / bundle.LATENT_PROTOTYPES}: prototypes of size "
            f"{contents.latent_prototypes.shape[1]} for a latent space of size {latent}"
        )
    problems.extend(
        _value_problems(path, params, standardizer, contents.latent_prototypes, contents.networks)
    )
    if problems:
        raise BundleError(f"{problems[0]}; {bundle.RESTORE_HINT}")


def _signature_problems(path: Path, networks: dict, schema: Schema, formulation: str) -> list[str]:
    """Each network takes and gives what scoring feeds it: a bundle whose ``critic.keras``
    is another network would load and then fail inside the first compiled pass."""

    def shapes(tensors) -> list[tuple]:
        return [tuple(t.shape[1:]) for t in tensors]

    record = schema.record_shape
    latent = tuple(networks["encoder"].outputs[0].shape[1:])
    critic_in = [record, latent] if formulation == "bigan" else [record]
    expected = {
        "encoder": ([record], None),
        "generator": ([latent], [record]),
        "critic": (critic_in, None),
    }
    problems = [
        f"{path / (name + '.keras')}: holds the network named {net.name!r}, not the {name}"
        for name, net in networks.items()
        if net.name != name  # an encoder and a generator of d -> d swap with shapes intact
    ]
    for name, (inputs, outputs) in expected.items():
        net = networks[name]
        got_in, got_out = shapes(net.inputs), shapes(net.outputs)
        if got_in != inputs or (outputs is not None and got_out != outputs):
            problems.append(
                f"{path / (name + '.keras')}: maps {got_in} to {got_out}, but scoring needs "
                f"inputs {inputs}" + (f" and outputs {outputs}" if outputs else "")
            )
    if len(latent) != 1:
        problems.append(f"{path / 'encoder.keras'}: gives codes of shape {latent}, not a vector")
    critic_out = shapes(networks["critic"].outputs)
    if len(critic_out) != 2 or critic_out[0] != () or len(critic_out[1]) != 1:
        problems.append(
            f"{path / 'critic.keras'}: gives {critic_out}, not a verdict per record and a "
            "feature vector"
        )
    return problems


def _value_problems(
    path: Path,
    params: ScoringParams,
    standardizer: Standardizer,
    prototypes: np.ndarray,
    networks: dict,
) -> list[str]:
    """Values that pass the checksums of an edited bundle but would make every score NaN,
    zero or flagged, or scoring hang: the bounds training enforces, checked again (only
    those: a bundle training can write must load)."""
    problems = []
    try:
        Config.from_dict(
            {
                "scoring": {
                    "weights": params.weights,
                    "top_features": params.top_features,
                    "refine_steps": params.refine_steps,
                    "refine_learning_rate": params.refine_learning_rate,
                    "latent_neighbours": params.latent_neighbours,
                }
            }
        )
    except ConfigError as exc:
        problems.append(f"{path / 'scoring.json'}: {exc}")
    for name in ("location", "scale"):
        values = getattr(params, name).values()
        if not all(math.isfinite(v) for v in values):
            problems.append(f"{path / 'scoring.json'}: {name} must hold finite values")
    if not all(v > 0 for v in params.scale.values()):
        problems.append(f"{path / 'scoring.json'}: scale must hold values > 0")
    if not (np.isfinite(standardizer.mean).all() and np.isfinite(standardizer.scale).all()):
        problems.append(f"{path / 'preprocessing.json'}: mean and scale must be finite")
    if not (standardizer.scale > 0).all():
        problems.append(f"{path / 'preprocessing.json'}: scale must hold values > 0")
    if not standardizer.clip_value > 0:  # NaN too; infinity means no clipping
        problems.append(f"{path / 'preprocessing.json'}: clip_value must be > 0")
    if not np.isfinite(prototypes).all():
        problems.append(f"{path / bundle.LATENT_PROTOTYPES}: prototypes must be finite")
    for name, network in networks.items():
        if not all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in network.weights):
            problems.append(
                f"{path / (name + '.keras')}: holds weights that are not finite (a training "
                "run that diverged?); it would score every record NaN"
            )
    return problems


def _calibration_problems(params: ScoringParams) -> list[str]:
    """What makes the calibration unusable: a target false-positive rate outside (0, 1), a
    threshold that is not finite as the float32 scores are compared with (1e308 would
    flag nothing), a damaged tail, a threshold that does not follow from it, reference
    values that are not finite or not one per quantile."""
    problems = []
    if not 0 < params.target_fpr < 1:  # NaN too
        problems.append(f"target_fpr is {params.target_fpr!r}; it must lie between 0 and 1")
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(np.float32(params.threshold)):
            problems.append(
                f"threshold is {params.threshold!r}, not a finite float32 (scores are float32)"
            )
    if problems:
        return problems
    if params.tail:
        tail = Tail(**params.tail)
        problems += [f"tail {problem}" for problem in tail.problems()]
        if not problems and not math.isclose(
            tail.threshold(params.target_fpr), params.threshold, rel_tol=1e-9, abs_tol=1e-12
        ):
            problems.append("threshold is not the tail's threshold at target_fpr")
    references = {"reference_scores": params.reference_scores}
    references.update(
        {f"reference_components.{k}": v for k, v in params.reference_components.items()}
    )
    for name, values in references.items():
        if len(values) != REFERENCE_QUANTILES or not all(math.isfinite(v) for v in values):
            problems.append(f"{name} must hold {REFERENCE_QUANTILES} finite values")
        elif any(low > high for low, high in itertools.pairwise(values)):
            problems.append(f"{name} must be in ascending order (they are quantiles)")
    missing = set(COMPONENTS) - set(params.reference_components)
    if params.reference_components and missing:
        problems.append(f"reference_components lacks {', '.join(sorted(missing))}")
    return problems
