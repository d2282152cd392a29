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

One definition trains under TensorFlow, JAX and PyTorch: the losses below are ``keras.ops``
functions of the networks, the random draws come from a ``keras.random.SeedGenerator`` that
is part of the model's state, and the backends differ only in how they take gradients
(``anomaly._gradients``). The same seed on the same backend trains the same model. The
trained networks are plain Keras models that save, load and score under any backend.
"""

from __future__ import annotations

import keras
from keras import ops

from anomaly import _gradients


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
        # Model state, so that JAX's stateless step threads it through (and one seed, one
        # backend: one sequence of draws).
        self.seed_generator = keras.random.SeedGenerator(seed, name="draws")
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
        super().compile(optimizer=None, **kwargs)
        optimizers = []
        for name in ("critic", "generator", "encoder"):
            optimizer = keras.optimizers.Adam(
                learning_rate, beta_1=0.5, beta_2=0.9, name=f"{name}_optimizer"
            )
            optimizer.build(getattr(self, name).trainable_variables)
            setattr(self, f"{name}_optimizer", optimizer)
            optimizers.append(optimizer)
        self.optimizer = _Optimizers(optimizers)

    def call(self, x, training=False):
        """Reconstruction G(E(x)): what scoring compares x with."""
        return self.generator(self.encoder(x, training=training), training=training)

    def _sample_z(self, batch_size):
        return keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)

    def train_step(self, *args):
        """``train_step(data)`` under TensorFlow and PyTorch; ``train_step(state, data) ->
        (logs, state)`` under JAX (see ``anomaly._gradients.step``)."""
        return _gradients.step(self, self._train, args)

    def test_step(self, *args):
        return _gradients.step(self, self._test, args)

    def _train(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if self.formulation == "bigan":
            losses = self._bigan_step(x)
        else:
            losses = self._fanogan_step(x)
        for tracker, value in zip(self.metrics, losses, strict=True):
            tracker.update_state(value)
        return {m.name: m.result() for m in self.metrics}

    def _test(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        self.reconstruction_tracker.update_state(_mean_square(x - self(x)))
        return {"reconstruction": self.reconstruction_tracker.result()}

    def _minimise(self, losses, targets):
        """Minimise each loss named in ``targets`` (loss -> network name) over that network's
        weights, with gradients taken the backend's way; returns every value of ``losses()``."""
        return _gradients.minimise(
            self,
            losses,
            {
                loss: (getattr(self, network), getattr(self, f"{network}_optimizer"))
                for loss, network in targets.items()
            },
        )

    # -- f-AnoGAN: WGAN-GP for G and D, izi_f for E -------------------------------------

    def _fanogan_step(self, x):
        batch_size = ops.shape(x)[0]
        for _ in range(self.critic_steps):
            z = self._sample_z(batch_size)
            alpha = keras.random.uniform(
                (batch_size,) + (1,) * (len(x.shape) - 1), seed=self.seed_generator
            )

            def critic_losses(z=z, alpha=alpha):
                fake = self.generator(z, training=True)
                real_verdict, _ = self.critic(x, training=True)
                fake_verdict, _ = self.critic(fake, training=True)
                loss = (
                    ops.mean(fake_verdict)
                    - ops.mean(real_verdict)
                    + self.gradient_penalty * self._gradient_penalty(x, fake, alpha)
                    + 1e-3 * ops.mean(ops.square(real_verdict))
                )
                return {"critic_loss": loss}

            critic_loss = self._minimise(critic_losses, {"critic_loss": "critic"})["critic_loss"]

        z = self._sample_z(batch_size)

        def generator_losses():
            fake_verdict, _ = self.critic(self.generator(z, training=True), training=False)
            return {"generator_loss": -ops.mean(fake_verdict)}

        generator_loss = self._minimise(generator_losses, {"generator_loss": "generator"})[
            "generator_loss"
        ]

        def encoder_losses():
            reconstruction = self.generator(self.encoder(x, training=True), training=False)
            _, real_features = self.critic(x, training=False)
            _, rec_features = self.critic(reconstruction, training=False)
            residual = _mean_square(x - reconstruction)
            return {
                "encoder_loss": residual
                + self.feature_weight * _mean_square(real_features - rec_features),
                "residual": residual,
            }

        values = self._minimise(encoder_losses, {"encoder_loss": "encoder"})
        return critic_loss, generator_loss, values["encoder_loss"], values["residual"]

    def _gradient_penalty(self, real, fake, alpha):
        """Penalise critic gradients whose norm strays from 1 on real-fake interpolates. The
        gradient w.r.t. the interpolates is itself differentiated, w.r.t. the critic's
        weights, when the critic's loss is minimised."""
        mixed = real + alpha * (fake - real)
        grads = _gradients.input_gradient(
            lambda points: ops.sum(self.critic(points, training=True)[0]), mixed
        )
        norms = ops.sqrt(
            ops.sum(ops.square(ops.reshape(grads, (ops.shape(grads)[0], -1))), axis=1) + 1e-12
        )
        return ops.mean(ops.square(norms - 1.0))

    # -- BiGAN with an x-cycle term ------------------------------------------------------

    def _bigan_step(self, x):
        z = self._sample_z(ops.shape(x)[0])

        def losses():
            z_hat = self.encoder(x, training=True)
            fake = self.generator(z, training=True)
            real_logit, _ = self.critic([x, z_hat], training=True)
            fake_logit, _ = self.critic([fake, z], training=True)
            generator_loss = _logistic(fake_logit, 1.0)
            residual = _mean_square(x - self.generator(z_hat, training=True))
            return {
                "critic_loss": _logistic(real_logit, 1.0) + _logistic(fake_logit, 0.0),
                "generator_loss": generator_loss,
                "generator_objective": generator_loss + residual,
                "encoder_loss": _logistic(real_logit, 0.0) + residual,
                "residual": residual,
            }

        # All three gradients at the same weights, from one forward pass.
        values = self._minimise(
            losses,
            {
                "critic_loss": "critic",
                "generator_objective": "generator",
                "encoder_loss": "encoder",
            },
        )
        return (
            values["critic_loss"],
            values["generator_loss"],
            values["encoder_loss"],
            values["residual"],
        )

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


class _Optimizers:
    """The three networks' optimizers, seen by Keras's trainers as the model's one optimizer:
    its JAX trainer passes ``optimizer.variables`` into the stateless step and takes them back
    updated, and callbacks that adjust learning rates visit ``optimizers``."""

    def __init__(self, optimizers: list[keras.optimizers.Optimizer]):
        self.optimizers = optimizers

    @property
    def variables(self):
        return [v for optimizer in self.optimizers for v in optimizer.variables]

    @property
    def built(self):
        return all(optimizer.built for optimizer in self.optimizers)

    @property
    def iterations(self):
        """Training steps: the generator's optimizer updates once per step."""
        return self.optimizers[1].iterations

    def build(self, variables):
        """Each optimizer is built for its own network when the model is compiled."""

    def scale_loss(self, loss):
        return loss


def _mean_square(residual):
    return ops.mean(ops.square(residual))


def _logistic(logits, target):
    """Mean binary cross-entropy of logits against a constant target (0 or 1)."""
    labels = ops.full_like(logits, target)
    return ops.mean(ops.binary_crossentropy(labels, logits, from_logits=True))
