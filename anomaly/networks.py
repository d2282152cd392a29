"""The three networks of the GAN: encoder E(x), generator G(z) and critic D.

Dense networks for feature vectors, 1-D convolutional ones for time-series windows. Each is
a plain functional ``keras.Model`` built from stock layers, so it saves to and loads from the
``.keras`` format with ``safe_mode=True`` under any Keras backend.

The critic has two outputs: its verdict (one value per record) and its last hidden layer,
the "features" whose residual between x and G(E(x)) is a score component. Under the
``bigan`` formulation it judges (x, z) pairs and its layers are spectrally normalised.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from anomaly.config import CONV_KERNEL_SIZE


def build_networks(
    input_shape: tuple[int, ...],
    latent_dim: int,
    hidden_units: list[int],
    conv_filters: list[int],
    formulation: str,
) -> tuple[keras.Model, keras.Model, keras.Model]:
    """Return (encoder, generator, critic) for records of ``input_shape``.

    ``input_shape`` is ``(d,)`` for feature vectors or ``(window, d)`` for time series.
    """
    windowed = len(input_shape) == 2
    if windowed:
        encoder = _conv_encoder(input_shape, latent_dim, conv_filters, hidden_units)
        generator = _dense_generator(input_shape, latent_dim, hidden_units)
        critic = _conv_critic(input_shape, latent_dim, conv_filters, hidden_units, formulation)
    else:
        encoder = _dense_stack(input_shape, hidden_units, latent_dim, "encoder")
        generator = _dense_generator(input_shape, latent_dim, hidden_units)
        critic = _dense_critic(input_shape, latent_dim, hidden_units, formulation)
    return encoder, generator, critic


def _dense_stack(input_shape, hidden_units, out_units, name) -> keras.Model:
    x = inputs = keras.Input(input_shape, name="x")
    for i, units in enumerate(hidden_units):
        x = layers.Dense(units, name=f"hidden_{i}")(x)
        x = layers.LeakyReLU(0.2)(x)
    outputs = layers.Dense(out_units, name="z")(x)
    return keras.Model(inputs, outputs, name=name)


def _dense_generator(output_shape, latent_dim, hidden_units) -> keras.Model:
    """G(z): hidden layers in reverse order, a linear output reshaped to a record."""
    x = inputs = keras.Input((latent_dim,), name="z")
    for i, units in enumerate(reversed(hidden_units)):
        x = layers.Dense(units, name=f"hidden_{i}")(x)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Dense(math.prod(output_shape), name="x")(x)
    if len(output_shape) > 1:
        x = layers.Reshape(output_shape)(x)
    return keras.Model(inputs, x, name="generator")


def _maybe_spectral(layer, formulation):
    return layers.SpectralNormalization(layer) if formulation == "bigan" else layer


def _critic_head(x_features, z_input, hidden_units, formulation, inputs) -> keras.Model:
    """Shared top of both critics: optional z branch, hidden layers, verdict + features."""
    x = x_features
    if formulation == "bigan":
        z = _maybe_spectral(layers.Dense(hidden_units[-1], name="z_embed"), formulation)(z_input)
        x = layers.Concatenate()([x, layers.LeakyReLU(0.2)(z)])
    for i, units in enumerate(hidden_units):
        x = _maybe_spectral(layers.Dense(units, name=f"hidden_{i}"), formulation)(x)
        x = layers.LeakyReLU(0.2)(x)
    features = layers.Identity(name="features")(x)
    verdict = _maybe_spectral(layers.Dense(1, name="verdict_logit"), formulation)(features)
    verdict = layers.Reshape((), name="verdict")(verdict)
    return keras.Model(inputs, [verdict, features], name="critic")


def _dense_critic(input_shape, latent_dim, hidden_units, formulation) -> keras.Model:
    x_in = keras.Input(input_shape, name="x")
    if formulation == "bigan":
        z_in = keras.Input((latent_dim,), name="z")
        return _critic_head(x_in, z_in, hidden_units, formulation, [x_in, z_in])
    return _critic_head(x_in, None, hidden_units, formulation, x_in)


def _conv_features(x, conv_filters, formulation):
    for i, filters in enumerate(conv_filters):
        conv = layers.Conv1D(filters, CONV_KERNEL_SIZE, strides=2, padding="same", name=f"conv_{i}")
        x = _maybe_spectral(conv, formulation)(x)
        x = layers.LeakyReLU(0.2)(x)
    return layers.Flatten()(x)


def _conv_encoder(input_shape, latent_dim, conv_filters, hidden_units) -> keras.Model:
    inputs = keras.Input(input_shape, name="x")
    x = _conv_features(inputs, conv_filters, "fanogan")
    x = layers.Dense(hidden_units[-1], name="hidden")(x)
    x = layers.LeakyReLU(0.2)(x)
    return keras.Model(inputs, layers.Dense(latent_dim, name="z")(x), name="encoder")


def _conv_critic(input_shape, latent_dim, conv_filters, hidden_units, formulation) -> keras.Model:
    x_in = keras.Input(input_shape, name="x")
    x = _conv_features(x_in, conv_filters, formulation)
    if formulation == "bigan":
        z_in = keras.Input((latent_dim,), name="z")
        return _critic_head(x, z_in, hidden_units[-1:], formulation, [x_in, z_in])
    return _critic_head(x, None, hidden_units[-1:], formulation, x_in)
