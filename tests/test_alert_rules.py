"""The Prometheus configuration and alert rules in deploy/prometheus/ are valid and tested.

promtool (Debian's ``prometheus`` package, ``deploy/install-prometheus``) checks the rule and
configuration files and runs the rule unit tests of ``alerts_test.yml``. Without promtool
these tests are skipped, except in CI (``CI=true``) where they fail. The remaining tests read
the YAML files only: every alert has a case where it fires and one where it must stay quiet,
and the committed ``for:`` durations are production ones (end-to-end tests shorten them in
a copy).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests._support import unavailable

PROMETHEUS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"

EXPECTED_ALERTS = {
    "AnomalyRateHigh",
    "ConsumerLagGrowing",
    "DeadLetterRateHigh",
    "AnomalyScorerDown",
    "AnomalyScorerStalled",
    "KafkaUnreachable",
    "AnomalyScorerNoPartitions",
    "UnreadableRecords",
    "KafkaAccessDenied",
    "KafkaOutputUnavailable",
    "AnomalyStateActive",
    "AnomalyModelLoadFailed",
    "AnomalyInputDrift",
    "AnomalyScoreDrift",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool is not installed; run deploy/install-prometheus")
    return path


def _run_promtool(promtool: str, *args: str) -> None:
    result = subprocess.run(
        [promtool, *args],
        cwd=PROMETHEUS_DIR.parents[1],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"`promtool {' '.join(args)}` exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def _alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _rule_test_cases() -> list[dict]:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    return [case for test in tests for case in test.get("alert_rule_test", [])]


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


@pytest.mark.prometheus
def test_promtool_accepts_alert_rules(promtool: str) -> None:
    _run_promtool(promtool, "check", "rules", str(ALERTS))


@pytest.mark.prometheus
def test_promtool_accepts_prometheus_config(promtool: str) -> None:
    _run_promtool(promtool, "check", "config", str(CONFIG))


@pytest.mark.prometheus
def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    _run_promtool(promtool, "test", "rules", str(ALERTS_TEST))


def test_config_scrapes_the_scorer_and_loads_the_alert_rules() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "anomaly-scorer" in jobs
    targets = [t for sc in jobs["anomaly-scorer"]["static_configs"] for t in sc["targets"]]
    assert targets == ["127.0.0.1:9108"]


def test_every_expected_alert_is_defined_with_severity_and_annotations() -> None:
    rules = _alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, rule["alert"]
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test_case() -> None:
    cases = _rule_test_cases()
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    alerts = {rule["alert"] for rule in _alert_rules()}
    assert not alerts - firing, f"alerts without a firing case: {sorted(alerts - firing)}"
    assert not alerts - quiet, f"alerts without a quiet case: {sorted(alerts - quiet)}"
    unknown = (firing | quiet) - alerts
    assert not unknown, f"tests of unknown alerts: {sorted(unknown)}"


def test_every_cause_of_the_stalled_alert_fires_in_a_unit_test() -> None:
    stalled = [rule for rule in _alert_rules() if rule["alert"] == "AnomalyScorerStalled"]
    causes = {rule["labels"]["cause"] for rule in stalled}
    fired = {
        alert["exp_labels"].get("cause")
        for case in _rule_test_cases()
        if case["alertname"] == "AnomalyScorerStalled"
        for alert in case.get("exp_alerts") or []
    }
    assert causes and causes <= fired, f"causes that never fire in a test: {sorted(causes - fired)}"


def test_alert_for_durations_are_production_values() -> None:
    # End-to-end tests shorten `for:` in a copy; the committed file keeps minutes.
    for rule in _alert_rules():
        assert "for" in rule, f"{rule['alert']} has no `for:`"
        assert 60 <= _seconds(rule["for"]) <= 3600, f"{rule['alert']}: for {rule['for']}"
