"""What the service's drift monitor costs per batch (``anomaly.drift.DriftMonitor``).

    python -m pipelines.bench_drift [--features 30] [--batch 512] [--window 10000] [--repeats 201]

Prints the median microseconds of ``observe`` for one batch of ``--batch`` records of
``--features`` features (binning every feature, the score, and sliding the window), and of
reading the figures (every feature's PSI, the score's, the flagged share), with the window
already full. No Kafka and no model: the rows and scores are random, which is what the
monitor costs whatever the model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from anomaly.drift import DriftMonitor, DriftSummary


def median_microseconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--window", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=201)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(args.features)]
    reference = np.quantile(rng.normal(size=10_000), np.linspace(0, 1, 2001)).tolist()
    summary = DriftSummary.fit(names, reference, rng.normal(size=(10_000, args.features)))
    monitor = DriftMonitor(summary, args.window)
    rows = rng.normal(size=(args.batch, args.features)).astype(np.float32)
    scores = rng.normal(size=args.batch)
    flagged = scores > 2.33
    while monitor.records < args.window:
        monitor.observe(rows, scores, flagged)

    def figures():
        monitor.feature_psi(), monitor.score_psi(), monitor.flagged_share()

    observe = median_microseconds(lambda: monitor.observe(rows, scores, flagged), args.repeats)
    read = median_microseconds(figures, args.repeats)
    print(
        f"{args.features} features, batches of {args.batch}, window {args.window}, "
        f"median of {args.repeats}"
    )
    print("| step | µs per batch | µs per record |")
    print("| --- | ---: | ---: |")
    print(f"| observe | {observe:.0f} | {observe / args.batch:.2f} |")
    print(f"| read the figures | {read:.0f} | |")


if __name__ == "__main__":
    main()
