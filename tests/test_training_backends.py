"""Training under every Keras backend from one model definition.

JAX and PyTorch each train the end-to-end test's model (``tests/test_model.py``: the same
normal rows, steps and seed as ``tabular_detector``, which TensorFlow trains in this
process) in a process of their own, since Keras reads ``KERAS_BACKEND`` when it is imported.
Each must train a healthy model, find the injected anomalies within 0.02 AUROC of the
TensorFlow model, train the same model twice from the same seed, and save a bundle that
TensorFlow loads and scores as the training backend did.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import anomaly
from tests._support import unavailable
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

BACKENDS = ("jax", "torch")
#: Largest AUROC shortfall (or excess) against the TensorFlow model on the same data.
AUROC_TOLERANCE = 0.02
#: Largest absolute score difference between the training backend and TensorFlow.
SCORE_TOLERANCE = 1e-4
#: Same seed, same backend: weights and scores equal to this.
REPRODUCIBLE = 1e-6

TRAINER = """
import json, math, sys, warnings
import keras
import numpy as np
import anomaly
from anomaly.health import TrainingWarning
from tests.conftest import CorrelatedTable, TABULAR_STEPS, TABULAR_TRAIN_ROWS, TABULAR_TRAIN_SEED

out = sys.argv[1]
table = CorrelatedTable()
rows = table.normal(TABULAR_TRAIN_ROWS, TABULAR_TRAIN_SEED)
labelled_rows, _ = table.labelled(2000, 200, seed=1)
config = anomaly.Config().updated(training={"steps": TABULAR_STEPS})

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", TrainingWarning)
    detector = anomaly.train(rows, config, feature_names=table.feature_names)
detector.save(f"{out}/model")
np.save(f"{out}/scores.npy", detector.score(labelled_rows).scores)

# The same seed twice (a shorter run, validated and early-stopped the same way).
short = config.updated(training={"steps": 30, "steps_per_epoch": 10})
twice = [anomaly.train(rows, short, feature_names=table.feature_names) for _ in range(2)]
weights = [
    [w for network in d.engine.networks.values() for w in network.get_weights()] for d in twice
]
probe = labelled_rows[:300]

# The other formulation, briefly: a BiGAN with spectrally normalised layers.
bigan = anomaly.train(
    rows, short.updated(model={"formulation": "bigan"}), feature_names=table.feature_names
)

print(json.dumps({
    "backend": keras.backend.backend(),
    "warnings": [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)],
    "health": detector.health,
    "keras_backend": detector.metadata["keras_backend"],
    "training_seconds": detector.metadata["training_seconds"],
    "weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(*weights)),
    "score_difference": float(
        np.abs(twice[0].score(probe).scores - twice[1].score(probe).scores).max()
    ),
    "bigan_final_metrics": bigan.metadata["final_metrics"],
    "bigan_scores_finite": bool(np.isfinite(bigan.score(probe).scores).all()),
}))
"""


@pytest.fixture(scope="module")
def tensorflow_auroc(tabular_detector, labelled):
    rows, labels = labelled
    return roc_auc_score(labels, tabular_detector.score(rows).scores)


@pytest.fixture(scope="module", params=BACKENDS)
def trained(request, tmp_path_factory):
    """What a process under ``KERAS_BACKEND=<backend>`` trained: its report, the path of its
    bundle and its scores of the labelled rows."""
    backend = request.param
    if importlib.util.find_spec(backend) is None:
        unavailable(f"{backend} is not installed: pip install 'anomaly-gan[{backend}]'")
    out = tmp_path_factory.mktemp(f"trained-{backend}")
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    if backend == "torch":
        # PyTorch's OpenMP threads spin while they wait for one another: on 2 cores shared
        # with other work its training ran 2-3 times slower with 2 threads than with one.
        env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", TRAINER, str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{backend}: trained in {report['training_seconds']} s")
    return backend, report, out / "model", np.load(out / "scores.npy")


def test_each_backend_trains_in_a_process_of_its_own(trained):
    backend, report, _, _ = trained

    assert report["backend"] == backend
    assert report["keras_backend"] == backend  # as the bundle's metadata records it


def test_training_under_each_backend_is_healthy(trained):
    _, report, _, _ = trained
    health = report["health"]

    assert report["warnings"] == []  # no TrainingWarning: losses finite, no collapse
    assert health["warnings"] == []
    assert health["mode_collapse"] is False
    for name in ("critic_loss", "generator_loss", "encoder_loss", "val_reconstruction"):
        assert len(health["losses"][name]) == health["epochs"] >= 2
        assert np.isfinite(health["losses"][name]).all()


def test_each_backend_finds_anomalies_within_0_02_auroc_of_tensorflow(
    trained, labelled, tensorflow_auroc
):
    backend, _, _, scores = trained
    auroc = roc_auc_score(labelled[1], scores)

    print(f"AUROC: {backend} {auroc:.4f}, tensorflow {tensorflow_auroc:.4f}")
    assert abs(auroc - tensorflow_auroc) <= AUROC_TOLERANCE


def test_same_seed_on_the_same_backend_trains_the_same_model(trained):
    backend, report, _, _ = trained

    print(f"{backend}: same seed twice, weights differ by {report['weight_difference']:.3g}")
    assert report["weight_difference"] <= REPRODUCIBLE
    assert report["score_difference"] <= REPRODUCIBLE


def test_bigan_formulation_trains_under_each_backend(trained):
    _, report, _, _ = trained

    assert np.isfinite(list(report["bigan_final_metrics"].values())).all()
    assert report["bigan_scores_finite"]


def test_bundle_trained_under_each_backend_scores_the_same_under_tensorflow(trained, labelled):
    backend, _, bundle, scores = trained
    detector = anomaly.load(bundle)

    tensorflow_scores = detector.score(labelled[0]).scores

    difference = np.abs(tensorflow_scores - scores).max()
    print(f"max |TensorFlow - {backend}| score difference: {difference:.3g}")
    assert detector.metadata["keras_backend"] == backend
    assert difference <= SCORE_TOLERANCE


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("torch", "KERAS_BACKEND=torch, but PyTorch is not installed: pip install"),
        ("jax", "KERAS_BACKEND=jax, but JAX is not installed: pip install"),
        ("mxnet", "KERAS_BACKEND=mxnet is not a Keras backend this package runs on"),
    ],
)
def test_train_under_a_backend_that_is_not_installed_says_so_in_one_line(
    backend, message, tmp_path
):
    data = tmp_path / "normal.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    # The backend's package made unimportable, as if it were not installed.
    hide = f"import sys; sys.modules[{backend!r}] = None; from pipelines.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", hide, "train", "--data", str(data), "--out", str(tmp_path / "m")],
        cwd=REPO_ROOT,
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {message}")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()
