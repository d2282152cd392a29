"""Alerts fire in a real Prometheus server scraping a running service: the anomaly rate, and
input and score drift.

Prometheus (Debian's package) runs on 127.0.0.1 with 1 s scrape and evaluation intervals
and the project's own ``deploy/prometheus/alerts.yml``, of which only the ``for:`` durations
are shortened (the expressions are the ones operators deploy). The scoring service runs in
a thread against the real Kafka broker; anomalous or shifted records are injected and the
alerts are read back from Prometheus's HTTP API.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

import anomaly
from anomaly.stream import ScoringService
from tests._support import free_port, unavailable, wait_for
from tests.test_grafana_dashboard import panel_queries

pytestmark = [pytest.mark.kafka, pytest.mark.prometheus, pytest.mark.slow]

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
POLL_S = 0.5  # how often the waits below look again
DRIFT_WINDOW = 1000  # records the service's drift figures cover


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("Debian's prometheus is not installed (deploy/install-prometheus installs it)")
    return binary


@pytest.fixture
def running_service(tiny_bundle, kafka_bootstrap, kafka_topic_factory):
    topics = {
        "input_topic": kafka_topic_factory(2, prefix="in"),
        "output_topic": kafka_topic_factory(1, prefix="out"),
        "dlq_topic": kafka_topic_factory(1, prefix="dlq"),
    }
    config = (
        anomaly.Config()
        .updated(
            serve={
                "bootstrap_servers": kafka_bootstrap,
                "group_id": f"alerting-{uuid.uuid4().hex[:8]}",
                "metrics_port": 0,
                "drift_window": DRIFT_WINDOW,
                **topics,
            }
        )
        .serve
    )
    service = ScoringService(anomaly.load(tiny_bundle), config)
    service.start()
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        wait_for(service.ready, 60, "the service to be assigned its partitions", POLL_S)
        yield service, topics["input_topic"], kafka_bootstrap
    finally:
        service.stop()
        thread.join(timeout=30)


def _start_prometheus(
    binary: str, directory: Path, target_port: int
) -> tuple[subprocess.Popen, int]:
    rules = re.sub(r"(?m)^(\s*)for: .*$", r"\1for: 2s", RULES.read_text())
    (directory / "alerts.yml").write_text(rules)
    (directory / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n  - job_name: anomaly-scorer\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "prometheus.log", "wb"),  # noqa: SIM115 (lives with the process)
    )
    return process, port


@pytest.fixture
def prometheus_api(prometheus_binary, running_service, tmp_path) -> Iterator[str]:
    """The HTTP API of a Prometheus server that has scraped ``running_service`` once."""
    service = running_service[0]
    prometheus, port = _start_prometheus(prometheus_binary, tmp_path, service.metrics_port)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_for(lambda: _query(api, 'up{job="anomaly-scorer"}') == 1.0, 60, "a scrape", POLL_S)
        yield api
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def test_anomaly_rate_alert_fires_in_prometheus_when_anomalies_are_injected(
    prometheus_api, running_service, tiny_bundle_mixing
):
    api, (_, input_topic, bootstrap) = prometheus_api, running_service
    rng = np.random.default_rng(5)
    normal = rng.normal(size=(300, 3)) @ tiny_bundle_mixing
    anomalous = rng.normal(size=(300, 8)) * 4
    _send(bootstrap, input_topic, np.vstack([normal, anomalous]))

    alerts = wait_for(lambda: _firing(api, "AnomalyRateHigh"), 90, "AnomalyRateHigh", POLL_S)
    assert alerts[0]["labels"]["severity"]
    assert _query(api, "anomaly_anomalies_flagged_total") >= 250


def test_drift_alerts_fire_for_the_one_feature_a_stream_shifts(
    prometheus_api, running_service, tiny_bundle_mixing
):
    """Normal records, then normal records whose f3 is moved by 4 of its standard
    deviations: AnomalyInputDrift fires for f3 alone, and AnomalyScoreDrift too."""
    api, (_, input_topic, bootstrap) = prometheus_api, running_service
    rng = np.random.default_rng(9)
    _send(bootstrap, input_topic, rng.normal(size=(DRIFT_WINDOW, 3)) @ tiny_bundle_mixing)
    wait_for(
        lambda: _query(api, "anomaly_drift_window_records") == DRIFT_WINDOW,
        60,
        "a full window of normal records",
        POLL_S,
    )
    assert _query(api, "max(anomaly_feature_drift_psi)") < 0.1
    assert not _firing(api, "AnomalyInputDrift")

    shifted = rng.normal(size=(DRIFT_WINDOW, 3)) @ tiny_bundle_mixing
    shifted[:, 3] += 4 * np.linalg.norm(tiny_bundle_mixing[:, 3])
    _send(bootstrap, input_topic, shifted)
    drifted = wait_for(lambda: _firing(api, "AnomalyInputDrift"), 90, "AnomalyInputDrift", POLL_S)
    wait_for(lambda: _firing(api, "AnomalyScoreDrift"), 90, "AnomalyScoreDrift", POLL_S)
    assert {a["labels"]["feature"] for a in _firing(api, "AnomalyInputDrift")} == {"f3"}
    assert drifted[0]["labels"]["severity"] == "warning"


def test_every_dashboard_panel_returns_data_from_a_running_service(
    prometheus_api, running_service, tiny_bundle_mixing
):
    """Each query of deploy/grafana/anomaly-scorer.json, its variables filled in as Grafana
    would (all instances), returns at least one series from Prometheus scraping the service
    while it scores normal and anomalous records."""
    api, (_, input_topic, bootstrap) = prometheus_api, running_service
    rng = np.random.default_rng(11)
    rows = np.vstack([rng.normal(size=(400, 3)) @ tiny_bundle_mixing, rng.normal(size=(50, 8))])
    _send(bootstrap, input_topic, rows)
    wait_for(
        lambda: (
            (_query(api, "anomaly_last_commit_timestamp_seconds") or 0) > 0
            and _query(api, "anomaly_records_scored_total") == len(rows)
        ),
        60,
        "every record scored and committed",
        POLL_S,
    )
    queries = panel_queries(rate_interval="1m")
    deadline = time.monotonic() + 30  # rates need two scrapes inside their window
    while True:
        silent = [(title, query) for title, query in queries if not _series(api, query)]
        if not silent or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    assert not silent, f"panels whose query returned no data: {silent}"


def _series(api: str, expression: str) -> list:
    url = f"{api}/query?query={urllib.request.quote(expression)}"
    try:
        return _get_json(url)["data"]["result"]
    except OSError:  # a query Prometheus refuses (HTTP 400) counts as no data
        return []


def _send(bootstrap: str, topic: str, rows: np.ndarray) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i, row in enumerate(rows):
        producer.send(topic, orjson.dumps({"id": i, "features": row.tolist()}), key=b"k")
    producer.flush(timeout=30)
    producer.close()


def _firing(api: str, name: str) -> list[dict]:
    alerts = _get_json(f"{api}/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]


def _query(api: str, expression: str) -> float | None:
    url = f"{api}/query?query={urllib.request.quote(expression)}"
    try:
        result = _get_json(url)["data"]["result"]
    except OSError:
        return None
    return float(result[0]["value"][1]) if result else None
