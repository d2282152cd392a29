"""Streaming throughput and latency: the scoring service against a bare loop, per client.

    python -m pipelines.bench_stream [--bootstrap HOST:PORT] [--records 50000] [--features 30]
                                     [--batch-sizes 1,64,512] [--repeats 3] [--model DIR]
                                     [--clients kafka-python,confluent] [--compression zstd]

Without ``--bootstrap`` it starts a broker with ``deploy/kafka/kafka-local`` (and stops it at
the end). It trains a tiny model of ``--features`` features (or takes ``--model``), then, for
each batch size, runs two workers per client library (``--clients``: ``kafka-python``,
``confluent`` for librdkafka) as subprocesses against the same broker, all four alternating,
``--repeats`` times:

- ``bare``: a loop on the client alone that consumes a batch, decodes each record with
  orjson, encodes a result of the service's shape with constant values, sends it, flushes
  and commits synchronously, without scoring: the ceiling of a plain Python
  consume-produce-commit loop on that client;
- ``service``: ``anomaly.stream.ScoringService`` with ``max_batch_size`` = the batch size and
  ``[serve] client`` = the client.

Throughput: ``--records`` records (about 640 bytes each with 30 features) are produced
first; the worker reports records/s from its first consumed record until every result is
acknowledged (median over the runs). Latency: the bench then produces at a steady rate
(half the bare loop's throughput, at most ``--latency-rate``) for ``--latency-seconds`` and
measures, per result it consumes, the time since the input record was created (percentiles
over all runs).

Prints the table (with service/bare ratios, and the load average before and after) and where
each loop's time went (the service's ``ScoringService.profile()``, summed over the runs).
Every process of the run shares the machine's cores with the broker and the bench itself, so
absolute numbers depend on the machine and on what else runs on it; the ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_LOCAL = REPO_ROOT / "deploy" / "kafka" / "kafka-local"
PARTITIONS = 4
MAX_WAIT_MS = 20
CLIENTS = ("kafka-python", "confluent")
STAGES = ("poll", "decode", "score", "encode", "send", "flush", "commit", "bookkeeping")


# -- the workers (subprocesses) --------------------------------------------------------------


def _emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by this process (all its threads: the client library's, the
    model's) and by the whole machine (every process: the broker's too), from /proc."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return time.process_time(), busy / os.sysconf("SC_CLK_TCK")


def _throughput(records: int, seconds: float, profile: dict, cpu_at_first) -> None:
    """Report a throughput run, with the CPU it took since the first record."""
    process, machine = (now - then for now, then in zip(_cpu_seconds(), cpu_at_first, strict=True))
    _emit(
        event="throughput",
        records=records,
        seconds=seconds,
        profile=profile,
        process_cpu_s=process,
        machine_cpu_s=machine,
    )


_BARE_COMPONENTS = {"reconstruction": 0.0, "feature": 0.0, "critic": 0.0, "latent": 0.0}


def _bare_results(messages: list[dict], partitions, offsets) -> list[bytes]:
    """What a bare loop produces per record: a result of the service's shape, scores fixed."""
    dumps = orjson.dumps
    return [
        dumps(
            {
                "id": m.get("id"),
                "partition": partition,
                "offset": offset,
                "score": 0.0,
                "components": _BARE_COMPONENTS,
                "threshold": 1.0,
                "is_anomaly": False,
                "percentile": 50.0,
                "top_features": ["f0", "f1", "f2"],
                "model_version": "bare",
                "processing_time_ms": 0.0,
                "timestamp": m.get("timestamp"),
            }
        )
        for m, partition, offset in zip(messages, partitions, offsets, strict=True)
    ]


