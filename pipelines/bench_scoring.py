"""Offline scoring throughput: the engine against a bare compiled pass of the same networks.

    python -m pipelines.bench_scoring [--model DIR] [--features 64] [--repeats 7]

Prints rows/s (median over repeats) at batch sizes 1, 64, 1024 and 8192 for
``Detector.score`` (validation, standardising, all components, flag, percentile and top
features) next to the bare forward pass of the same encoder, generator and critic compiled
the backend's own way (``tf.function`` / ``jax.jit`` over ``stateless_call``), measured in
the same process. Runs under whatever ``KERAS_BACKEND`` is set, so the same script gives
the CPU (TensorFlow) and GPU (JAX) figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import keras
import numpy as np

import anomaly
from anomaly.detector import Detector

BATCH_SIZES = (1, 64, 1024, 8192)


def bare_forward(detector: Detector):
    """E, G and the critic on x and G(E(x)), compiled with nothing around them."""
    nets = detector.engine.networks
    bigan = detector.engine.params.formulation == "bigan"
    backend = keras.backend.backend()

    def forward(call, x):
        z = call("encoder", x)
        x_hat = call("generator", z)
        verdict, features = call("critic", [x, z] if bigan else x)
        _, rec_features = call("critic", [x_hat, z] if bigan else x_hat)
        return verdict, features, rec_features, x_hat

    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda x: forward(lambda n, i: nets[n](i, training=False), x))
        return lambda x: [t.numpy() for t in fn(tf.constant(x))]
    if backend == "jax":
        import jax

        state = {
            n: (
                [v.value for v in m.trainable_variables],
                [v.value for v in m.non_trainable_variables],
            )
            for n, m in nets.items()
        }

        def stateless(state, x):
            return forward(lambda n, i: nets[n].stateless_call(*state[n], i, training=False)[0], x)

        fn = jax.jit(stateless)
        return lambda x: [np.asarray(t) for t in fn(state, x)]
    raise SystemExit(f"no bare baseline for backend {backend}")


def paired_rows_per_second(engine, bare, x: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median rows/s of the engine and the bare pass, timed in alternation so that load
    from anything else on the machine hits both alike."""
    for fn in (engine, bare):  # compile and warm up
        fn(x)
        fn(x)
    calls = max(1, int(20_000 / len(x)))  # enough calls per timing for small batches
    timings = {engine: [], bare: []}
    for _ in range(repeats):
        for fn in (engine, bare):
            start = time.perf_counter()
            for _ in range(calls):
                fn(x)
            timings[fn].append((time.perf_counter() - start) / calls)
    return tuple(len(x) / statistics.median(timings[fn]) for fn in (engine, bare))


def train_probe_model(n_features: int, directory: str) -> Detector:
    """A model of the given width with the default networks (what users train)."""
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, n_features))
    rows = rng.normal(size=(4000, 8)) @ mixing + 0.1 * rng.normal(size=(4000, n_features))
    config = anomaly.Config().updated(training={"steps": 50})
    anomaly.train(rows, config).save(directory)
    return anomaly.load(directory)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="bundle to measure (default: train a small probe model)")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--latent-prototypes", type=int, help="keep only this many latent prototypes (cost study)"
    )
    parser.add_argument(
        "--jit-compile", action="store_true", help="TensorFlow: compile the engine with XLA"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        detector = anomaly.load(args.model, jit_compile=args.jit_compile) if args.model else None
        if detector is None:
            train_probe_model(args.features, tmp)
            detector = anomaly.load(tmp, jit_compile=args.jit_compile)
        if args.latent_prototypes:
            engine = detector.engine
            engine.latent_prototypes = engine.latent_prototypes[: args.latent_prototypes]
        bare = bare_forward(detector)
        shape = detector.schema.record_shape
        print(
            f"backend={keras.backend.backend()} device={_device()} record_shape={shape} "
            f"formulation={detector.engine.params.formulation} jit_compile={args.jit_compile}"
        )
        print(f"{'batch':>6} {'engine rows/s':>14} {'bare rows/s':>12} {'engine/bare':>11}")
        rng = np.random.default_rng(1)
        for batch in BATCH_SIZES:
            x = rng.normal(size=(batch, *shape)).astype(np.float32)
            detector.engine.batch_size = max(batch, detector.engine.batch_size)
            engine, baseline = paired_rows_per_second(detector.score, bare, x, args.repeats)
            print(f"{batch:>6} {engine:>14,.0f} {baseline:>12,.0f} {engine / baseline:>10.0%}")


def _device() -> str:
    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0])
    return "cpu"


if __name__ == "__main__":
    main()
