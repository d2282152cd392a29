"""What the service's conformal alarms cost per batch: ranking the combined score against
ranking the four score components with a quorum, in the same process.

    python -m pipelines.bench_alarms [--history 750] [--batch 512] [--repeats 21]

Prints the median milliseconds ``KeyedAlarms.update`` takes for one batch of records spread
over 1, 100 and ``--batch`` distinct keys (after one batch that creates every key), and the
cost per distinct key. A history still growing costs as much as a full one: it is ranked as
a window of ``--history`` values padded in front. No Kafka and no model: the scores are
random, which is what the ranking costs whatever the model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from anomaly.config import COMPONENTS, ServeConfig
from anomaly.stream.alarms import KeyedAlarms


def batch_milliseconds(quorum: int | None, keys: int, history: int, batch: int, repeats: int):
    """Median ms of one ``update`` of ``batch`` records over ``keys`` keys."""
    rng = np.random.default_rng(0)
    columns = 1 if quorum is None else len(COMPONENTS)
    shape = (history,) if quorum is None else (history, columns)
    alarms = KeyedAlarms(
        rng.normal(size=shape), history, ServeConfig().alarm_level, None, 10 * batch, quorum or 1
    )
    key_of = [f"key-{i % keys}".encode() for i in range(batch)]
    partitions = [0] * batch
    times = []
    for _ in range(repeats + 1):  # the first fills every key's history; not counted
        scores = rng.normal(size=(batch, columns)).reshape((batch, *shape[1:]))
        started = time.perf_counter()
        alarms.update(scores, key_of, partitions)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=750)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args(argv)
    print(f"history {args.history}, batch {args.batch}, median of {args.repeats} batches")
    print("| ranked | keys | ms per batch | µs per key | ratio to the combined score |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for keys in (1, 100, args.batch):
        base = batch_milliseconds(None, keys, args.history, args.batch, args.repeats)
        quorum = ServeConfig().alarm_quorum
        by_components = batch_milliseconds(quorum, keys, args.history, args.batch, args.repeats)
        for label, ms in (("combined score", base), (f"{quorum} of 4 components", by_components)):
            print(f"| {label} | {keys} | {ms:.2f} | {1000 * ms / keys:.0f} | {ms / base:.2f} |")


if __name__ == "__main__":
    main()
