"""A bundle trained under TensorFlow scores the same under JAX (in a separate process, since
the Keras backend is chosen at import), including batches that JAX pads to a power of two;
with latent refinement, which differentiates through the networks, under JAX and PyTorch."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import replace

import keras
import numpy as np
import pytest

import anomaly
from tests._support import unavailable

pytestmark = pytest.mark.slow

#: Largest absolute score difference accepted between the TensorFlow and JAX backends.
TOLERANCE = 1e-4

#: Gradient steps on each latent code in the refinement checks.
REFINE_STEPS = 3

SCORER = f"""
import sys
from dataclasses import replace
import keras
import numpy as np
import anomaly

bundle, data, out = sys.argv[1:]
detector = anomaly.load(bundle)
x = np.load(data)
result = detector.score(x)
engine = detector.engine
refining = engine.with_params(replace(engine.params, refine_steps={REFINE_STEPS}))
np.savez(
    out,
    backend=np.array(keras.backend.backend()),
    all=result.scores,
    refined=refining.score(x[:300])["score"],
    **{{f"component_{{name}}": values for name, values in result.components.items()}},
    **{{f"first_{{n}}": detector.score(x[:n]).scores for n in (1, 3, 5, 8)}},
)
"""


@pytest.fixture(scope="module")
def records(correlated_table) -> np.ndarray:
    """1000 normal rows and 100 anomalies: not a power of two, so JAX pads them to 2048."""
    return correlated_table.labelled(1000, 100, seed=21)[0]


def _scores_under(backend: str, bundle, records, root) -> dict[str, np.ndarray]:
    """What ``SCORER`` gives for ``records`` in a process of its own under ``backend``."""
    np.save(root / "records.npy", records)
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCORER,
            str(bundle),
            str(root / "records.npy"),
            str(root / "out.npz"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(root / "out.npz") as scores:
        return {name: scores[name] for name in scores.files}


@pytest.fixture(scope="module")
def jax_scores(tabular_bundle, records, tmp_path_factory):
    return _scores_under("jax", tabular_bundle, records, tmp_path_factory.mktemp("jax"))


@pytest.fixture(scope="module")
def torch_scores(tabular_bundle, records, tmp_path_factory):
    if importlib.util.find_spec("torch") is None:
        unavailable("PyTorch is not installed: pip install torch")
    return _scores_under("torch", tabular_bundle, records, tmp_path_factory.mktemp("torch"))


@pytest.fixture(scope="module")
def tf_result(tabular_bundle, records):
    return anomaly.load(tabular_bundle).score(records)


def test_jax_process_really_ran_on_jax(jax_scores):
    assert str(jax_scores["backend"]) == "jax"
    assert keras.backend.backend() == "tensorflow"


def test_bundle_trained_under_tensorflow_scores_the_same_under_jax(tf_result, jax_scores):
    difference = np.abs(jax_scores["all"] - tf_result.scores)

    print(f"max |JAX - TensorFlow| score difference: {difference.max():.3g}")
    assert jax_scores["all"].shape == tf_result.scores.shape
    assert difference.max() <= TOLERANCE


@pytest.mark.parametrize("component", ["reconstruction", "feature", "critic"])
def test_network_components_are_the_same_under_jax_and_tensorflow(tf_result, jax_scores, component):
    expected = tf_result.components[component]
    got = jax_scores[f"component_{component}"]

    assert got.shape == expected.shape
    assert (np.abs(got - expected) <= TOLERANCE * np.maximum(1.0, np.abs(expected))).all()


def test_jax_pads_an_odd_sized_batch_without_changing_its_scores(jax_scores):
    # 5 rows are padded to the compiled batch of 8: the padding must not reach their scores.
    assert jax_scores["first_5"].shape == (5,)
    np.testing.assert_array_equal(jax_scores["first_5"], jax_scores["first_8"][:5])


def test_jax_scores_of_small_batches_match_those_of_large_ones(jax_scores):
    # Other batch sizes compile other shapes, whose kernels may round differently.
    for n in (1, 3, 8):
        assert jax_scores[f"first_{n}"].shape == (n,)
        np.testing.assert_allclose(
            jax_scores[f"first_{n}"], jax_scores["all"][:n], rtol=0, atol=TOLERANCE
        )


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_latent_refinement_scores_the_same_under_jax_and_pytorch(
    backend, tabular_bundle, records, request
):
    """Refinement differentiates through the networks while scoring: under PyTorch it
    raised NotImplementedError, whose scoring runs without gradients."""
    got = request.getfixturevalue(f"{backend}_scores")
    engine = anomaly.load(tabular_bundle).engine
    refining = engine.with_params(replace(engine.params, refine_steps=REFINE_STEPS))
    expected = refining.score(records[:300])["score"]
    unrefined = anomaly.load(tabular_bundle).score(records[:300]).scores

    assert str(got["backend"]) == backend
    assert np.abs(expected - unrefined).max() > 100 * TOLERANCE  # the steps moved the scores
    np.testing.assert_allclose(got["refined"], expected, rtol=1e-3, atol=TOLERANCE)
