"""Training throughput per Keras backend: training steps per second on this machine.

    python -m pipelines.bench_training [--backends tensorflow,jax,torch,torch@1]
                                       [--features 10,64] [--epochs 4] [--repeats 2]

A step is one generator update with its ``critic_steps`` (3) critic updates and one encoder
update, on a batch of 128. Each backend trains in a process of its own (Keras reads
``KERAS_BACKEND`` when it is imported) through the library's own fit
(``anomaly.training._fit_gan``: its batches, the train step compiled the backend's way, a
validation pass per epoch) with the default networks, on 3,000 standardised rows of
``features`` features driven by 3 latent factors. The first epoch of 50 steps compiles and
warms up; each later epoch is timed from the start of its first step to the end of its last
(the validation between epochs is left out). Prints steps/s, the median over the timed
epochs of every repeat [min-max], with the machine, its load average before and after each
run, and the device each backend ran on (a GPU where the backend found one). Backends run
in alternation, repeat by repeat, so that load from anything else on the machine hits each
alike. ``torch@1`` is PyTorch with ``OMP_NUM_THREADS=1``: its OpenMP threads wait for one
another by spinning, which a machine busy with other work punishes. A backend that is not
installed is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch", "torch@1")
STEPS_PER_EPOCH = 50
ROWS = 3000


def _rows(features: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(3, features))
    rows = rng.normal(size=(ROWS, 3)) @ mixing + 0.1 * rng.normal(size=(ROWS, features))
    rows = (rows - rows.mean(0)) / rows.std(0)
    return rows.astype(np.float32)


def _device(backend: str) -> str:
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"GPU: {details.get('device_name', gpus[0].name)}"
        return "CPU"
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return "CPU" if device.platform == "cpu" else f"GPU: {device.device_kind}"
    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return "CPU"


def worker(features: list[int], epochs: int) -> dict:
    """Runs in the backend's own process; returns steps/s per timed epoch per width."""
    import keras

    from anomaly.config import Config
    from anomaly.training import _fit_gan

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["critic_loss"])  # waits for the step: JAX dispatches asynchronously
            self.end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(self.end - self.start)

    backend = keras.backend.backend()
    results = {}
    for width in features:
        rows = _rows(width)
        config = Config().updated(
            training={
                "steps": STEPS_PER_EPOCH * (1 + epochs),
                "steps_per_epoch": STEPS_PER_EPOCH,
                "early_stopping_patience": 1000,
            }
        )
        keras.utils.set_random_seed(0)
        timer = Timer()
        _fit_gan(rows[:2550], rows[2550:], config, [timer])
        results[str(width)] = {
            "warm_up_seconds": timer.seconds[0],
            "steps_per_second": [STEPS_PER_EPOCH / s for s in timer.seconds[1:]],
        }
    return {"backend": backend, "device": _device(backend), "results": results}


def _run_worker(spec: str, features: list[int], epochs: int) -> dict:
    backend, _, threads = spec.partition("@")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if threads:
        env["OMP_NUM_THREADS"] = threads
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "pipelines.bench_training", "--worker", backend]
    command += ["--features", ",".join(map(str, features)), "--epochs", str(epochs)]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
    load_after = os.getloadavg()[0]
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        errors = [line for line in lines if "Error" in line.split(":", 1)[0]]
        return {"backend": spec, "error": (errors or lines)[-1]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load"] = (load_before, load_after)
    return result


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores available, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--features", default="10,64")
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs of 50 steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    features = [int(f) for f in args.features.split(",")]
    if args.worker:
        print(json.dumps(worker(features, args.epochs)))
        return

    backends = args.backends.split(",")
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    for _ in range(args.repeats):
        for backend in backends:
            runs[backend].append(_run_worker(backend, features, args.epochs))

    print(f"machine: {_machine()}")
    print(
        f"{STEPS_PER_EPOCH * args.epochs} timed steps per run (after a warm-up epoch of "
        f"{STEPS_PER_EPOCH}), {args.repeats} runs per backend, batch 128, default networks"
    )
    header = ["backend", "device"] + [f"{f} features: steps/s" for f in features]
    header += ["warm-up s", "load avg"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for backend, results in runs.items():
        failed = [r for r in results if "error" in r]
        if failed:
            print(f"| {backend} | not run: {failed[0]['error']} |")
            continue
        name, _, threads = backend.partition("@")
        label = f"{name}, OMP_NUM_THREADS={threads}" if threads else name
        cells = [label, results[0]["device"]]
        for width in map(str, features):
            rates = [s for r in results for s in r["results"][width]["steps_per_second"]]
            cells.append(f"{statistics.median(rates):.1f} [{min(rates):.1f}-{max(rates):.1f}]")
        warm = [r["results"][str(features[0])]["warm_up_seconds"] for r in results]
        cells.append(f"{statistics.median(warm):.1f}")
        loads = [x for r in results for x in r["load"]]
        cells.append(f"{min(loads):.1f}-{max(loads):.1f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
