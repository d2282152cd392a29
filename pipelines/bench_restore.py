"""What rebuilding per-key state costs a starting service: the wait for its first results.

    python -m pipelines.bench_restore [--bootstrap HOST:PORT] [--partitions 4] [--keys 200]
                                      [--history 5000] [--restore 0,1000,10000] [--repeats 3]
                                      [--clients kafka-python,confluent]

Without ``--bootstrap`` it starts a broker with ``deploy/kafka/kafka-local`` (and stops it at
the end). It trains a tiny time-series model (windows of 4 rows of 4 features) and fills one
input topic with ``--history`` records per partition, ``--keys`` keys spread over the
partitions. Then, per client and ``restore_records`` value, alternating, ``--repeats``
times: a group whose committed offsets are the end of that history starts a
``ScoringService`` in this process (DSPOT alarms, state semantics), is given one new record
per key, and the bench measures the time from producing them to the last of their results.
With ``restore_records = 0`` (the baseline, run in the same process) the keys start afresh
and the first ``window - 1`` of each key's records are not scored; with more, each partition
first reads and scores that many records again (``anomaly.stream.restore``).

Prints the median wait per setting, its ratio to the baseline, the restore's own seconds
from the service's ``event=key_state_restored`` lines, and the load average before and
after: the broker, the service and the bench share the machine's cores.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

from pipelines.bench_stream import KAFKA_LOCAL, _load, _start_broker

WINDOW = 4
FEATURES = 4


def _series(steps: np.ndarray, key: int) -> np.ndarray:
    """Rows of key ``key`` at ``steps``: phase-shifted sines with a little noise."""
    rng = np.random.default_rng(key)
    rows = np.sin(steps[:, None] / 5 + np.arange(FEATURES) + key)
    return rows + 0.05 * rng.normal(size=rows.shape)


def _train():
    import anomaly

    config = anomaly.Config().updated(
        training={"steps": 100}, model={"window": WINDOW, "hidden_units": [32], "conv_filters": [8]}
    )
    rows = _series(np.arange(3000), 0)
    return anomaly.train(rows, config, feature_names=[f"s{i}" for i in range(FEATURES)])


def _messages(keys: int, steps: range) -> list[tuple[bytes, bytes]]:
    """One record per key and step, in time order."""
    table = {key: _series(np.asarray(steps), key) for key in range(keys)}
    return [
        (f"key-{key}".encode(), orjson.dumps({"features": table[key][i].tolist()}))
        for i in range(len(steps))
        for key in range(keys)
    ]


def _produce(bootstrap: str, topic: str, messages) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=262_144)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush(timeout=120)
    producer.close()


def _commit_ends(bootstrap: str, topic: str, group: str) -> None:
    """Give ``group`` committed offsets at the end of every partition of ``topic``."""
    from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    ends = consumer.end_offsets(partitions)
    consumer.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in ends.items()})
    consumer.close()


class _RestoreLog(logging.Handler):
    """Collects the seconds of the service's ``event=key_state_restored`` lines."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("event=key_state_restored"):
            self.seconds.append(float(text.rsplit("seconds=", 1)[1]))


def _one_start(args, detector, topics: dict, client: str, restore: int) -> float:
    """Seconds from producing one record per key to the last of their results."""
    from kafka import KafkaConsumer

    import anomaly
    from anomaly.config import AlarmConfig
    from anomaly.stream import ScoringService

    group = f"bench-restore-{uuid.uuid4().hex[:8]}"
    _commit_ends(args.bootstrap, topics["input"], group)
    serve = (
        anomaly.Config()
        .updated(
            serve={
                "bootstrap_servers": args.bootstrap,
                "input_topic": topics["input"],
                "output_topic": topics["output"],
                "dlq_topic": "",
                "group_id": group,
                "metrics_port": 0,
                "metrics_host": "127.0.0.1",
                "client": client,
                "restore_records": restore,
            }
        )
        .serve
    )
    reader = KafkaConsumer(topics["output"], bootstrap_servers=args.bootstrap)
    reader.poll(timeout_ms=1000)
    reader.seek_to_end()
    reader.poll(timeout_ms=100)
    service = ScoringService(detector, serve, alarms=AlarmConfig(method="dspot", semantics="state"))
    service.start()
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        while not service.ready():
            time.sleep(0.01)
        started = time.perf_counter()
        next_step = _messages(args.keys, range(args.steps, args.steps + 1))
        _produce(args.bootstrap, topics["input"], next_step)
        seen = 0
        while seen < args.keys:
            seen += sum(len(batch) for batch in reader.poll(timeout_ms=100).values())
            if time.perf_counter() - started > 300:
                raise TimeoutError("results did not come within 300 s")
        return time.perf_counter() - started
    finally:
        service.stop()
        thread.join(timeout=30)
        reader.close()


def run(args) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    detector = _train()
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap)
    tag = uuid.uuid4().hex[:6]
    topics = {"input": f"bench-restore-in-{tag}", "output": f"bench-restore-out-{tag}"}
    admin.create_topics(
        [NewTopic(topics["input"], args.partitions, 1), NewTopic(topics["output"], 2, 1)]
    )
    admin.close()
    args.steps = steps = args.history * args.partitions // args.keys  # records per key
    _produce(args.bootstrap, topics["input"], _messages(args.keys, range(steps)))
    handler = _RestoreLog()
    logging.getLogger("anomaly.stream").addHandler(handler)
    logging.getLogger("anomaly.stream").setLevel(logging.INFO)
    load_before = _load()
    waits: dict[tuple[str, int], list[float]] = {}
    restores: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for client in args.clients:
            for restore in args.restore:
                handler.seconds = []
                waits.setdefault((client, restore), []).append(
                    _one_start(args, detector, topics, client, restore)
                )
                restores.setdefault((client, restore), []).append(sum(handler.seconds))
    print(
        f"{args.partitions} partitions x {args.history} records of history, {args.keys} keys "
        f"({steps} records each), window {WINDOW}, {args.repeats} repeats; load average "
        f"before {load_before}, after {_load()}"
    )
    print("| client | restore_records | first results (median s) | vs 0 | restore (median s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (client, restore), values in waits.items():
        wait = statistics.median(values)
        base = statistics.median(waits[(client, 0)]) if (client, 0) in waits else float("nan")
        print(
            f"| {client} | {restore} | {wait:.2f} | {wait / base:.1f}x | "
            f"{statistics.median(restores[(client, restore)]):.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--history", type=int, default=5_000, help="records per partition")
    parser.add_argument("--restore", default="0,1000,10000", help="restore_records values")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", default="kafka-python,confluent")
    args = parser.parse_args()
    args.restore = [int(v) for v in args.restore.split(",")]
    args.clients = args.clients.split(",")
    if args.bootstrap:
        run(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as directory:
        args.bootstrap = _start_broker(Path(directory))
        try:
            run(args)
        finally:
            subprocess.run([str(KAFKA_LOCAL), "stop", "--dir", directory], check=False)


if __name__ == "__main__":
    main()
