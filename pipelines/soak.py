"""Soak test: the service (``anomaly serve``, a subprocess) at a steady rate for a long time.

    python -m pipelines.soak [--minutes 10] [--rate 2000] [--interval-s 60] [--features 30]
                             [--bootstrap HOST:PORT] [--model DIR] [--compression zstd]

Without ``--bootstrap`` it starts a broker with ``deploy/kafka/kafka-local`` (stopped at the
end); without ``--model`` it trains a tiny one. A producer thread sends ``--rate`` records
per second (with ``--compression``, in batches of that codec), a reader thread consumes the
results, and every ``--interval-s`` seconds one line is printed:

- ``rss_mb``: the service process's resident memory (``/proc/PID/status``);
- ``lag``: its consumer lag, summed over partitions (from its own ``/metrics``);
- ``p50_ms`` / ``p99_ms``: time from a record's creation to its result being read, over the
  results read in that interval (measured by this script, not by the service);
- ``sent`` / ``results``: records produced and results read in the interval.

At the end it checks that every record sent has a result and prints the RSS change after
warm-up (the first interval), which should stay flat: a leak grows it minute after minute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import orjson

from pipelines.bench_stream import KAFKA_LOCAL, _records, _start_broker, _train
from pipelines.demo import _free_port

PARTITIONS = 4


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _lag(port: int) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "anomaly_consumer_lag_records"
        for sample in family.samples
    )


def _wait_ready(port: int, process: subprocess.Popen, deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service exited with status {process.returncode}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the service was not ready within {deadline_s:.0f} s")


class _Reader(threading.Thread):
    """Consumes the results; keeps each one's latency, bucketed by interval."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.latencies: list[float] = []
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for batch in self.consumer.poll(timeout_ms=100).values():
                now = time.time()
                results = [orjson.loads(r.value) for r in batch]
                with self.lock:
                    self.latencies.extend(now - r["timestamp"] for r in results)
                    self.ids.update(r["id"] for r in results)
        self.consumer.close()

    def take(self) -> list[float]:
        with self.lock:
            taken, self.latencies = self.latencies, []
        return taken


def _produce(bootstrap, topic, rows, rate, seconds, compression, sent: list[int], stop) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, compression_type=compression)
    tick, start, count = 0.01, time.monotonic(), 0
    total = int(rate * seconds)
    while count < total and not stop.is_set():
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        for i in range(count, due):
            producer.send(
                topic,
                value=orjson.dumps(
                    {"id": i, "features": rows[i % len(rows)].tolist(), "timestamp": time.time()}
                ),
                key=f"e{i % 1000}".encode(),
            )
        count = due
        sent[0] = count
        time.sleep(tick)
    producer.flush()
    producer.close()


def run(args) -> int:
    from kafka.admin import KafkaAdminClient

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    broker_dir = None
    service = None
    try:
        bootstrap = args.bootstrap
        if bootstrap is None:
            broker_dir = workdir / "kafka"
            bootstrap = _start_broker(broker_dir)
        model = Path(args.model) if args.model else _train(args.features, workdir / "model")
        import anomaly

        features = len(anomaly.load(model).feature_names)
        tag = uuid.uuid4().hex[:6]
        topics = {"in": f"soak-in-{tag}", "out": f"soak-out-{tag}", "dlq": f"soak-dlq-{tag}"}
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics(
            {t: {"num_partitions": PARTITIONS, "replication_factor": 1} for t in topics.values()},
            wait_for_metadata=True,
        )
        admin.close()
        port = _free_port()
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.cli",
                "serve",
                "--model",
                str(model),
                "--bootstrap-servers",
                bootstrap,
                "--input-topic",
                topics["in"],
                "--output-topic",
                topics["out"],
                "--dlq-topic",
                topics["dlq"],
                "--metrics-port",
                str(port),
            ],
            env={**os.environ, "ANOMALY_SERVE_METRICS_HOST": "127.0.0.1"},
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "service.log", "wb"),  # noqa: SIM115 (lives with the process)
        )
        _wait_ready(port, service)
        reader = _Reader(bootstrap, topics["out"])
        reader.start()
        rows = _records(10_000, features)
        sent, stop = [0], threading.Event()
        seconds = args.minutes * 60
        producer = threading.Thread(
            target=_produce,
            args=(bootstrap, topics["in"], rows, args.rate, seconds, args.compression, sent, stop),
            daemon=True,
        )
        print(
            f"soak: {args.rate} records/s for {args.minutes} min, {features} features, "
            f"input compression {args.compression or 'none'}, service pid {service.pid}",
            flush=True,
        )
        print(
            f"{'minute':>7} {'sent':>8} {'results':>8} {'rss_mb':>7} {'lag':>7} "
            f"{'p50_ms':>7} {'p99_ms':>7}",
            flush=True,
        )
        producer.start()
        began, last_sent, rss = time.monotonic(), 0, []
        interval = 0
        while producer.is_alive() or interval * args.interval_s < seconds:
            interval += 1
            time.sleep(max(0.0, began + interval * args.interval_s - time.monotonic()))
            if service.poll() is not None:
                print(f"soak: the service exited with status {service.returncode}", flush=True)
                return 1
            latencies = reader.take()
            rss.append(_rss_mb(service.pid))
            p50, p99 = (np.percentile(latencies, [50, 99]) * 1000) if latencies else (np.nan,) * 2
            print(
                f"{interval * args.interval_s / 60:7.1f} {sent[0] - last_sent:8d} "
                f"{len(latencies):8d} {rss[-1]:7.1f} {_lag(port):7.0f} {p50:7.1f} {p99:7.1f}",
                flush=True,
            )
            last_sent = sent[0]
            if not producer.is_alive() and interval * args.interval_s >= seconds:
                break
        producer.join()
        deadline = time.monotonic() + 60
        while len(reader.ids) < sent[0] and time.monotonic() < deadline:
            time.sleep(0.5)
        reader.stop.set()
        missing = sent[0] - len(reader.ids)
        growth = rss[-1] - rss[0] if len(rss) > 1 else 0.0
        print(
            f"soak: {sent[0]} records sent, {len(reader.ids)} with a result, {missing} missing; "
            f"RSS {rss[0]:.1f} MB after the first interval, {rss[-1]:.1f} MB at the end "
            f"({growth:+.1f} MB)",
            flush=True,
        )
        return 0 if missing == 0 else 1
    finally:
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
        if broker_dir is not None:
            subprocess.run([str(KAFKA_LOCAL), "stop", "--dir", str(broker_dir)], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="records per second")
    parser.add_argument("--interval-s", type=float, default=60.0, help="seconds per line")
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--bootstrap", help="HOST:PORT of a running broker")
    parser.add_argument("--model", help="a model bundle (default: train a tiny one)")
    parser.add_argument("--compression", choices=["gzip", "snappy", "lz4", "zstd"])
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
