"""Compiling the scoring graph the way each Keras backend compiles best.

The graph itself (``anomaly.scoring``) is written in ``keras.ops`` and receives two
callables from here: ``call(name, inputs)`` runs one of the networks, and
``grad(f, z)`` differentiates a scalar function (only used by latent refinement; each
backend's gradient is ``anomaly._gradients.input_gradient``, as training's). This is the one
module on the scoring path that imports a backend directly.

- TensorFlow: a ``tf.function`` with a batch-polymorphic input signature (optionally XLA).
- JAX: ``jax.jit`` over the networks' ``stateless_call``, with the variables passed as
  arguments; inputs are padded to power-of-two batch sizes so at most log2(batch) shapes
  are ever compiled.
- Any other backend (PyTorch): the same graph, run eagerly without gradient tracking but
  where refinement differentiates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from anomaly._gradients import input_gradient

Graph = Callable[[Callable, Callable, Any], dict[str, Any]]


def compile_graph(
    graph: Graph, networks: dict[str, keras.Model], record_shape: tuple[int, ...], jit_compile: bool
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Return ``run(x) -> dict of NumPy arrays`` executing ``graph`` compiled for the backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow(graph, networks, record_shape, jit_compile)
    if backend == "jax":
        return _jax(graph, networks)
    return _eager(graph, networks)


def _direct_call(networks):
    def call(name, inputs):
        return networks[name](inputs, training=False)

    return call


def _tensorflow(graph, networks, record_shape, jit_compile):
    import tensorflow as tf

    spec = tf.TensorSpec((None, *record_shape), tf.float32)
    compiled = tf.function(
        lambda x: graph(_direct_call(networks), input_gradient, x),
        input_signature=[spec],
        jit_compile=jit_compile,
        reduce_retracing=True,
    )

    def run(x):
        return {k: v.numpy() for k, v in compiled(tf.constant(x, tf.float32)).items()}

    return run


def _jax(graph, networks):
    import jax

    def run_graph(state, x):
        def call(name, inputs):
            trainable, non_trainable = state[name]
            outputs, _ = networks[name].stateless_call(
                trainable, non_trainable, inputs, training=False
            )
            return outputs

        return graph(call, input_gradient, x)

    state = {
        name: (
            [v.value for v in net.trainable_variables],
            [v.value for v in net.non_trainable_variables],
        )
        for name, net in networks.items()
    }
    compiled = jax.jit(run_graph)

    def run(x):
        n = x.shape[0]
        padded = _pad_to_power_of_two(x)
        outputs = compiled(state, padded)
        return {k: np.asarray(v)[:n] for k, v in outputs.items()}

    return run


def _eager(graph, networks):
    if keras.backend.backend() != "torch":

        def grad(f, z):
            raise NotImplementedError(
                "latent refinement needs the tensorflow, jax or torch backend, not "
                f"{keras.backend.backend()}"
            )

        return _eagerly(graph, networks, grad)
    import torch

    def grad(f, z):  # the one step that differentiates, in a run without gradients
        with torch.enable_grad():
            return input_gradient(f, z).detach()

    return torch.no_grad()(_eagerly(graph, networks, grad))


def _eagerly(graph, networks, grad):
    def run(x):
        outputs = graph(_direct_call(networks), grad, keras.ops.convert_to_tensor(x))
        return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}

    return run


def _pad_to_power_of_two(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    size = 1 << max(0, (n - 1).bit_length())
    if size == n:
        return x
    return np.concatenate([x, np.zeros((size - n, *x.shape[1:]), dtype=x.dtype)])
