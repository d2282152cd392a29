"""What the service's adaptive alarm stage costs per batch: each method (conformal, DSPOT) on
the combined score and on the four score components with a quorum, in the same process.

    python -m pipelines.bench_alarms [--history 750] [--batch 512] [--repeats 21]

Prints the median milliseconds ``AlarmStage.update`` takes for one batch of records spread
over 1, 100 and ``--batch`` distinct keys (after one batch that creates every key), and the
cost per distinct key. Each key starts, as in the service, from ``history / 2`` normal
values; a conformal history still growing costs as much as a full one: it is ranked as a
window of ``--history`` values padded in front. No Kafka and no model: the scores are
random, which is what the stage costs whatever the model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from anomaly.alarms import AlarmStage
from anomaly.config import COMPONENTS, AlarmConfig
from anomaly.conformal import DEFAULT_HISTORY_GROWTH


def batch_milliseconds(
    method: str, quorum: int | None, keys: int, history: int, batch: int, repeats: int
) -> float:
    """Median ms of one ``update`` of ``batch`` records over ``keys`` keys."""
    rng = np.random.default_rng(0)
    columns = 1 if quorum is None else len(COMPONENTS)
    start = history // DEFAULT_HISTORY_GROWTH
    shape = (start,) if quorum is None else (start, columns)
    config = AlarmConfig(method=method, quorum=quorum, history=history)
    stage = AlarmStage(rng.normal(size=shape), config, max_keys=10 * batch)
    key_of = [f"key-{i % keys}".encode() for i in range(batch)]
    times = []
    for _ in range(repeats + 1):  # the first creates every key; not counted
        scores = rng.normal(size=(batch, columns)).reshape((batch, *shape[1:]))
        started = time.perf_counter()
        stage.update(scores, key_of)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=750)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args(argv)
    quorum = AlarmConfig().quorum
    print(f"history {args.history}, batch {args.batch}, median of {args.repeats} batches")
    print("| method | ranked | keys | ms per batch | µs per key | ratio to the combined score |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for method in ("conformal", "dspot"):
        for keys in (1, 100, args.batch):
            times = {
                label: batch_milliseconds(method, q, keys, args.history, args.batch, args.repeats)
                for label, q in (("combined score", None), (f"{quorum} of 4 components", quorum))
            }
            base = times["combined score"]
            for label, ms in times.items():
                print(
                    f"| {method} | {label} | {keys} | {ms:.2f} | {1000 * ms / keys:.0f} "
                    f"| {ms / base:.2f} |"
                )


if __name__ == "__main__":
    main()
