"""SIGTERM while the broker is down: ``anomaly serve`` stops on its own within
``shutdown_timeout_s`` (``event=stopped``, status 0), not by its exit watchdog, and commits
nothing whose result Kafka does not have."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from tests._support import required_module, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "bundle-v3"
SHUTDOWN_TIMEOUT_S = 10.0
#: Records waiting on the input topic when the service starts: 5-10 s of its work here.
BACKLOG = 200_000


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_sigterm_while_the_broker_is_down_stops_cleanly_within_the_shutdown_timeout(
    client, restartable_kafka, tmp_path
):
    producer_class = required_module("confluent_kafka", "confluent").Producer
    bootstrap = restartable_kafka.bootstrap
    run = uuid.uuid4().hex[:8]
    topics = {"input_topic": f"in-{run}", "output_topic": f"out-{run}", "dlq_topic": f"dlq-{run}"}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t, 2, 1) for t in topics.values()])
    admin.close()
    model = shutil.copytree(FIXTURE, tmp_path / "model")
    group = f"outage-{run}"
    environment = {
        **os.environ,
        "ANOMALY_SERVE_CLIENT": client,
        "ANOMALY_SERVE_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
        "ANOMALY_SERVE_METRICS_HOST": "127.0.0.1",
        "ANOMALY_SERVE_METRICS_PORT": "0",
    }
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--model", str(model)]
    command += ["--bootstrap-servers", bootstrap, "--group-id", group]
    for name, topic in topics.items():
        command += [f"--{name.replace('_', '-')}", topic]
    # A backlog far longer than the service needs to start: when the broker goes it is
    # mid-stream, with results in flight that cannot be delivered.
    producer = producer_class(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": BACKLOG}
    )
    for i in range(BACKLOG):
        value = orjson.dumps({"id": i, "features": [0.1, 0.2, 0.3, 0.4]})
        producer.produce(topics["input_topic"], value, str(i).encode())
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    log = tmp_path / "serve.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment, stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: _results(bootstrap, topics["output_topic"]) >= 2000, 120, "results", 0.5)
        # Killed, as in a crash: a broker's controlled shutdown let the requests in flight
        # complete, and a service that had answered all it had fetched then had none at the
        # stop (1 two-worker run in 4, with or without a 2 s linger).
        restartable_kafka.kill()
        wait_for(lambda: b"event=broker_lost" in log.read_bytes(), 30, "event=broker_lost")
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
        took = time.monotonic() - stopping
        text = log.read_text(errors="replace")
        assert "shutdown_overdue" not in text, text[-3000:]
        assert status == 0 and "event=stopped" in text, text[-3000:]
        assert took < SHUTDOWN_TIMEOUT_S + 1.0
        # The stop itself, as the service logs it, keeps within the timeout (the process's
        # exit adds interpreter teardown after event=stopped).
        stopping, stopped = _logged_at(text, "event=stopping"), _logged_at(text, "event=stopped")
        stop_s = (stopped - stopping).total_seconds()
        print(f"{client}: stopped {stop_s:.1f} s after SIGTERM, exited after {took:.1f} s")
        assert stop_s < SHUTDOWN_TIMEOUT_S
        assert "event=flush_slow on=shutdown" in text, "no result was in flight at the stop"

        bootstrap = restartable_kafka.start()
        partitions = [TopicPartition(topics["input_topic"], p) for p in (0, 1)]
        reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
        committed = {tp.partition: reader.committed(tp) or 0 for tp in partitions}
        reader.close()
        results = KafkaConsumer(
            bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000
        )
        results.subscribe([topics["output_topic"]])
        have = {(d["partition"], d["offset"]) for d in (orjson.loads(r.value) for r in results)}
        results.close()
        for partition, offset in committed.items():
            lost = [o for o in range(offset) if (partition, o) not in have]
            assert not lost, f"partition {partition}: committed past {len(lost)} unscored"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _logged_at(text: str, event: str) -> datetime:
    """When the first log line with ``event`` was written."""
    line = next(line for line in text.splitlines() if f"{event} " in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def _results(bootstrap: str, topic: str) -> int:
    """Records on ``topic`` so far (its partitions' end offsets)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()
