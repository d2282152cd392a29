"""The main job on a built-in sample: ``python -m pipelines.demo [--out DIR] [--no-stream]``.

Generates a deterministic sample (12 correlated sensor features; the scoring file mixes
normal records with injected anomalies), trains a model, scores the file, evaluates it
against the injected labels and prints what was flagged and where everything went. Unless
``--no-stream``, it then starts the local Kafka broker, streams the same records through
``anomaly serve`` and prints the flagged results and the metrics address.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

import anomaly
from anomaly.evaluation import evaluate_file
from anomaly.files import score_file, train_file

N_FEATURES = 12
#: Longest the demo waits for the service's results, dead letter and alerts.
STREAM_DEADLINE_S = 120.0


def make_sample(directory: Path, seed: int = 7) -> tuple[Path, Path]:
    """Write train.csv (normal only) and score.csv (normal + labelled anomalies)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(4, N_FEATURES))

    def normal(n):
        return rng.normal(size=(n, 4)) @ mixing + 0.2 * rng.normal(size=(n, N_FEATURES))

    names = [f"sensor_{i:02d}" for i in range(N_FEATURES)]
    train = pd.DataFrame(normal(3000), columns=names)
    train.insert(0, "id", [f"t{i:05d}" for i in range(len(train))])
    anomalies = normal(25)
    broken = rng.integers(0, N_FEATURES, size=25)
    anomalies[np.arange(25), broken] += rng.choice([-1, 1], 25) * rng.uniform(4, 8, 25)
    rows = np.vstack([normal(975), anomalies])
    labels = np.r_[np.zeros(975, int), np.ones(25, int)]
    order = rng.permutation(len(rows))
    score = pd.DataFrame(rows[order], columns=names)
    score.insert(0, "id", [f"r{i:05d}" for i in range(len(score))])
    score["label"] = labels[order]
    directory.mkdir(parents=True, exist_ok=True)
    train.to_csv(directory / "train.csv", index=False)
    score.to_csv(directory / "score.csv", index=False)
    return directory / "train.csv", directory / "score.csv"


def run_offline(out: Path) -> anomaly.Detector:
    train_csv, score_csv = make_sample(out / "data")
    config = anomaly.Config().updated(data={"id_column": "id"}, training={"steps": 800})
    detector, summary = train_file(train_csv, out / "model", config)
    print(
        f"trained on {summary.rows_scored} rows in {summary.seconds:.1f} s -> {summary.output} "
        f"(model {detector.version}, threshold {detector.threshold:.3f})"
    )
    scored = score_file(detector, score_csv, out / "scores.csv")
    print(f"scored {scored.rows_scored} rows: {scored.anomalies} flagged -> {scored.output}")
    frame = pd.read_csv(scored.output)
    flagged = frame[frame["is_anomaly"]].sort_values("score", ascending=False)
    print(
        flagged[["row", "id", "score", "percentile", "top_features"]]
        .head(10)
        .to_string(index=False)
    )
    result = evaluate_file(detector, score_csv, "label", report_dir=out / "report")
    print(
        f"against the injected labels: AUROC {result.auroc:.3f}, AUPRC {result.auprc:.3f}, "
        f"precision {result.precision:.2f}, recall {result.recall:.2f} "
        f"-> {out / 'report' / 'report.md'}"
    )
    return detector


KAFKA_LOCAL = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "kafka-local"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class StreamOutcome:
    """What the demo read back: messages per topic, the alerts, and how many results said
    they were flagged (each of which the service also sends to the alerts topic)."""

    counts: dict[str, int]
    alerts: list[dict] = field(default_factory=list)
    flagged: int = 0


def read_stream(
    messages: Iterable, topics: dict[str, str], records: int, deadline: float
) -> StreamOutcome:
    """Read ``messages`` (of the scores, dlq and alerts topics) until every record has its
    result, the malformed message its dead letter, and the alerts topic every alert the
    results flagged; or until ``deadline`` (``time.monotonic()``) passes.

    The topics are consumed together in no fixed order, so the last alerts can come after
    the last result: stopping at the last result undercounts the alerts.
    """
    outcome = StreamOutcome({topic: 0 for topic in topics.values()})
    for message in messages:
        outcome.counts[message.topic] += 1
        if message.topic == topics["scores"]:
            result = orjson.loads(message.value)
            # With conformal alarms on, the alarm (not the flag) sends a result to alerts.
            outcome.flagged += bool(result.get("alarm", result.get("is_anomaly")))
        elif message.topic == topics["alerts"]:
            outcome.alerts.append(orjson.loads(message.value))
        done = (
            outcome.counts[topics["scores"]] >= records
            and outcome.counts[topics["dlq"]] >= 1
            and len(outcome.alerts) >= outcome.flagged
        )
        if done or time.monotonic() > deadline:
            break
    return outcome


