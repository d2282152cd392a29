"""The GAN as a ``keras.Model`` with a custom ``train_step``, so ``fit`` brings callbacks,
progress bars, validation, early stopping and checkpoints for free.

Two formulations, chosen by ``ModelConfig.formulation``:

``fanogan`` (default)
    WGAN-GP: the critic D is trained to separate data from G(z) under a gradient penalty
    (plus a small drift term that keeps its values near zero); G is trained to raise
    D(G(z)). The encoder E is trained in the same step, against the current G and D, to
    invert the generator: it minimises ||x - G(E(x))||^2 + k ||f(x) - f(G(E(x)))||^2 where f
    is the critic's last hidden layer (f-AnoGAN's izi_f loss). Stable, and the encoder is
    trained for exactly what scoring measures.

``bigan``
    A BiGAN: D judges (x, z) pairs (real: (x, E(x)); fake: (G(z), z)) with spectrally
    normalised layers and a logistic loss; G and E are trained together to fool it, plus an
    x-cycle term ||x - G(E(x))||^2 so the encoder reconstructs (as ALAD's cycle does).

Training is TensorFlow-only (``tf.GradientTape``); the trained networks are plain Keras
models that score under any backend.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="anomaly")
class AnomalyGAN(keras.Model):
    """Encoder, generator and critic trained together on normal records only."""

    def __init__(
        self,
        encoder: keras.Model,
        generator: keras.Model,
        critic: keras.Model,
        formulation: str = "fanogan",
        critic_steps: int = 3,
        gradient_penalty: float = 10.0,
        feature_weight: float = 1.0,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.generator = generator
        self.critic = critic
        self.formulation = formulation
        self.critic_steps = critic_steps
        self.gradient_penalty = gradient_penalty
        self.feature_weight = feature_weight
        self.seed = seed
        self.latent_dim = int(generator.inputs[0].shape[-1])
        self._draws = keras.Variable(0, dtype="int64", trainable=False, name="random_draws")
        self.critic_loss_tracker = keras.metrics.Mean(name="critic_loss")
        self.generator_loss_tracker = keras.metrics.Mean(name="generator_loss")
        self.encoder_loss_tracker = keras.metrics.Mean(name="encoder_loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")

    @property
    def metrics(self):
        return [
            self.critic_loss_tracker,
            self.generator_loss_tracker,
            self.encoder_loss_tracker,
            self.reconstruction_tracker,
        ]

    def compile(self, learning_rate: float = 2e-4, **kwargs):
        """One Adam optimiser per network (beta_1 = 0.5, beta_2 = 0.9: the WGAN-GP settings)."""
        super().compile(**kwargs)

        def adam():
            return keras.optimizers.Adam(learning_rate, beta_1=0.5, beta_2=0.9)

        self.critic_optimizer = adam()
        self.generator_optimizer = adam()
        self.encoder_optimizer = adam()

    def call(self, x, training=False):
        """Reconstruction G(E(x)): what scoring compares x with."""
        return self.generator(self.encoder(x, training=training), training=training)

    def _next_seed(self):
        """A fresh (seed, counter) pair per random draw. Stateless draws keyed by a counter
        make seeded training reproducible: a shared seed generator's state was read in an
        order that depended on TensorFlow's thread scheduling."""
        self._draws.assign_add(1)
        return tf.stack([tf.constant(self.seed, tf.int64), tf.convert_to_tensor(self._draws)])

    def _sample_z(self, batch_size):
        return tf.random.stateless_normal((batch_size, self.latent_dim), seed=self._next_seed())

    def _verdict(self, x, z, training):
        inputs = [x, z] if self.formulation == "bigan" else x
        return self.critic(inputs, training=training)

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        if self.formulation == "bigan":
            losses = self._bigan_step(x)
        else:
            losses = self._fanogan_step(x)
        for tracker, value in zip(self.metrics, losses, strict=True):
            tracker.update_state(value)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        self.reconstruction_tracker.update_state(_mean_square(x - self(x)))
        return {"reconstruction": self.reconstruction_tracker.result()}

    # -- f-AnoGAN: WGAN-GP for G and D, izi_f for E -------------------------------------

    def _fanogan_step(self, x):
        batch_size = ops.shape(x)[0]
        for _ in range(self.critic_steps):
            z = self._sample_z(batch_size)
            with tf.GradientTape() as tape:
                fake = self.generator(z, training=True)
                real_verdict, _ = self.critic(x, training=True)
                fake_verdict, _ = self.critic(fake, training=True)
                critic_loss = (
                    ops.mean(fake_verdict)
                    - ops.mean(real_verdict)
                    + self.gradient_penalty * self._gradient_penalty(x, fake)
                    + 1e-3 * ops.mean(ops.square(real_verdict))
                )
            _apply(tape, critic_loss, self.critic, self.critic_optimizer)

        z = self._sample_z(batch_size)
        with tf.GradientTape() as tape:
            fake_verdict, _ = self.critic(self.generator(z, training=True), training=False)
            generator_loss = -ops.mean(fake_verdict)
        _apply(tape, generator_loss, self.generator, self.generator_optimizer)

        with tf.GradientTape() as tape:
            reconstruction = self.generator(self.encoder(x, training=True), training=False)
            _, real_features = self.critic(x, training=False)
            _, rec_features = self.critic(reconstruction, training=False)
            residual = _mean_square(x - reconstruction)
            encoder_loss = residual + self.feature_weight * _mean_square(
                real_features - rec_features
            )
        _apply(tape, encoder_loss, self.encoder, self.encoder_optimizer)
        return critic_loss, generator_loss, encoder_loss, residual

    def _gradient_penalty(self, real, fake):
        """Penalise critic gradients whose norm strays from 1 on real-fake interpolates."""
        shape = [ops.shape(real)[0]] + [1] * (len(real.shape) - 1)
        alpha = tf.random.stateless_uniform(shape, seed=self._next_seed())
        mixed = real + alpha * (fake - real)
        with tf.GradientTape() as tape:
            tape.watch(mixed)
            verdict, _ = self.critic(mixed, training=True)
        grads = tape.gradient(verdict, mixed)
        norms = ops.sqrt(
            ops.sum(ops.square(ops.reshape(grads, (ops.shape(grads)[0], -1))), axis=1) + 1e-12
        )
        return ops.mean(ops.square(norms - 1.0))

    # -- BiGAN with an x-cycle term ------------------------------------------------------

    def _bigan_step(self, x):
        batch_size = ops.shape(x)[0]
        z = self._sample_z(batch_size)
        with tf.GradientTape() as critic_tape, tf.GradientTape(persistent=True) as ge_tape:
            z_hat = self.encoder(x, training=True)
            fake = self.generator(z, training=True)
            real_logit, _ = self.critic([x, z_hat], training=True)
            fake_logit, _ = self.critic([fake, z], training=True)
            critic_loss = _logistic(real_logit, 1.0) + _logistic(fake_logit, 0.0)
            generator_loss = _logistic(fake_logit, 1.0)
            residual = _mean_square(x - self.generator(z_hat, training=True))
            encoder_loss = _logistic(real_logit, 0.0) + residual
            # Summed inside the tape: a sum formed after it is not recorded, which left the
            # generator without gradients ("No gradients provided for any variable").
            generator_objective = generator_loss + residual
        _apply(critic_tape, critic_loss, self.critic, self.critic_optimizer)
        _apply(ge_tape, generator_objective, self.generator, self.generator_optimizer)
        _apply(ge_tape, encoder_loss, self.encoder, self.encoder_optimizer)
        del ge_tape
        return critic_loss, generator_loss, encoder_loss, residual

    # -- serialisation -------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                name: keras.saving.serialize_keras_object(getattr(self, name))
                for name in ("encoder", "generator", "critic")
            }
        )
        config.update(
            formulation=self.formulation,
            critic_steps=self.critic_steps,
            gradient_penalty=self.gradient_penalty,
            feature_weight=self.feature_weight,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        for name in ("encoder", "generator", "critic"):
            config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)


def _apply(tape, loss, network, optimizer):
    grads = tape.gradient(loss, network.trainable_weights)
    optimizer.apply_gradients(zip(grads, network.trainable_weights, strict=True))


def _mean_square(residual):
    return ops.mean(ops.square(residual))


def _logistic(logits, target):
    """Mean binary cross-entropy of logits against a constant target (0 or 1)."""
    labels = ops.full_like(logits, target)
    return ops.mean(ops.binary_crossentropy(labels, logits, from_logits=True))
