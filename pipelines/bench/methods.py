"""Detectors compared by the benchmark: the project's GAN (with its ablations) and peers.

Every method gets the same TRAIN/TEST rows. Classical peers get the protocol's
preprocessing (``StandardScaler`` fitted on TRAIN); the GAN standardises itself, fitted on
TRAIN only. Peers are imported lazily: they are benchmark dependencies (the ``bench``
extra), never the product's.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

import anomaly
from anomaly.config import COMPONENTS


def refined_scores(detector, records: np.ndarray, refine_steps: int) -> dict[str, np.ndarray]:
    """The engine's output for ``records`` with ``refine_steps`` AnoGAN-style gradient steps
    on each latent code (the ``refined`` ablation), from the same trained networks."""
    engine = detector.engine
    refined = engine.with_params(replace(engine.params, refine_steps=refine_steps))
    return refined.score(np.asarray(records, np.float32))


#: False-positive rates at which the calibration's realised rate is measured on TEST normals.
CALIBRATION_TARGETS = (0.01, 0.001)


def gan(config: anomaly.Config, refine_steps: int = 10):
    """The GAN detector; variants: the combined score, each component alone, and the
    combined score with AnoGAN-style latent refinement. Its info also holds the thresholds
    the detector's calibration gives at ``CALIBRATION_TARGETS`` and, for label-free
    studies, the standardised components of TEST, of the held-out normal rows the detector
    calibrated on, and of synthetic anomalies made from those (``synthetic_anomalies``),
    their latent codes and those of the rows the networks were fitted on,
    and the largest calibration scores the threshold was fitted on (all of them on the
    small sets; with ``training.calibration_folds``, the fold models' too)."""

    def method(train, test, seed):
        from anomaly.training import _split

        cfg = config.updated(training={"seed": seed})
        started = time.perf_counter()
        detector = anomaly.train(train, cfg)
        trained = time.perf_counter()
        result = detector.score(test)
        scored = time.perf_counter()
        variants = {"": result.scores}
        variants.update({f"only_{name}": result.components[name] for name in COMPONENTS})
        if refine_steps:
            variants["refined"] = refined_scores(detector, test, refine_steps)["score"]
        health = detector.health
        # the rows the detector held out for calibration (the same seeded split as training)
        fitted, held_out = _split(np.asarray(train, np.float32), cfg)
        synthetic, kinds = synthetic_anomalies(held_out, train, seed)
        # E(x), for studies of the latent component: the encoder's own codes, as the
        # prototypes are, while scoring.refine_steps is 0 (the default; refined otherwise)
        codes = detector.engine.raw_components
        info = {
            "train": trained - started,
            "score": scored - trained,
            "health": {
                "mode_collapse": bool(health["mode_collapse"]),
                "diversity_ratio": float(health["diversity_ratio"]),
                "warnings": list(health["warnings"]),
            },
            "thresholds": {str(t): detector.threshold_at(t) for t in CALIBRATION_TARGETS},
            "calibration_rows": detector.metadata["calibration_records"],
            "components": {
                "test": _components(result),
                "held_out": _components(detector.score(held_out)),
                "synthetic": _components(detector.score(synthetic)),
                "synthetic_kind": kinds,
                "calibration_largest": np.asarray(detector.engine.params.tail["largest"]),
                **{
                    f"latent_{part}": codes(rows)["latent_code"].astype(np.float32)
                    for part, rows in (
                        ("test", test),
                        ("held_out", held_out),
                        ("synthetic", synthetic),
                        ("fitted", fitted),
                    )
                },
                "calibration_n": detector.engine.params.tail["n"],
            },
        }
        return variants, info

    return method


def _components(result) -> np.ndarray:
    return np.stack([result.components[name] for name in COMPONENTS], axis=1).astype(np.float32)


def synthetic_anomalies(normal: np.ndarray, train: np.ndarray, seed: int):
    """Anomalies made from normal rows only (no labels), as many of each kind as rows:
    ``shuffled`` (each feature permuted on its own: the marginals of normal data without
    its dependencies), ``perturbed`` (a quarter of the features, at least one, moved by a
    training standard deviation) and ``uniform`` (uniform in the training rows' range).
    Returns the rows and their kind (0, 1, 2)."""
    rng = np.random.default_rng(20_000 + seed)
    normal = np.asarray(normal, np.float64)
    n, d = normal.shape
    shuffled = np.stack([rng.permutation(normal[:, j]) for j in range(d)], axis=1)
    scale = np.asarray(train, np.float64).std(axis=0)
    moved = rng.random((n, d)) < max(0.25, 1.0 / d)
    perturbed = normal + moved * rng.choice([-1.0, 1.0], (n, d)) * scale
    low, high = np.min(train, axis=0), np.max(train, axis=0)
    uniform = rng.uniform(low, high, (n, d))
    rows = np.concatenate([shuffled, perturbed, uniform]).astype(np.float32)
    return rows, np.repeat(np.arange(3), n)


def _standardised(fit_predict, variants=None):
    """A peer on standardised rows; ``variants`` maps a variant name to a transform of the
    peer's TEST scores, reported next to them."""

    def method(train, test, seed):
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(train)
        started = time.perf_counter()
        scores, fitted_at = fit_predict(scaler.transform(train), scaler.transform(test), seed)
        done = time.perf_counter()
        scored = {"": scores, **{name: f(scores) for name, f in (variants or {}).items()}}
        return scored, {"train": fitted_at - started, "score": done - fitted_at}

    return method


def _sklearn(make):
    def fit_predict(train, test, seed):
        model = make(seed).fit(train)
        fitted_at = time.perf_counter()
        return -model.score_samples(test), fitted_at

    return _standardised(fit_predict)


def _pyod(make, variants=None):
    def fit_predict(train, test, seed):
        model = make(seed)
        model.fit(train)
        fitted_at = time.perf_counter()
        return model.decision_function(test), fitted_at

    return _standardised(fit_predict, variants)


def isolation_forest():
    from sklearn.ensemble import IsolationForest

    return _sklearn(lambda seed: IsolationForest(random_state=seed))


def one_class_svm():
    from sklearn.svm import OneClassSVM

    return _sklearn(lambda seed: OneClassSVM(kernel="rbf", gamma="scale", nu=0.5))


def pyod_knn():
    from pyod.models.knn import KNN

    return _pyod(lambda seed: KNN(n_neighbors=5, method="largest"))


def pyod_ecod():
    from pyod.models.ecod import ECOD

    return _pyod(lambda seed: ECOD())


def _torch_pyod(module: str, cls: str, variants=None, **kwargs):
    def factory():
        import importlib
        import inspect

        try:
            import torch  # PyOD's deep models are PyTorch models
        except Exception as exc:  # ImportError, or a CUDA wheel without its CUDA libraries
            raise PeerUnavailable(
                f"PyOD {cls} needs PyTorch, which does not import here: "
                f"{type(exc).__name__}: {str(exc)[:160]}"
            ) from None
        model_cls = getattr(importlib.import_module(f"pyod.models.{module}"), cls)
        takes_seed = "random_state" in inspect.signature(model_cls).parameters

        def make(seed):
            torch.manual_seed(seed)  # ALAD, AnoGAN and MO_GAAL take no random_state
            np.random.seed(seed)
            return model_cls(**({"random_state": seed} if takes_seed else {}), **kwargs)

        return _pyod(make, variants)

    return factory


class PeerUnavailable(RuntimeError):
    """A peer whose dependencies are missing; the benchmark records why and goes on."""


def subsampled(method, max_train: int | None):
    """Fit on at most ``max_train`` TRAIN rows, drawn with a fixed seed (TEST is never
    subsampled); for peers whose cost grows too fast with the training size."""
    if max_train is None:
        return method

    def wrapped(train, test, seed):
        if len(train) > max_train:
            rng = np.random.default_rng(10_000 + seed)
            train = train[np.sort(rng.choice(len(train), max_train, replace=False))]
        return method(train, test, seed)

    return wrapped


#: Peers by benchmark name: (factory, largest TRAIN size they are fitted on (None: all rows)).
#: OneClassSVM's fit is quadratic to cubic in the rows (and its scoring linear in the support
#: vectors), so it is fitted on at most 10,000 TRAIN rows: this caps it on http, smtp and
#: shuttle. PyOD's deep detectors train for a fixed number of epochs over every row, so their
#: fit grows linearly with the rows: at their defaults on the 2 cores, AutoEncoder (~17 s per
#: thousand rows), ALAD and MO_GAAL (a few seconds) are capped at 10,000 rows (http, smtp,
#: shuttle), AnoGAN (500 epochs, about a minute per thousand) at 2,000 (the same three sets).
#: Everything else sees every TRAIN row (KNN on all 282,643 http rows: ~10 s).
PEERS = {
    "iforest": (isolation_forest, None),
    "ocsvm": (one_class_svm, 10_000),
    "knn": (pyod_knn, None),
    "ecod": (pyod_ecod, None),
    "autoencoder": (_torch_pyod("auto_encoder", "AutoEncoder", verbose=0), 10_000),
    "alad": (_torch_pyod("alad", "ALAD", verbose=0), 10_000),
    "anogan": (_torch_pyod("anogan", "AnoGAN", verbose=0), 2_000),
    # PyOD scores MO_GAAL by the discriminator's D(x); the paper's outlier score is 1 - D(x)
    # (He et al. 2018, Algorithm 1; PyOD issue #119, open): both are reported.
    "mo_gaal": (_torch_pyod("mo_gaal", "MO_GAAL", {"paper_score": lambda s: 1.0 - s}), 10_000),
}


def make_peer(name: str):
    """The peer's method (subsampling applied) and its TRAIN cap; raises PeerUnavailable."""
    factory, cap = PEERS[name]
    try:
        method = factory()
    except ImportError as exc:
        raise PeerUnavailable(f"{name}: {exc}") from None
    return subsampled(method, cap), cap