def run_stream(out: Path, detector: anomaly.Detector) -> None:
    """Start the local broker, stream score.csv through ``anomaly serve``, print the flags."""
    from kafka import KafkaConsumer, KafkaProducer

    started = subprocess.run(
        [str(KAFKA_LOCAL), "start", "--dir", str(out / "kafka")], capture_output=True, text=True
    )
    if started.returncode != 0:  # its own words say why (no Java, the jars not fetched, ...)
        sys.exit(f"error: the local Kafka broker did not start: {started.stderr.strip()}")
    bootstrap = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    print(f"Kafka broker at {bootstrap} (data in {out / 'kafka'})")
    suffix = uuid.uuid4().hex[:6]
    topics = {t: f"demo-{t}-{suffix}" for t in ("records", "scores", "dlq", "alerts")}
    port = _free_port()
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "serve",
            "--model",
            str(out / "model"),
            "--bootstrap-servers",
            bootstrap,
            "--input-topic",
            topics["records"],
            "--output-topic",
            topics["scores"],
            "--dlq-topic",
            topics["dlq"],
            "--alerts-topic",
            topics["alerts"],
            "--group-id",
            f"demo-{suffix}",
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(out / "serve.log", "wb"),  # noqa: SIM115 (closed with the process)
    )
    try:
        frame = pd.read_csv(out / "data" / "score.csv")
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        names = detector.feature_names
        for record in frame.to_dict("records"):
            message = {"id": record["id"], "features": {n: record[n] for n in names}}
            producer.send(topics["records"], orjson.dumps(message), key=b"demo")
        producer.send(topics["records"], b"this is not JSON", key=b"demo")
        producer.flush()
        consumer = KafkaConsumer(
            topics["scores"],
            topics["alerts"],
            topics["dlq"],
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=int(STREAM_DEADLINE_S * 1000),
        )
        outcome = read_stream(consumer, topics, len(frame), time.monotonic() + STREAM_DEADLINE_S)
        consumer.close()
        counts, flagged = outcome.counts, outcome.alerts
        missing = outcome.flagged - len(flagged)
        print(
            f"streamed {len(frame)} records + 1 malformed message through anomaly serve: "
            f"{counts[topics['scores']]} results on {topics['scores']}, "
            f"{len(flagged)} flagged on {topics['alerts']}, {counts[topics['dlq']]} on "
            f"{topics['dlq']}"
            + (f" ({missing} alerts missing after {STREAM_DEADLINE_S:.0f} s)" if missing else "")
        )
        for result in sorted(flagged, key=lambda r: -r["score"])[:5]:
            print(f"  id={result['id']} score={result['score']:.1f} top={result['top_features']}")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        wanted = (
            "anomaly_records_scored_total ",
            "anomaly_anomalies_flagged_total ",
            'anomaly_records_rejected_total{reason="not_json"}',
        )
        print(f"metrics at http://127.0.0.1:{port}/metrics, e.g.:")
        for line in metrics.splitlines():
            if line.startswith(wanted):
                print(f"  {line}")
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)
        subprocess.run(
            [str(KAFKA_LOCAL), "stop", "--dir", str(out / "kafka")],
            check=False,
            capture_output=True,
        )
        print(f"service stopped (log: {out / 'serve.log'}), broker stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo", type=Path)
    parser.add_argument("--no-stream", action="store_true", help="skip the Kafka part")
    args = parser.parse_args()
    if not args.no_stream and not KAFKA_LOCAL.is_file():
        parser.error(
            f"the Kafka part starts the repository's broker script ({KAFKA_LOCAL}), which an "
            "installed package does not have: run the demo from a checkout, or pass --no-stream"
        )
    detector = run_offline(args.out)
    if not args.no_stream:
        run_stream(args.out, detector)


if __name__ == "__main__":
    main()
