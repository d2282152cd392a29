"""What recalibration and retraining buy when normal operation moves, and what they cost.

A model is trained on correlated Gaussian normal rows; then normal operation moves (every
feature's level up by ``--shift`` standard deviations, or its spread widened by
``--scale``). The model's threshold, calibrated for ``target_fpr`` (1 %), now fires on far
more new normal rows. From a sample of the moved normal (``--fresh`` rows):

- ``anomaly.recalibrate`` recomputes statistics and threshold, networks unchanged;
- ``anomaly.retrain`` resumes training from the model's weights for ``--steps``, then
  calibrates.

Each is measured on ``--test`` further rows of the moved normal: the realised
false-positive rate (the share flagged) and the wall time of the call, per seed, with the
median and range over seeds. One process, one machine: say which and how loaded.

    python -m pipelines.bench.lifecycle --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import anomaly
from anomaly.calibration import recalibrate

N_FEATURES = 4
#: Every pair of features correlated 0.5, each of unit variance.
COVARIANCE = np.full((N_FEATURES, N_FEATURES), 0.5) + 0.5 * np.eye(N_FEATURES)


def normal_rows(
    rng: np.random.Generator, n: int, shift: float = 0.0, scale: float = 1.0
) -> np.ndarray:
    """``n`` normal rows, their level moved by ``shift`` and their spread times ``scale``."""
    rows = rng.multivariate_normal(np.zeros(N_FEATURES), COVARIANCE, n) * scale + shift
    return rows.astype(np.float32)


def measure(seed: int, args: argparse.Namespace) -> dict[str, float]:
    """One seed: rates before, after recalibration and after retraining, and their costs."""
    rng = np.random.default_rng(seed)
    config = anomaly.Config().updated(training={"steps": args.train_steps, "seed": seed})
    model = anomaly.train(normal_rows(rng, args.train), config)
    moved = {"shift": args.shift, "scale": args.scale}
    fresh = normal_rows(rng, args.fresh, **moved)
    test = normal_rows(rng, args.test, **moved)
    figures = {
        "before": float(np.mean(model.score(normal_rows(rng, args.test)).is_anomaly)),
        "moved": float(np.mean(model.score(test).is_anomaly)),
    }
    started = time.perf_counter()
    calibrated = recalibrate(model, fresh)
    figures["calibrate_s"] = time.perf_counter() - started
    figures["calibrated"] = float(np.mean(calibrated.score(test).is_anomaly))
    started = time.perf_counter()
    retrained = anomaly.retrain(model, fresh, steps=args.steps)
    figures["retrain_s"] = time.perf_counter() - started
    figures["retrained"] = float(np.mean(retrained.score(test).is_anomaly))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--shift", type=float, default=1.5, help="level move, in sd")
    parser.add_argument("--scale", type=float, default=1.0, help="spread factor")
    parser.add_argument("--train", type=int, default=10_000, help="training rows")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--fresh", type=int, default=5_000, help="rows of the moved normal")
    parser.add_argument("--steps", type=int, default=60, help="retraining steps")
    parser.add_argument("--test", type=int, default=100_000, help="rows to measure rates on")
    args = parser.parse_args()

    print(
        f"backend={os.environ.get('KERAS_BACKEND', 'tensorflow')} cpus={os.cpu_count()} "
        f"load={os.getloadavg()[0]:.2f} shift={args.shift} scale={args.scale} "
        f"fresh={args.fresh} retrain_steps={args.steps} target=1%"
    )
    columns = ("before", "moved", "calibrated", "calibrate_s", "retrained", "retrain_s")
    print("seed " + " ".join(f"{c:>11}" for c in columns))
    rows = []
    for seed in args.seeds:
        figures = measure(seed, args)
        rows.append(figures)
        print(f"{seed:>4} " + " ".join(_cell(c, figures[c]) for c in columns), flush=True)
    for name, pick in (("median", np.median), ("min", np.min), ("max", np.max)):
        cells = [_cell(c, float(pick([r[c] for r in rows]))) for c in columns]
        print(f"{name:>4} " + " ".join(cells))


def _cell(column: str, value: float) -> str:
    return f"{value:>10.2f}s" if column.endswith("_s") else f"{value:>10.2%} "


if __name__ == "__main__":
    main()
