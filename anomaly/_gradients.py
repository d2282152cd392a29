"""How each Keras backend takes the gradients that training needs.

The GAN's losses (``anomaly.gan``) are written once, in ``keras.ops``, as functions that call
the networks; this is the one module on the training path that imports a backend directly
(as ``anomaly._compile`` is on the scoring path). A backend gives training three things:

``minimise(model, losses, targets)``
    Calls ``losses()`` (a dict of scalars), takes the gradient of each loss named in
    ``targets`` with respect to its network's weights, all at the current weights, then lets
    each network's optimizer apply its gradients. Returns the losses' values.
``input_gradient(f, x)``
    The gradient of the scalar ``f(x)`` with respect to the batch ``x``, itself
    differentiable: the gradient penalty differentiates it again, with respect to the
    critic's weights.
``step(model, step, args)``
    Runs one training or evaluation step, ``step(data)``, written statefully (variables
    assigned in place). Keras calls ``train_step(data)`` under TensorFlow and PyTorch;
    under JAX it calls ``train_step(state, data)``, whose step must be stateless so that
    ``jax.jit`` can compile it: the model's state comes in as values and goes out updated.

- TensorFlow: ``tf.GradientTape`` (nested for the penalty); Keras compiles the step with
  ``tf.function`` (XLA).
- JAX: ``jax.vjp`` of a function of the weights' values: the loss function's calls read
  those values through a ``keras.StatelessScope`` (what ``stateless_call`` does), and
  ``jax.grad`` for the penalty. The whole step runs in a ``StatelessScope`` holding the
  state Keras passed in (weights, the spectral norms' vectors, the seed generator, the
  optimizers' and the metrics' variables), so the optimizers' ``apply`` is their
  ``stateless_apply`` and the step returns the updated state; Keras compiles it with
  ``jax.jit``.
- PyTorch: ``torch.autograd.grad`` (``create_graph=True`` for the penalty), eagerly, of
  losses computed in a ``StatelessScope`` as under JAX (autograd cannot differentiate
  through tensors that the spectral norms overwrite in place); what the calls assigned is
  then written back and the optimizers apply the gradients under ``torch.no_grad()``.

On every backend, what the loss's calls assign is kept before the optimizers step: Keras's
``SpectralNormalization`` (the ``bigan`` critic) writes the normalised kernel into the
weights during a training call, so the weights a bundle saves are normalised ones. Under
JAX and PyTorch the gradient flows through that normalisation; TensorFlow's tape takes it at
the normalised kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

Losses = Callable[[], dict[str, Any]]
#: A loss's name -> (the network whose weights minimise it, that network's optimizer).
Targets = dict[str, tuple[keras.Model, keras.optimizers.Optimizer]]


def minimise(model: keras.Model, losses: Losses, targets: Targets) -> dict[str, Any]:
    return _BACKENDS[keras.backend.backend()].minimise(model, losses, targets)


def input_gradient(f: Callable[[Any], Any], x: Any) -> Any:
    return _BACKENDS[keras.backend.backend()].input_gradient(f, x)


def step(model: keras.Model, run: Callable[[Any], dict[str, Any]], args: tuple) -> Any:
    """``run(data)`` as Keras's ``train_step`` or ``test_step`` calls for the backend."""
    if keras.backend.backend() != "jax":
        (data,) = args
        return run(data)
    state, data = args
    # The order in which Keras's JAX trainer passes the state: (trainable, non-trainable,
    # optimizer, metrics) to train_step and (trainable, non-trainable, metrics) to test_step.
    groups = [model.trainable_variables, model.non_trainable_variables]
    if len(state) == 4:
        groups.append(model.optimizer.variables)
    groups.append(model.metrics_variables)
    mapping = [
        (variable, value)
        for variables, values in zip(groups, state, strict=True)
        for variable, value in zip(variables, values, strict=True)
    ]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = run(data)
    return logs, tuple([scope.get_current_value(v) for v in variables] for variables in groups)


class _TensorFlow:
    @staticmethod
    def minimise(model, losses, targets):
        import tensorflow as tf

        with tf.GradientTape(persistent=len(targets) > 1) as tape:
            values = losses()
        gradients = {
            name: tape.gradient(values[name], network.trainable_variables)
            for name, (network, _) in targets.items()
        }
        del tape
        for name, (network, optimizer) in targets.items():
            optimizer.apply(gradients[name], network.trainable_variables)
        return values

    @staticmethod
    def input_gradient(f, x):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            y = f(x)
        return tape.gradient(y, x)


class _Jax:
    @staticmethod
    def minimise(model, losses, targets):
        import jax
        import jax.numpy as jnp

        networks = {name: network for name, (network, _) in targets.items()}
        trained = {id(v) for network in networks.values() for v in network.trainable_variables}
        # Every other variable keeps the value it has now in the step's scope.
        fixed = [(v, v.value) for v in model.variables if id(v) not in trained]
        variables = model.variables

        def evaluate(weights):
            mapping = fixed + [
                (variable, value)
                for name, network in networks.items()
                for variable, value in zip(network.trainable_variables, weights[name], strict=True)
            ]
            with keras.StatelessScope(state_mapping=mapping) as scope:
                values = losses()
            # What the calls assigned (spectral norms: their vectors and normalised kernels).
            return values, [scope.get_current_value(v) for v in variables]

        weights = {name: [v.value for v in n.trainable_variables] for name, n in networks.items()}
        values, pullback, assigned = jax.vjp(evaluate, weights, has_aux=True)
        for variable, value in zip(variables, assigned, strict=True):
            variable.assign(value)
        for name, (network, optimizer) in targets.items():
            # The pullback of a cotangent that is 1 for this loss and 0 for the others.
            (gradients,) = pullback(
                {
                    key: (jnp.ones_like if key == name else jnp.zeros_like)(v)
                    for key, v in values.items()
                }
            )
            optimizer.apply(gradients[name], network.trainable_variables)
        return values

    @staticmethod
    def input_gradient(f, x):
        import jax

        return jax.grad(f)(x)


class _Torch:
    @staticmethod
    def minimise(model, losses, targets):
        import torch

        # In a StatelessScope, as under JAX: what the calls assign (the spectral norms' vectors
        # and normalised kernels) is kept aside instead of written in place into tensors that
        # autograd saved for the backward pass.
        mapping = [(v, v.value) for v in model.variables]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            values = losses()
        gradients = {}
        for i, (name, (network, _)) in enumerate(targets.items()):
            gradients[name] = torch.autograd.grad(
                values[name],
                [v.value for v in network.trainable_variables],
                retain_graph=i < len(targets) - 1,  # the next loss shares this graph
            )
        with torch.no_grad():
            for variable in model.variables:
                value = scope.get_current_value(variable)
                if value is not variable.value:  # assigned by a call
                    variable.assign(value)
            for name, (network, optimizer) in targets.items():
                optimizer.apply(list(gradients[name]), network.trainable_variables)
        return {name: value.detach() for name, value in values.items()}

    @staticmethod
    def input_gradient(f, x):
        import torch

        x = x.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(f(x), x, create_graph=True)
        return gradient


_BACKENDS = {"tensorflow": _TensorFlow, "jax": _Jax, "torch": _Torch}
