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


@pytest.mark.parametrize(
    "client",
    [
        "kafka-python",
        pytest.param(
            "confluent",
            marks=pytest.mark.xfail(
                reason="confluent_transport.close flushes the producer up to the whole "
                "shutdown deadline; with the broker down what follows (purge, destroy) can "
                "outlast the watchdog's 1 s of grace: exit 1, shutdown_overdue, no "
                "event=stopped (3 of 4 runs on a loaded 2-core machine)"
            ),
        ),
    ],
)
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
    log = tmp_path / "serve.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment, stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: b"event=partitions_assigned" in log.read_bytes(), 90, "an assignment")
        # Fast enough (librdkafka) that the service still holds results in flight, up to
        # max_pending_results, when the broker goes.
        producer = producer_class({"bootstrap.servers": bootstrap, "linger.ms": 5})
        for i in range(60_000):
            value = orjson.dumps({"id": i, "features": [0.1, 0.2, 0.3, 0.4]})
            producer.produce(topics["input_topic"], value, str(i).encode())
            if i % 10_000 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0
        restartable_kafka.stop()
        wait_for(lambda: b"event=broker_lost" in log.read_bytes(), 30, "event=broker_lost")
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
        took = time.monotonic() - stopping
        text = log.read_text(errors="replace")
        assert "shutdown_overdue" not in text, text[-3000:]
        assert status == 0 and "event=stopped" in text, text[-3000:]
        assert took < SHUTDOWN_TIMEOUT_S + 1.0

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