def _bare_worker(args) -> None:
    """Consume, decode, encode, send, flush, commit per batch; no scoring."""
    if args.client == "confluent":
        _bare_confluent_worker(args)
        return
    import logging

    from kafka import KafkaConsumer, KafkaProducer

    logging.basicConfig(level=logging.INFO)

    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=args.batch,
        fetch_max_wait_ms=MAX_WAIT_MS,
    )
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5, batch_size=256 * 1024)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer.subscribe([args.input])
    ready = False
    profile = dict.fromkeys(("poll", "decode", "encode", "send", "flush", "commit"), 0.0)
    done, first, reported, cpu_at_first = 0, None, False, None
    loads, send, topic = orjson.loads, producer.send, args.output
    while not stop.is_set():
        t0 = time.perf_counter()
        polled = consumer.poll(timeout_ms=100, max_records=args.batch)
        records = [r for part in polled.values() for r in part]
        t1 = time.perf_counter()
        profile["poll"] += t1 - t0
        if not ready and consumer.assignment():
            _emit(event="ready")
            ready = True
        if not records:
            continue
        if first is None:
            first, cpu_at_first = t0, _cpu_seconds()
        messages = [loads(r.value) for r in records]
        t2 = time.perf_counter()
        payloads = _bare_results(
            messages, (r.partition for r in records), (r.offset for r in records)
        )
        t3 = time.perf_counter()
        for payload, r in zip(payloads, records, strict=True):
            send(topic, value=payload, key=r.key)
        t4 = time.perf_counter()
        producer.flush()
        t5 = time.perf_counter()
        consumer.commit()
        t6 = time.perf_counter()
        for stage, seconds in zip(
            ("decode", "encode", "send", "flush", "commit"),
            (t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5),
            strict=True,
        ):
            profile[stage] += seconds
        done += len(records)
        if not reported and done >= args.expect:
            _throughput(done, t6 - first, profile, cpu_at_first)
            reported = True
    consumer.close(autocommit=False)
    producer.close()
    _emit(event="done")


