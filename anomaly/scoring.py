"""The scoring engine: one compiled, vectorised forward pass per batch.

For a batch x (raw feature values): standardise (compressing the extremes), z = E(x)
(optionally refined by a few gradient steps, AnoGAN-style), x' = G(z), then four components,
each a number per record:

``reconstruction``  mean squared residual between x and x' (per-feature residuals kept)
``feature``         mean squared residual between the critic's hidden features of x and x'
``critic``          the critic's verdict on x as a deviation from its behaviour on normal
                    data: two-sided for the Wasserstein critic (whose raw output does not
                    rank anomalies monotonically), one-sided "looks fake" for BiGAN
``latent``          mean distance from E(x) to its nearest prototypes of the training
                    latents (``anomaly.prototypes``)

Each component is standardised with a robust location and scale (median and IQR/1.349)
measured on held-out normal data; the anomaly score is their weighted sum. A record is
flagged when its score exceeds the threshold calibrated at the target false-positive rate,
and gets a percentile against held-out normal scores; its per-feature residuals say which
features drove it (``ScoreResult.top_features`` ranks them on access, outside the compiled
pass, so callers who do not read explanations do not pay for a top-k).

Everything here is ``keras.ops``; ``anomaly._compile`` compiles it per backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from anomaly import _compile
from anomaly.config import COMPONENTS
from anomaly.preprocessing import Standardizer

#: Normal-data scores kept (as evenly spaced quantiles) to turn a score into a percentile.
REFERENCE_QUANTILES = 2001


@dataclass(frozen=True)
class ScoringParams:
    """Everything besides the networks that turns a batch into scores; saved as JSON."""

    formulation: str
    weights: dict[str, float]
    target_fpr: float
    top_features: int
    refine_steps: int
    refine_learning_rate: float
    latent_neighbours: int
    location: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    threshold: float = float("inf")
    reference_scores: list[float] = field(default_factory=list)
    reference_components: dict[str, list[float]] = field(default_factory=dict)
    """The same quantiles of each standardised component (empty in bundles saved before
    conformal alarms ranked components)."""
    tail: dict[str, Any] = field(default_factory=dict)
    """The upper tail of the held-out normal scores (``anomaly.tail.Tail``), from which a
    threshold at any small false-positive rate follows (empty in bundles saved before)."""

    @property
    def calibrated(self) -> bool:
        return bool(self.reference_scores)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> ScoringParams:
        return cls(**values)


class ScoringEngine:
    """Compiled scoring of record batches for one set of trained networks."""

    def __init__(
        self,
        encoder: keras.Model,
        generator: keras.Model,
        critic: keras.Model,
        standardizer: Standardizer,
        latent_prototypes: np.ndarray,
        params: ScoringParams,
        *,
        batch_size: int,
        jit_compile: bool = False,
    ):
        self.networks = {"encoder": encoder, "generator": generator, "critic": critic}
        self.standardizer = standardizer
        self.latent_prototypes = np.asarray(latent_prototypes, np.float32)
        self.params = params
        self.batch_size = batch_size
        self.record_shape = tuple(int(s) for s in encoder.inputs[0].shape[1:])
        self._jit_compile = jit_compile
        self._compiled = {}

    @property
    def n_features(self) -> int:
        return self.record_shape[-1]

    def with_params(self, params: ScoringParams) -> ScoringEngine:
        """The same networks with other scoring parameters (e.g. once calibrated)."""
        return ScoringEngine(
            *self.networks.values(),
            self.standardizer,
            self.latent_prototypes,
            params,
            batch_size=self.batch_size,
            jit_compile=self._jit_compile,
        )

    def raw_components(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Unstandardised components and the latent codes; used for calibration."""
        return self._run("raw", x)

    def score(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Score a batch: ``score``, ``is_anomaly``, ``percentile``, ``component_<name>`` and
        ``feature_residuals`` (n, d)."""
        if not self.params.calibrated:
            raise RuntimeError("scoring parameters are not calibrated")
        return self._run("score", x)

    def _run(self, kind: str, x: np.ndarray) -> dict[str, np.ndarray]:
        if kind not in self._compiled:
            graph = self._raw_graph if kind == "raw" else self._score_graph
            self._compiled[kind] = _compile.compile_graph(
                graph, self.networks, self.record_shape, self._jit_compile
            )
        run = self._compiled[kind]
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) <= self.batch_size:
            return run(x)
        parts = [run(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    # -- the graph -----------------------------------------------------------------------

    def _raw_graph(self, call, grad, x_raw):
        return self._components(call, grad, x_raw)

    def _score_graph(self, call, grad, x_raw):
        raw = self._components(call, grad, x_raw)
        return {**combine(raw, self.params), "feature_residuals": raw["feature_residuals"]}

    def _components(self, call, grad, x_raw):
        x = self.standardizer.transform(x_raw, xp=ops)
        z = call("encoder", x)
        for _ in range(self.params.refine_steps):
            z = z - self.params.refine_learning_rate * grad(
                lambda z_: ops.sum(ops.square(x - call("generator", z_))), z
            )
        reconstruction = call("generator", z)
        squared = ops.square(x - reconstruction)
        critic_inputs = (lambda r: [r, z]) if self.params.formulation == "bigan" else (lambda r: r)
        verdict, features = call("critic", critic_inputs(x))
        _, rec_features = call("critic", critic_inputs(reconstruction))
        per_feature = ops.mean(squared, axis=1) if len(self.record_shape) == 2 else squared
        return {
            "reconstruction": ops.mean(per_feature, axis=-1),
            "feature": ops.mean(ops.square(features - rec_features), axis=-1),
            "critic": -verdict,
            "latent": _neighbour_distance(z, self.latent_prototypes, self.params.latent_neighbours),
            "feature_residuals": per_feature,
            "latent_code": z,
        }


def standardise(raw: dict, params: ScoringParams) -> dict:
    """Robust z-score of each component; the critic's is two-sided for a Wasserstein critic."""
    standard = {}
    for name in COMPONENTS:
        value = (raw[name] - params.location[name]) / params.scale[name]
        if name == "critic" and params.formulation == "fanogan":
            value = ops.abs(value)
        standard[name] = value
    return standard


def weighted_score(standard: dict, params: ScoringParams):
    """The anomaly score: the weighted sum of standardised components."""
    return sum(params.weights.get(name, 0.0) * standard[name] for name in COMPONENTS)


def combine(raw: dict, params: ScoringParams) -> dict:
    """Weighted sum of standardised components, the flag and the percentile."""
    standard = standardise(raw, params)
    score = weighted_score(standard, params)
    reference = ops.convert_to_tensor(np.asarray(params.reference_scores, np.float32))
    rank = ops.searchsorted(reference, score, side="right")
    percentile = ops.minimum(
        100.0 * ops.cast(rank, "float32") / float(len(params.reference_scores)), 100.0
    )
    return {
        "score": score,
        "is_anomaly": score > params.threshold,
        "percentile": percentile,
        **{f"component_{name}": standard[name] for name in COMPONENTS},
    }


def _neighbour_distance(z, prototypes: np.ndarray, neighbours: int):
    """Mean Euclidean distance from each code to its ``neighbours`` nearest prototypes.

    One matmul ranks the prototypes: [z, 1] . [2p, -|p|^2] = 2 z.p - |p|^2 orders them like
    the negated squared distance, with the bias folded in so the (batch, prototypes) matrix
    is written once; ``top_k`` picks the nearest (Keras's TensorFlow ``argmin`` on the CPU
    makes three extra passes over that matrix for a flush-to-zero fix). The distances to
    those are then measured directly: the expanded form alone loses about 1e-5 to float32
    cancellation on small distances, differently on each backend, which the score's
    weighting amplified to 4e-4 between TensorFlow and JAX.
    """
    ranker = np.concatenate([2.0 * prototypes, -np.square(prototypes).sum(1, keepdims=True)], 1)
    ranking = ops.matmul(
        ops.concatenate([z, ops.ones_like(z[:, :1])], axis=1),
        ops.convert_to_tensor(ranker.T.astype(np.float32)),
    )
    _, nearest = ops.top_k(ranking, k=min(neighbours, len(prototypes)), sorted=False)
    chosen = ops.take(ops.convert_to_tensor(prototypes), nearest, axis=0)
    return ops.mean(ops.sqrt(ops.sum(ops.square(z[:, None, :] - chosen), axis=-1)), axis=1)


def robust_location_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and IQR/1.349 (the normal-consistent scale); falls back to std, then 1."""
    values = np.asarray(values, np.float64)
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    scale = (q75 - q25) / 1.349
    if not scale > 1e-12:
        scale = values.std()
    if not scale > 1e-12:
        scale = 1.0
    return float(median), float(scale)