def _bare_confluent_worker(args) -> None:
    """The same loop on librdkafka (confluent-kafka): wait for a first record, take what is
    fetched up to the batch size, decode, encode, produce, flush, commit synchronously."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": MAX_WAIT_MS,
        }
    )
    producer = Producer(
        {"bootstrap.servers": args.bootstrap, "linger.ms": 5, "batch.size": 256 * 1024}
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer.subscribe([args.input])
    ready = False
    profile = dict.fromkeys(("poll", "decode", "encode", "send", "flush", "commit"), 0.0)
    done, first, reported, cpu_at_first = 0, None, False, None
    loads, produce, topic = orjson.loads, producer.produce, args.output
    while not stop.is_set():
        t0 = time.perf_counter()
        message = consumer.poll(0.1)
        polled = [message] if message is not None else []
        if polled and args.batch > 1:
            polled += consumer.consume(args.batch - 1, 0)
        records = [m for m in polled if m.error() is None]
        t1 = time.perf_counter()
        profile["poll"] += t1 - t0
        if not ready and consumer.assignment():
            _emit(event="ready")
            ready = True
        if not records:
            continue
        if first is None:
            first, cpu_at_first = t0, _cpu_seconds()
        messages = [loads(r.value()) for r in records]
        t2 = time.perf_counter()
        payloads = _bare_results(
            messages, (r.partition() for r in records), (r.offset() for r in records)
        )
        t3 = time.perf_counter()
        for payload, r in zip(payloads, records, strict=True):
            produce(topic, payload, r.key())
        t4 = time.perf_counter()
        producer.flush()
        t5 = time.perf_counter()
        consumer.commit(asynchronous=False)
        t6 = time.perf_counter()
        for stage, seconds in zip(
            ("decode", "encode", "send", "flush", "commit"),
            (t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5),
            strict=True,
        ):
            profile[stage] += seconds
        done += len(records)
        if not reported and done >= args.expect:
            _throughput(done, t6 - first, profile, cpu_at_first)
            reported = True
    consumer.close()
    producer.flush(10)
    _emit(event="done")


def _service_worker(args) -> None:
    """The scoring service, with a thread that reports when ``expect`` records are done."""
    import logging

    import anomaly
    from anomaly.stream import ScoringService

    logging.basicConfig(level=logging.INFO)
    detector = anomaly.load(args.model)
    config = anomaly.Config().updated(
        serve={
            "bootstrap_servers": args.bootstrap,
            "input_topic": args.input,
            "output_topic": args.output,
            "group_id": args.group,
            "metrics_port": 0,
            "metrics_host": "127.0.0.1",
            "max_batch_size": args.batch,
            "max_wait_ms": MAX_WAIT_MS,
            "client": args.client,
        }
    )
    serve = config.serve.model_copy(update={"dlq_topic": None})
    service = ScoringService(detector, serve)
    service.start()
    signal.signal(signal.SIGTERM, lambda *_: service.stop("SIGTERM"))

    def monitor():
        while not service.ready():
            time.sleep(0.01)
        _emit(event="ready")
        first = None
        while True:
            stats = service.stats()
            now = time.perf_counter()
            if first is None and stats["consumed"]:
                first, cpu_at_first = now, _cpu_seconds()
            if stats["consumed"] >= args.expect and stats["pending_results"] == 0:
                _throughput(stats["consumed"], now - first, service.profile(), cpu_at_first)
                return
            time.sleep(0.002)

    threading.Thread(target=monitor, daemon=True).start()
    service.run()
    _emit(event="done")


# -- the bench (parent) ----------------------------------------------------------------------


class _Worker:
    """A worker subprocess; its JSON-line events are read by a thread, its log kept."""

    def __init__(
        self,
        kind: str,
        client: str,
        bootstrap: str,
        topics: tuple[str, str],
        batch: int,
        expect: int,
        model: Path | None,
        log: Path,
    ):
        command = [
            sys.executable, "-m", "pipelines.bench_stream", "--worker", kind,
            "--client", client,
            "--bootstrap", bootstrap, "--input", topics[0], "--output", topics[1],
            "--batch", str(batch), "--expect", str(expect),
            "--group", f"bench-{kind}-{uuid.uuid4().hex[:6]}",
        ]  # fmt: skip
        if model is not None:
            command += ["--model", str(model)]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )
        self._events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._events.put(json.loads(line))
        self._events.put(None)

    def wait(self, event: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"no '{event}' from the worker in {timeout} s; see {self.log}"
                ) from None
            if message is None:
                raise RuntimeError(
                    f"worker exited ({self.process.wait()}) before '{event}'; see {self.log}"
                )
            if message["event"] == event:
                return message

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


def _records(n: int, features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(3, features))
    rows = rng.normal(size=(n, 3)) @ mixing + 0.1 * rng.normal(size=(n, features))
    return rows


def _produce(bootstrap: str, topic: str, rows: np.ndarray, compression: str | None) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        batch_size=512 * 1024,
        compression_type=compression,
    )
    now = time.time()
    for i, row in enumerate(rows.tolist()):
        producer.send(
            topic,
            value=orjson.dumps({"id": i, "features": row, "timestamp": now}),
            key=f"e{i % 1000}".encode(),
        )
    producer.flush()
    producer.close()


def _latency(
    bootstrap: str,
    topics: tuple[str, str],
    rows: np.ndarray,
    rate: float,
    seconds: float,
    compression: str | None,
):
    """Produce at ``rate``/s for ``seconds``; return the latencies (s) of the results seen."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5
    )
    partitions = [TopicPartition(topics[1], p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for tp in partitions:
        consumer.position(tp)
    total = int(rate * seconds)
    latencies: list[float] = []
    done = threading.Event()

    def read():
        deadline = None
        while True:
            if done.is_set():  # input complete: wait (a while) for the last results
                deadline = deadline or time.monotonic() + 10
                if len(latencies) >= total or time.monotonic() > deadline:
                    break
            for batch in consumer.poll(timeout_ms=50).values():
                now = time.time()
                latencies.extend(now - orjson.loads(r.value)["timestamp"] for r in batch)
        consumer.close()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, compression_type=compression)
    tick = 0.01
    per_tick = rate * tick
    start = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - start) / tick * per_tick) + 1)
        for i in range(sent, due):
            row = rows[i % len(rows)].tolist()
            producer.send(
                topics[0],
                value=orjson.dumps({"id": i, "features": row, "timestamp": time.time()}),
                key=f"e{i % 1000}".encode(),
            )
        sent = due
        time.sleep(tick)
    producer.flush()
    producer.close()
    done.set()
    reader.join(timeout=30)
    return latencies


def _topics(admin, name: str, batch: int) -> tuple[str, str]:
    """A fresh input and output topic for one run of loop ``name`` ("<loop>-<client>")."""
    tag = uuid.uuid4().hex[:6]
    names = (f"bench-in-{name}-{batch}-{tag}", f"bench-out-{name}-{batch}-{tag}")
    admin.create_topics(
        {n: {"num_partitions": PARTITIONS, "replication_factor": 1} for n in names},
        wait_for_metadata=True,
    )
    return names


def _train(features: int, out: Path) -> Path:
    import anomaly

    rows = _records(3000, features, seed=1)
    config = anomaly.Config().updated(training={"steps": 300})
    anomaly.train(rows, config, feature_names=[f"f{i}" for i in range(features)]).save(out)
    return out


def _start_broker(directory: Path) -> str:
    out = subprocess.run(
        [str(KAFKA_LOCAL), "start", "--dir", str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return out.stdout.strip().splitlines()[-1].split("=", 1)[1]


def _percentile(values, q):
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run(args) -> None:
    from kafka.admin import KafkaAdminClient

    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    succeeded = False
    bootstrap = args.bootstrap or _start_broker(workdir / "kafka")
    try:
        model = Path(args.model) if args.model else _train(args.features, workdir / "model")
        import anomaly

        detector = anomaly.load(model)
        features = len(detector.feature_names)
        rows = _records(args.records, features, seed=2)
        size = len(orjson.dumps({"id": 0, "features": rows[0].tolist(), "timestamp": time.time()}))
        load_before = _load()
        print(
            f"broker {bootstrap}; model {detector.version} with {features} features; records of "
            f"about {size} bytes; {PARTITIONS} partitions; max_wait_ms {MAX_WAIT_MS}; input "
            f"compression {args.compression or 'none'}; clients {', '.join(args.clients)}; "
            f"{os.cpu_count()} CPUs, load average (1/5/15 min) {load_before}",
            flush=True,
        )
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        loops = [(client, kind) for client in args.clients for kind in ("bare", "service")]
        table, profiles = [], {}
        for batch in args.batch_sizes:
            n = args.records if batch > 1 else min(args.records, args.records_batch1)
            rps = {loop: [] for loop in loops}
            cpu = {loop: [] for loop in loops}  # (process, machine) CPU µs per record
            latencies = {loop: [] for loop in loops}
            rate = None
            for repeat in range(args.repeats):  # alternating runs; medians and pooled latencies
                for client, kind in loops:
                    name = f"{kind}-{client}"
                    topics = _topics(admin, name, batch)
                    _produce(bootstrap, topics[0], rows[:n], args.compression)
                    log = workdir / "logs" / f"{name}-{batch}-{repeat}.log"
                    log.parent.mkdir(exist_ok=True)
                    worker = _Worker(
                        kind,
                        client,
                        bootstrap,
                        topics,
                        batch,
                        n,
                        model if kind == "service" else None,
                        log,
                    )
                    try:
                        worker.wait("ready")
                        result = worker.wait("throughput")
                        rps[client, kind].append(result["records"] / result["seconds"])
                        cpu[client, kind].append(
                            (
                                1e6 * result["process_cpu_s"] / result["records"],
                                1e6 * result["machine_cpu_s"] / result["records"],
                            )
                        )
                        total = profiles.setdefault((client, kind, batch), {})
                        for stage, seconds in result["profile"].items():
                            total[stage] = total.get(stage, 0.0) + seconds
                        if rate is None:  # the same rate for every loop of this batch size
                            rate = min(args.latency_rate, 0.5 * rps[client, kind][0])
                        if args.latency_seconds > 0:
                            latencies[client, kind] += _latency(
                                bootstrap,
                                topics,
                                rows,
                                rate,
                                args.latency_seconds,
                                args.compression,
                            )
                    finally:
                        worker.stop()
                print(
                    f"  batch {batch}, run {repeat + 1}: "
                    + ", ".join(
                        f"{client} {kind} {rps[client, kind][-1]:,.0f}/s" for client, kind in loops
                    ),
                    flush=True,
                )
            for client in args.clients:
                row = {"client": client, "batch": batch, "records": n, "rate": rate}
                row["runs"] = args.repeats
                for kind in ("bare", "service"):
                    row[f"{kind}_rps"] = statistics.median(rps[client, kind])
                    row[f"{kind}_all"] = rps[client, kind]
                    row[f"{kind}_cpu"] = [
                        statistics.median(c[i] for c in cpu[client, kind]) for i in (0, 1)
                    ]
                    row[f"{kind}_p50"] = _percentile(latencies[client, kind], 50)
                    row[f"{kind}_p99"] = _percentile(latencies[client, kind], 99)
                table.append(row)
        admin.close()
        _print(table, profiles, args, load_before, _load())
        succeeded = True
    finally:
        if not args.bootstrap:
            subprocess.run(
                [str(KAFKA_LOCAL), "stop", "--dir", str(workdir / "kafka")],
                capture_output=True,
                timeout=120,
            )
        if succeeded and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (worker logs in logs/)", file=sys.stderr)


def _print(table, profiles, args, load_before: str, load_after: str) -> None:
    print()
    print(
        "| client | max batch | records x runs | bare loop rec/s | service rec/s "
        "| service / bare | latency rate /s | bare p50 / p99 ms | service p50 / p99 ms |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        print(
            f"| {r['client']} | {r['batch']} | {r['records']:,} x {r['runs']} | "
            f"{r['bare_rps']:,.0f} | {r['service_rps']:,.0f} | "
            f"{r['service_rps'] / r['bare_rps']:.0%} | {r['rate']:,.0f} | "
            f"{r['bare_p50']:.1f} / {r['bare_p99']:.1f} | "
            f"{r['service_p50']:.1f} / {r['service_p99']:.1f} |"
        )
    print()
    print("Every run (records/s):")
    for r in table:
        for kind in ("bare", "service"):
            runs = ", ".join(f"{v:,.0f}" for v in r[f"{kind}_all"])
            print(f"  {r['client']} {kind} batch {r['batch']}: {runs}")
    print(f"\nload average (1/5/15 min): {load_before} before, {load_after} after")
    print()
    print(
        "CPU per record during the throughput run (median µs; the worker process with all "
        "its threads, and the whole machine, broker included), and the rate the machine's "
        f"{os.cpu_count()} cores would allow at the machine's figure:"
    )
    print("| client | loop | batch | process µs/record | machine µs/record | cores / machine µs |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in table:
        for kind in ("bare", "service"):
            process, machine = r[f"{kind}_cpu"]
            print(
                f"| {r['client']} | {kind} | {r['batch']} | {process:.1f} | {machine:.1f} | "
                f"{os.cpu_count() * 1e6 / machine:,.0f}/s |"
            )
    print()
    print("Where the time went during the throughput run (seconds, share of the loop):")
    print("| client | loop | batch | " + " | ".join(STAGES) + " |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in STAGES) + " |")
    for (client, kind, batch), profile in sorted(
        profiles.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])
    ):
        total = sum(profile.values()) or 1.0
        cells = [
            f"{profile[s]:.2f} ({profile[s] / total:.0%})" if s in profile else "-" for s in STAGES
        ]
        print(f"| {client} | {kind} | {batch} | " + " | ".join(cells) + " |")
    for r in table:
        if r["batch"] == 512:
            ratio = r["service_rps"] / r["bare_rps"]
            goal = {"kafka-python": ">= 82 %", "confluent": ">= 85 % and >= 60,000 rec/s"}
            print(
                f"\nbatch 512, {r['client']}: service {r['service_rps']:,.0f} rec/s, at "
                f"{ratio:.0%} of the bare loop (goal {goal.get(r['client'], '-')})"
            )
        if r["batch"] == 64 and args.latency_seconds > 0:
            print(
                f"batch 64, {r['client']}: service p99 {r['service_p99']:.1f} ms "
                f"(goal < {MAX_WAIT_MS + 50} ms)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--model", help="model bundle (default: train a tiny one)")
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--records-batch1", type=int, default=5_000, help="records at batch size 1")
    parser.add_argument(
        "--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 64, 512]
    )
    parser.add_argument("--latency-rate", type=float, default=2000.0)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per batch size")
    parser.add_argument(
        "--compression",
        choices=["gzip", "snappy", "lz4", "zstd"],
        help="codec of the input batches (default: uncompressed)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's directory (worker logs) at the end"
    )
    parser.add_argument(
        "--clients",
        type=lambda s: [c for c in s.split(",") if c],
        default=list(CLIENTS),
        help="client libraries to run the loops on (default: kafka-python,confluent)",
    )
    # worker mode (internal)
    parser.add_argument("--worker", choices=["bare", "service"], help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "bare":
        _bare_worker(args)
    elif args.worker == "service":
        _service_worker(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
