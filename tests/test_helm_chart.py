"""The Helm chart (deploy/helm/anomaly-scorer) renders objects that Kubernetes, KEDA and the
Prometheus Operator accept, and that run the service the way it needs to be run.

Real tools, as ``deploy/helm/install-tools`` installs them (``scripts/setup`` runs it): ``helm
lint`` and ``helm template`` on the default values and on the example that turns everything
on (Secret, SASL_SSL, KEDA, ServiceMonitor, PrometheusRule, Grafana dashboard, init
container), ``helm package``, and ``kubeconform -strict`` on every rendered object against
the JSON schemas of the Kubernetes releases the chart supports and of the CRDs it uses
(ScaledObject, TriggerAuthentication, ServiceMonitor, PrometheusRule). Without the tools
these tests skip, except under ``CI=true``, where they fail. The rendered ``config.toml`` is
read with ``tomllib`` and validated by the service's own configuration code; the rendered
alert rules and dashboard are compared, as data, with ``deploy/prometheus/alerts.yml`` and
``deploy/grafana/anomaly-scorer.json``, their one source (the chart links to them).
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from anomaly.config import Config
from anomaly.stream import kafka_options
from anomaly.stream.settings import resolve_serve_config
from tests._support import unavailable

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "anomaly-scorer"
FULL_VALUES = ROOT / "deploy" / "helm" / "examples" / "secured-autoscaled-values.yaml"
INSTALL_TOOLS = ROOT / "deploy" / "helm" / "install-tools"
K8S_MANIFESTS = ROOT / "deploy" / "k8s"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "anomaly-scorer.json"
RELEASE = "scorer"
# render()'s key for the Grafana dashboard's ConfigMap (the configuration's is "ConfigMap").
DASHBOARD_CM = "ConfigMap/dashboard"

DEFAULT_KINDS = ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
FULL_KINDS = DEFAULT_KINDS + [
    "ScaledObject",
    "TriggerAuthentication",
    "ServiceMonitor",
    "PrometheusRule",
    "ConfigMap",  # the dashboard's
]


@dataclass(frozen=True)
class Tools:
    helm: str
    kubeconform: str
    kube_versions: tuple[str, ...]
    schema_locations: tuple[str, ...]


@pytest.fixture(scope="module")
def tools() -> Tools:
    result = subprocess.run(
        [str(INSTALL_TOOLS), "paths"], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [line.partition("=") for line in result.stdout.splitlines()]
    found = {key: value for key, _, value in lines}
    tools = Tools(
        helm=found["helm"],
        kubeconform=found["kubeconform"],
        kube_versions=tuple(v for k, _, v in lines if k == "kube_version"),
        schema_locations=tuple(v for k, _, v in lines if k == "schema_location"),
    )
    missing = [p for p in (tools.helm, tools.kubeconform) if not Path(p).is_file()]
    missing += [
        location.split("{{")[0]
        for location in tools.schema_locations
        if not Path(location.split("{{")[0]).is_dir()
    ]
    if missing:
        unavailable(f"not installed: {', '.join(missing)}; run deploy/helm/install-tools")
    return tools


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _template(
    tools: Tools, *args: str, kube_version: str | None = None, chart: Path = CHART
) -> subprocess.CompletedProcess[str]:
    version = ["--kube-version", kube_version] if kube_version else []
    return _run([tools.helm, "template", RELEASE, str(chart), *version, *args])


def _key(o: dict[str, Any]) -> str:
    if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard"):
        return DASHBOARD_CM
    return o["kind"]


def render(tools: Tools, *args: str, chart: Path = CHART) -> dict[str, dict[str, Any]]:
    """The objects ``helm template`` makes with ``args``, by kind (one of each here; the
    dashboard's ConfigMap as ``DASHBOARD_CM``)."""
    result = _template(tools, *args, chart=chart)
    assert result.returncode == 0, f"helm template {' '.join(args)} failed:\n{result.stderr}"
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    keys = [_key(o) for o in objects]
    assert len(keys) == len(set(keys)), keys
    return {_key(o): o for o in objects}


def render_error(tools: Tools, *args: str, chart: Path = CHART) -> str:
    result = _template(tools, *args, chart=chart)
    assert result.returncode != 0, f"helm template {' '.join(args)} rendered:\n{result.stdout}"
    return result.stderr


def kubeconform(tools: Tools, manifests: str, kube_version: str) -> tuple[int, dict[str, Any]]:
    args = [tools.kubeconform, "-strict", "-summary", "-verbose", "-output", "json"]
    args += ["-kubernetes-version", kube_version]
    for location in tools.schema_locations:
        args += ["-schema-location", location]
    result = _run([*args, "-"], stdin=manifests)
    return result.returncode, json.loads(result.stdout)


def config_toml(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(objects["ConfigMap"]["data"]["config.toml"])


def scorer(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = [
        c
        for c in objects["Deployment"]["spec"]["template"]["spec"]["containers"]
        if c["name"] == "scorer"
    ]
    return container


def pod_spec(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objects["Deployment"]["spec"]["template"]["spec"]


def full_values() -> dict[str, Any]:
    return yaml.safe_load(FULL_VALUES.read_text())


# ---------------------------------------------------------------------------- the real tools


def test_credentials_from_extra_env_are_taken_with_a_trigger_authentication_of_ones_own(
    tools: Tools,
) -> None:
    """With autoscaling.authenticationRef KEDA's credentials are the user's own, so the
    scorers' may come from extraEnv (a secretKeyRef): refused for a while, with advice the
    chart refused too."""
    password = {"name": "ANOMALY_SERVE_KAFKA_SASL_PLAIN_PASSWORD", "value": "from-a-secret"}
    objects = render(
        tools,
        "-f",
        str(FULL_VALUES),
        "--set",
        "autoscaling.authenticationRef=my-auth",
        "--set-json",
        f"extraEnv={json.dumps([password])}",
    )
    assert password in scorer(objects)["env"]


def test_null_is_taken_where_it_is_the_services_default(tools: Tools) -> None:
    """A key set to null is not rendered, so the service's default applies: the schema
    takes null where that default is none (alarms.quorum null is refused above)."""
    objects = render(tools, "--set", "serve.alerts_topic=null", "--set", "alarms.exit_level=null")

    config = config_toml(objects)
    assert "alerts_topic" not in config["serve"] and "exit_level" not in config.get("alarms", {})


def test_the_values_schema_takes_the_service_configurations_types() -> None:
    """values.schema.json's serve and alarms sections are made from ServeConfig and
    AlarmConfig (deploy/helm/values_schema.py): a key or bound added to the service is
    checked by helm too."""
    script = ROOT / "deploy" / "helm" / "values_schema.py"
    result = _run([sys.executable, str(script), "--check"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", [[], ["-f", str(FULL_VALUES)]], ids=["default", "full"])
def test_helm_lint_passes_strictly(tools: Tools, values: list[str]) -> None:
    result = _run([tools.helm, "lint", "--strict", str(CHART), *values])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("values", "kinds"),
    [([], DEFAULT_KINDS), (["-f", str(FULL_VALUES)], FULL_KINDS)],
    ids=["default", "full"],
)
def test_every_rendered_object_passes_the_schema_check(
    tools: Tools, values: list[str], kinds: list[str]
) -> None:
    assert len(tools.kube_versions) >= 2  # the oldest supported release and the newest
    for version in tools.kube_versions:
        result = _template(tools, *values, kube_version=version)
        assert result.returncode == 0, result.stderr
        code, report = kubeconform(tools, result.stdout, version)
        statuses = Counter((r["kind"], r["status"]) for r in report["resources"])
        assert code == 0, json.dumps(report, indent=2)
        # Every kind has its schema (CRDs included): nothing skipped, nothing unknown.
        assert statuses == Counter((k, "statusValid") for k in kinds), (version, statuses)
        assert report["summary"] == {"valid": len(kinds), "invalid": 0, "errors": 0, "skipped": 0}


def _with(objects: dict[str, dict[str, Any]], kind: str, change) -> str:
    broken = copy.deepcopy(objects[kind])
    change(broken)
    return yaml.safe_dump(broken)


@pytest.mark.parametrize(
    ("kind", "change", "complaint"),
    [
        ("Deployment", lambda o: o["spec"].update(replicas="two"), "/spec/replicas"),
        (
            "Deployment",
            lambda o: o["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].update(
                timeoutSecond=3
            ),
            "timeoutSecond",
        ),
        ("ScaledObject", lambda o: o["spec"].update(maxReplicaCount="12"), "/spec/maxReplicaCount"),
        (
            "ServiceMonitor",
            lambda o: o["spec"]["endpoints"][0]["relabelings"][0].update(action="rename"),
            "/spec/endpoints/0/relabelings/0/action",
        ),
        (
            "TriggerAuthentication",
            lambda o: o["spec"]["secretTargetRef"][0].pop("parameter"),
            "parameter",
        ),
        (
            "PrometheusRule",
            lambda o: o["spec"]["groups"][0]["rules"][0].update({"for": "ten minutes"}),
            "/spec/groups/0/rules/0/for",
        ),
    ],
    ids=[
        "deployment-type",
        "deployment-unknown-field",
        "scaledobject",
        "servicemonitor",
        "triggerauth",
        "prometheusrule",
    ],
)
def test_schema_check_rejects_a_broken_object(
    tools: Tools, kind: str, change, complaint: str
) -> None:
    objects = render(tools, "-f", str(FULL_VALUES))
    code, report = kubeconform(tools, _with(objects, kind, change), tools.kube_versions[-1])
    assert code != 0
    (resource,) = report["resources"]
    assert resource["status"] == "statusInvalid", resource
    assert complaint in resource["msg"], resource["msg"]


def test_the_kustomize_manifests_pass_the_same_schema_check(tools: Tools) -> None:
    manifests = "\n---\n".join(
        p.read_text()
        for p in sorted(K8S_MANIFESTS.glob("*.yaml"))
        if p.name != "kustomization.yaml"
    )
    for version in tools.kube_versions:
        code, report = kubeconform(tools, manifests, version)
        assert code == 0, json.dumps(report, indent=2)
        assert report["summary"]["valid"] == 3, report["summary"]


# ---------------------------------------------------------------------------- behaviour


def test_probes_ask_healthz_and_readyz_on_the_metrics_port(tools: Tools) -> None:
    for args, port in (([], 9108), (["--set", "serve.metrics_port=9200"], 9200)):
        objects = render(tools, *args)
        container = scorer(objects)
        assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "metrics"
            assert container[probe]["httpGet"]["scheme"] == "HTTP"
        assert config_toml(objects)["serve"]["metrics_port"] == port
        (service_port,) = objects["Service"]["spec"]["ports"]
        assert (service_port["port"], service_port["targetPort"]) == (port, "metrics")
        # Not-ready scorers (no partition, broker lost) are still scraped.
        assert objects["Service"]["spec"]["publishNotReadyAddresses"] is True


def test_probes_speak_https_when_the_metrics_endpoint_has_a_certificate(tools: Tools) -> None:
    objects = render(
        tools,
        "--set",
        "serve.metrics_certfile=/etc/metrics-tls/tls.crt",
        "--set",
        "metrics.serviceMonitor.enabled=true",
    )
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert scorer(objects)[probe]["httpGet"]["scheme"] == "HTTPS"
    assert objects["ServiceMonitor"]["spec"]["endpoints"][0]["scheme"] == "https"


@pytest.mark.parametrize(
    ("args", "shutdown", "grace"),
    [
        ([], 10, 30),
        (["-f", str(FULL_VALUES)], 15, 35),
        (["--set-json", "serve.shutdown_timeout_s=12.5"], 12.5, 33),
        (["--set", "terminationGracePeriodSeconds=11"], 10, 11),
        (["--set", "shutdownMarginSeconds=1"], 10, 11),
    ],
)
def test_grace_period_outlasts_the_shutdown_timeout(tools: Tools, args, shutdown, grace) -> None:
    objects = render(tools, *args)
    assert config_toml(objects)["serve"]["shutdown_timeout_s"] == shutdown
    assert pod_spec(objects)["terminationGracePeriodSeconds"] == grace
    assert grace > shutdown


BROKEN_RULES = {
    "grace-equal": (
        ["--set", "terminationGracePeriodSeconds=10"],
        "terminationGracePeriodSeconds (10) must be longer than serve.shutdown_timeout_s (10)",
    ),
    "grace-shorter": (
        ["--set", "serve.shutdown_timeout_s=40", "--set", "terminationGracePeriodSeconds=30"],
        "terminationGracePeriodSeconds (30) must be longer than serve.shutdown_timeout_s (40)",
    ),
    "no-margin": (
        ["--set", "shutdownMarginSeconds=0"],
        "terminationGracePeriodSeconds (10) must be longer than serve.shutdown_timeout_s (10)",
    ),
    "max-replicas-over-partitions": (
        ["-f", str(FULL_VALUES), "--set", "autoscaling.maxReplicas=13"],
        "autoscaling.maxReplicas (13) exceeds kafka.inputPartitions (12)",
    ),
    "autoscaling-without-partitions": (
        ["--set", "autoscaling.enabled=true"],
        "kafka.inputPartitions is required with autoscaling.enabled",
    ),
    "replicas-over-partitions": (
        ["--set", "kafka.inputPartitions=1"],
        "replicaCount (2) exceeds kafka.inputPartitions (1)",
    ),
    "min-over-max": (
        [
            "-f",
            str(FULL_VALUES),
            "--set",
            "autoscaling.minReplicas=8",
            "--set",
            "autoscaling.maxReplicas=4",
        ],
        "autoscaling.minReplicas (8) exceeds autoscaling.maxReplicas (4)",
    ),
    "password-in-configmap": (
        ["--set", "serve.kafka.sasl_plain_password=hunter2"],
        "serve.kafka.sasl_plain_password would be written in clear into a ConfigMap",
    ),
    # librdkafka's names (client: confluent) for an inline private key and OAuth settings.
    "inline-key-in-configmap": (
        ["--set-json", 'serve.kafka={"ssl.key.pem": "-----BEGIN PRIVATE KEY-----"}'],
        "serve.kafka.ssl.key.pem would be written in clear into a ConfigMap",
    ),
    "oauth-config-in-configmap": (
        ["--set-json", 'serve.kafka={"sasl.oauthbearer.config": "principal=a"}'],
        "serve.kafka.sasl.oauthbearer.config would be written in clear into a ConfigMap",
    ),
    "secret-keys-without-secret": (
        ["--set", "kafka.secretOptions.sasl_plain_password=password"],
        "set kafka.existingSecret to the Secret's name",
    ),
    "option-twice": (
        ["-f", str(FULL_VALUES), "--set", "serve.kafka.ssl_cafile=/etc/ssl/ca.pem"],
        "Kafka option ssl_cafile is given twice",
    ),
    "keda-without-password": (
        ["-f", str(FULL_VALUES), "--set", "kafka.secretOptions=null"],
        "KEDA's Kafka scaler needs the SASL password too",
    ),
    "keda-unknown-mechanism": (
        ["-f", str(FULL_VALUES), "--set", "serve.kafka.sasl_mechanism=GSSAPI"],
        'serve.kafka.sasl_mechanism "GSSAPI": the chart gives KEDA',
    ),
    "metrics-port-zero": (
        ["--set", "serve.metrics_port=0"],
        "serve.metrics_port must be a fixed port",
    ),
    "metrics-on-loopback": (
        ["--set", "serve.metrics_host=127.0.0.1"],
        'serve.metrics_host "127.0.0.1" listens on the pod\'s loopback only',
    ),
    "metrics-port-moved-by-env": (
        ["--set-json", 'extraEnv=[{"name": "ANOMALY_SERVE_METRICS_PORT", "value": "9300"}]'],
        "extraEnv ANOMALY_SERVE_METRICS_PORT would change serve.metrics_port in the service "
        "alone: the chart renders the metrics endpoint",
    ),
    "grace-period-undone-by-env": (
        ["--set-json", 'extraEnv=[{"name": "ANOMALY_SERVE_SHUTDOWN_TIMEOUT_S", "value": "60"}]'],
        "terminationGracePeriodSeconds (which must outlast it) from serve.shutdown_timeout_s, "
        "and they would no longer agree; set serve.shutdown_timeout_s instead",
    ),
    "metrics-scheme-undone-by-env": (
        ["--set-json", 'extraEnv=[{"name": "ANOMALY_SERVE_METRICS_CERTFILE", "value": "/t.crt"}]'],
        "extraEnv ANOMALY_SERVE_METRICS_CERTFILE would change serve.metrics_certfile",
    ),
    "keda-group-undone-by-env": (
        [
            "-f",
            str(FULL_VALUES),
            "--set-json",
            'extraEnv=[{"name": "ANOMALY_SERVE_GROUP_ID", "value": "other"}]',
        ],
        "would change serve.group_id in the service alone: the chart renders KEDA's",
    ),
    "keda-credentials-undone-by-env": (
        [
            "-f",
            str(FULL_VALUES),
            "--set-json",
            'extraEnv=[{"name": "ANOMALY_SERVE_KAFKA_SASL_MECHANISM", "value": "PLAIN"}]',
        ],
        "set serve.kafka.sasl_mechanism, or name a TriggerAuthentication of your own in "
        "autoscaling.authenticationRef instead",
    ),
    "keda-cannot-skip-the-host-name-check": (
        ["-f", str(FULL_VALUES), "--set", "serve.kafka.ssl_check_hostname=false"],
        "serve.kafka turns the brokers' host-name check off, which the chart cannot tell KEDA",
    ),
    "keda-password-undone-by-env": (
        [
            "-f",
            str(FULL_VALUES),
            "--set-json",
            'extraEnv=[{"name": "ANOMALY_SERVE_KAFKA_SASL_PLAIN_PASSWORD_FILE", "value": "/p"}]',
        ],
        "set kafka.secretOptions.sasl_plain_password (its key in kafka.existingSecret), or name",
    ),
    "model-set-twice": (["--set", "serve.model=/elsewhere"], "serve.model is set by the chart"),
    "init-without-image": (
        ["--set", "model.initContainer.enabled=true"],
        "model.initContainer.enabled needs model.initContainer.image",
    ),
    # values.schema.json: helm checks the values' types before rendering.
    "partitions-not-a-number": (
        ["--set", "kafka.inputPartitions=twelve"],
        "at '/kafka/inputPartitions': got string, want null or integer",
    ),
    "misspelt-value": (
        ["--set", "autoscalling.enabled=true"],
        "additional properties 'autoscalling'",
    ),
    # serve and alarms take the service's own types (deploy/helm/values_schema.py): a number
    # forced to text renders as "64" in config.toml, which the service refuses at start.
    # Helm drops a key set to null: the service's default topic would take the dead letters.
    "dead-letters-off-by-null": (
        ["--set", "serve.dlq_topic=null"],
        "serve.dlq_topic is null, which Helm drops from the values, and the service would write "
        'dead letters to its default topic (records-dlq): set serve.dlq_topic to "" to turn',
    ),
    "quorum-null": (["--set", "alarms.quorum=null"], "at '/alarms/quorum': got null"),
    "one-static-member-id-for-every-pod": (
        ["--set", "replicaCount=2", "--set", "serve.kafka.group_instance_id=scorer-a"],
        "serve.kafka.group_instance_id gives every pod of the Deployment the same static",
    ),
    "serve-number-as-text": (
        ["--set-string", "serve.max_batch_size=64"],
        "at '/serve/max_batch_size': got string, want integer",
    ),
    "alarm-level-as-text": (
        ["--set-string", "alarms.level=0.99"],
        "at '/alarms/level': got string, want number",
    ),
    "misspelt-serve-key": (
        ["--set", "serve.max_batch_sise=64"],
        "additional properties 'max_batch_sise' not allowed",
    ),
    "alarm-choice-unknown": (
        ["--set", "alarms.semantics=states"],
        "at '/alarms/semantics'",
    ),
    # Written between double quotes into the rules' and the dashboard's selectors.
    "job-with-a-quote": (
        ["--set-json", 'metrics.serviceMonitor.job="a\\"b"'],
        "at '/metrics/serviceMonitor/job'",
    ),
}


@pytest.mark.parametrize(("args", "message"), BROKEN_RULES.values(), ids=BROKEN_RULES.keys())
def test_render_fails_with_a_clear_message(tools: Tools, args: list[str], message: str) -> None:
    assert message in render_error(tools, *args)


def test_the_kafka_secret_is_mounted_as_files_named_by_file_options(tools: Tools) -> None:
    objects = render(tools, "-f", str(FULL_VALUES))
    values = full_values()
    mount = (
        values["kafka"]["secretMountPath"]
        if "secretMountPath" in values["kafka"]
        else "/run/secrets/kafka"
    )
    (volume,) = [v for v in pod_spec(objects)["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == values["kafka"]["existingSecret"]
    assert {i["key"] for i in volume["secret"]["items"]} == {"password", "ca.crt"}
    assert all(i["path"] == i["key"] for i in volume["secret"]["items"])
    (volume_mount,) = [m for m in scorer(objects)["volumeMounts"] if m["name"] == volume["name"]]
    assert volume_mount == {"name": volume["name"], "mountPath": mount, "readOnly": True}

    kafka = config_toml(objects)["serve"]["kafka"]
    assert kafka["sasl_plain_password_file"] == f"{mount}/password"
    assert kafka["ssl_cafile"] == f"{mount}/ca.crt"
    assert "sasl_plain_password" not in kafka
    # No secret reaches the environment either.
    assert not any("PASSWORD" in e["name"] for e in scorer(objects).get("env", []))


@pytest.mark.parametrize("values", [[], ["-f", str(FULL_VALUES)]], ids=["default", "full"])
def test_config_toml_is_a_configuration_the_service_accepts(
    tools: Tools, tmp_path: Path, values
) -> None:
    objects = render(tools, *values)
    path = tmp_path / "config.toml"
    path.write_text(objects["ConfigMap"]["data"]["config.toml"])
    config = Config.from_toml(path)  # unknown keys and bad values raise ConfigError
    kafka_options.check_options(dict(config.serve.kafka))  # names kafka-python's clients take
    container = scorer(objects)
    assert container["args"] == ["--config", "/etc/anomaly/config.toml"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/anomaly", True)
    if not values:
        # As `anomaly serve --config` resolves it (no secret files to read here).
        served = resolve_serve_config(path, environ={})
        assert served.model == "/models"
        assert served.bootstrap_servers == "kafka-bootstrap.kafka.svc:9092"
        return
    wanted = full_values()
    assert config.serve.model == "/models/store"
    assert config.serve.group_id == wanted["serve"]["group_id"]
    assert config.serve.max_batch_size == 512 and isinstance(config.serve.max_batch_size, int)
    assert config.alarms.semantics == "state" and config.alarms.level == 0.999
    assert config.serve.kafka["security_protocol"] == "SASL_SSL"


def test_toml_values_keep_their_types_and_text(tools: Tools, tmp_path: Path) -> None:
    tricky = {
        "quoted": 'say "hi" \\ back\\slash',
        "lines": "one\ntwo\ttab",
        "unicode": "žluťoučký kůň ✓ <&>",
        "whole": 30000,
        "large": 9007199254740993 // 1024,
        "fraction": 0.999,
        "tiny": 1e-05,
        "yes": True,
        "no": False,
        "names": ["a", 'b"c'],
    }
    values = tmp_path / "tricky.yaml"
    values.write_text(yaml.safe_dump({"serve": {"kafka": tricky}}))
    parsed = config_toml(render(tools, "-f", str(values)))["serve"]["kafka"]
    assert parsed == tricky
    assert all(type(parsed[k]) is type(v) for k, v in tricky.items())


def test_librdkafka_property_names_reach_the_service_as_quoted_keys(
    tools: Tools, tmp_path: Path
) -> None:
    # client = "confluent" takes librdkafka's own dotted names, which a bare TOML key would
    # split into nested tables.
    options = {"ssl.endpoint.identification.algorithm": "none"}
    values = tmp_path / "librdkafka.yaml"
    values.write_text(yaml.safe_dump({"serve": {"client": "confluent", "kafka": options}}))
    objects = render(tools, "-f", str(values))
    path = tmp_path / "config.toml"
    path.write_text(objects["ConfigMap"]["data"]["config.toml"])

    config = Config.from_toml(path)

    assert dict(config.serve.kafka) == options
    kafka_options.check_options(options, client=config.serve.client)
    assert "setting names are letters, digits and underscores (and dots" in render_error(
        tools, "--set-json", 'serve.kafka={"ssl endpoint": "none"}'
    )


def test_keda_scales_on_the_services_own_group_topic_and_brokers(tools: Tools) -> None:
    objects = render(tools, "-f", str(FULL_VALUES))
    values = full_values()
    spec = objects["ScaledObject"]["spec"]
    assert spec["scaleTargetRef"]["name"] == objects["Deployment"]["metadata"]["name"]
    assert "replicas" not in objects["Deployment"]["spec"]  # KEDA's to set
    assert spec["minReplicaCount"] == 2
    assert spec["maxReplicaCount"] == 12 <= values["kafka"]["inputPartitions"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    serve = config_toml(objects)["serve"]
    metadata = trigger["metadata"]
    assert metadata["bootstrapServers"] == serve["bootstrap_servers"]
    assert metadata["consumerGroup"] == serve["group_id"]
    assert metadata["topic"] == serve["input_topic"]
    assert metadata["offsetResetPolicy"] == "earliest"
    assert metadata["lagThreshold"] == "10000"
    assert (metadata["sasl"], metadata["tls"]) == ("scram_sha512", "enable")

    auth = objects["TriggerAuthentication"]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    secret = values["kafka"]["existingSecret"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {"password": (secret, "password"), "ca": (secret, "ca.crt")}
    (username,) = auth["spec"]["configMapTargetRef"]
    assert (username["parameter"], username["name"]) == (
        "username",
        objects["ConfigMap"]["metadata"]["name"],
    )
    assert objects["ConfigMap"]["data"][username["key"]] == serve["kafka"]["sasl_plain_username"]


def test_keda_caps_replicas_at_the_partitions_by_default(tools: Tools) -> None:
    objects = render(tools, "--set", "autoscaling.enabled=true", "--set", "kafka.inputPartitions=6")
    spec = objects["ScaledObject"]["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 6)
    metadata = spec["triggers"][0]["metadata"]
    assert (metadata["sasl"], metadata["tls"]) == ("none", "disable")
    assert "authenticationRef" not in spec["triggers"][0]
    assert "TriggerAuthentication" not in objects


def test_servicemonitor_scrapes_the_metrics_service_as_the_alert_rules_job(tools: Tools) -> None:
    objects = render(tools, "-f", str(FULL_VALUES))
    monitor = objects["ServiceMonitor"]
    service = objects["Service"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    (relabel,) = endpoint["relabelings"]
    assert (relabel["targetLabel"], relabel["replacement"]) == ("job", "anomaly-scorer")
    assert 'job="anomaly-scorer"' in ALERTS.read_text()
    # A ServiceMonitor replaces the annotations of annotation-based scraping.
    assert "prometheus.io/scrape" not in service["metadata"].get("annotations", {})
    assert render(tools)["Service"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_endpoint_relabelings_given_in_values_follow_the_job_relabel(tools: Tools) -> None:
    """values.yaml invites more endpoint fields; a second relabelings key made the object
    invalid (kubeconform: key already set), or, read leniently, dropped the job label."""
    extra = {"action": "replace", "targetLabel": "cluster", "replacement": "eu-1"}
    endpoint = {"relabelings": [extra], "metricRelabelings": [{"action": "drop", "regex": "x"}]}
    args = [
        "-f",
        str(FULL_VALUES),
        "--set-json",
        f"metrics.serviceMonitor.endpoint={json.dumps(endpoint)}",
    ]
    result = _template(tools, *args)
    assert result.returncode == 0, result.stderr
    assert "relabelings:" in result.stdout and result.stdout.count("  relabelings:") == 1

    (endpoint,) = render(tools, *args)["ServiceMonitor"]["spec"]["endpoints"]
    job = {"action": "replace", "targetLabel": "job", "replacement": "anomaly-scorer"}
    assert endpoint["relabelings"] == [job, extra]
    assert endpoint["metricRelabelings"] == [{"action": "drop", "regex": "x"}]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


def test_a_numeric_sasl_user_reaches_keda_as_its_digits(tools: Tools, tmp_path: Path) -> None:
    """Helm reads 20261204 in a values file as a float: KEDA got "2.0261204e+07"."""
    values = tmp_path / "user.yaml"
    values.write_text("serve:\n  kafka:\n    sasl_plain_username: 20261204\n")

    config = render(tools, "-f", str(FULL_VALUES), "-f", str(values))["ConfigMap"]["data"]

    assert config["kafka-sasl-username"] == "20261204"
    assert "sasl_plain_username = 20261204" in config["config.toml"]


# ---------------------------------------------------------------------------- rules, dashboard

JOB_SELECTOR = re.compile(r'job=~?"([^"]*)"')


def alert_groups(job: str = "anomaly-scorer") -> list[dict[str, Any]]:
    """The groups of deploy/prometheus/alerts.yml, selecting ``job``."""
    return yaml.safe_load(ALERTS.read_text().replace('job="anomaly-scorer"', f'job="{job}"'))[
        "groups"
    ]


def dashboard(job: str = "anomaly-scorer") -> dict[str, Any]:
    """deploy/grafana/anomaly-scorer.json, selecting ``job``."""
    return json.loads(DASHBOARD.read_text().replace(r"job=\"anomaly-scorer\"", f'job=\\"{job}\\"'))


def selected_jobs(rule: dict[str, Any]) -> set[str]:
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    return {job for expr in exprs for job in JOB_SELECTOR.findall(expr)}


def dashboard_jobs(node: Any) -> set[str]:
    """The jobs the dashboard's queries (any string in it) select."""
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return set().union(*(dashboard_jobs(v) for v in node))
    return set(JOB_SELECTOR.findall(node)) if isinstance(node, str) else set()


def dashboard_json(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (text,) = objects[DASHBOARD_CM]["data"].values()
    return json.loads(text)


def test_the_prometheus_rule_holds_the_groups_of_the_alert_rules_file(tools: Tools) -> None:
    objects = render(tools, "-f", str(FULL_VALUES))
    rule = objects["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == objects["Deployment"]["metadata"]["name"]
    # kube-prometheus-stack's ruleSelector.
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == {"groups": yaml.safe_load(ALERTS.read_text())["groups"]}
    # Prometheus's templates come out as written: Helm evaluates none of them.
    (rate_high,) = [
        r for r in rule["spec"]["groups"][0]["rules"] if r["alert"] == "AnomalyRateHigh"
    ]
    assert rate_high["annotations"]["summary"] == (
        "Anomaly rate {{ $value | humanizePercentage }} on {{ $labels.instance }} is over 5x its"
        " calibrated level"
    )
    # Every rule selects the job the ServiceMonitor gives the scraped series.
    (relabel,) = objects["ServiceMonitor"]["spec"]["endpoints"][0]["relabelings"]
    assert relabel["targetLabel"] == "job"
    assert selected_jobs(rule) == {relabel["replacement"]} == {"anomaly-scorer"}


def test_scaled_to_zero_the_rules_do_not_page_for_the_job_having_no_target(tools: Tools) -> None:
    """KEDA with minReplicas 0 leaves no target when there is no lag, as intended:
    AnomalyScorerDown's absent(up) paged for it. A pod that cannot be scraped still fires."""
    scaled = render(tools, "-f", str(FULL_VALUES), "--set", "autoscaling.minReplicas=0")
    groups = scaled["PrometheusRule"]["spec"]["groups"]
    expected = yaml.safe_load(ALERTS.read_text())["groups"]
    for group, kept in zip(groups, expected, strict=True):
        for rule, original in zip(group["rules"], kept["rules"], strict=True):
            if rule.get("alert") == "AnomalyScorerDown":
                kept_down = (
                    'up{job="anomaly-scorer"} == 0\nor\n'
                    'avg_over_time(up{job="anomaly-scorer"}[10m]) < 0.5\n'
                )
                assert original["expr"] == kept_down + 'or\nabsent(up{job="anomaly-scorer"})\n'
                assert rule["expr"] == kept_down
            else:
                assert rule == original


def test_the_dashboard_configmap_holds_the_dashboard_for_grafanas_sidecar(tools: Tools) -> None:
    objects = render(tools, "-f", str(FULL_VALUES))
    configmap = objects[DASHBOARD_CM]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Kafka"}
    assert "namespace" not in configmap["metadata"]  # the release's
    (name,) = configmap["data"]
    assert name.endswith(".json")  # the sidecar's file name
    assert dashboard_json(objects) == json.loads(DASHBOARD.read_text())
    assert dashboard_jobs(dashboard_json(objects)) == {"anomaly-scorer"}

    # Another sidecar label, Grafana's namespace, no folder.
    configmap = render(
        tools,
        "--set",
        "metrics.grafanaDashboard.enabled=true",
        "--set",
        "metrics.grafanaDashboard.label=dashboards",
        "--set",
        "metrics.grafanaDashboard.labelValue=7",  # a number: written as the string "7"
        "--set",
        "metrics.grafanaDashboard.labels.team=data",
        "--set",
        "metrics.grafanaDashboard.namespace=monitoring",
    )[DASHBOARD_CM]
    labels = configmap["metadata"]["labels"]
    assert (labels["dashboards"], labels["team"]) == ("7", "data")
    assert "grafana_dashboard" not in labels
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert "annotations" not in configmap["metadata"]


def test_rules_and_dashboard_select_the_job_the_servicemonitor_sets(tools: Tools) -> None:
    objects = render(tools, "-f", str(FULL_VALUES), "--set", "metrics.serviceMonitor.job=fraud")
    (relabel,) = objects["ServiceMonitor"]["spec"]["endpoints"][0]["relabelings"]
    assert relabel["replacement"] == "fraud"
    rule = objects["PrometheusRule"]
    assert rule["spec"]["groups"] == alert_groups("fraud") != alert_groups()
    assert selected_jobs(rule) == {"fraud"}
    assert dashboard_json(objects) == dashboard("fraud")
    assert dashboard_jobs(dashboard_json(objects)) == {"fraud"}


def test_rules_and_dashboard_are_off_by_default(tools: Tools) -> None:
    for args in ([], ["--set", "metrics.serviceMonitor.enabled=true"]):
        objects = render(tools, *args)
        assert "PrometheusRule" not in objects and DASHBOARD_CM not in objects, args
    objects = render(tools, "--set", "metrics.prometheusRule.enabled=true")
    assert "PrometheusRule" in objects and DASHBOARD_CM not in objects
    objects = render(tools, "--set", "metrics.grafanaDashboard.enabled=true")
    assert DASHBOARD_CM in objects and "PrometheusRule" not in objects


def test_helm_package_holds_the_linked_files_themselves(tools: Tools, tmp_path: Path) -> None:
    result = _run([tools.helm, "package", str(CHART), "--destination", str(tmp_path)])
    assert result.returncode == 0, result.stdout + result.stderr
    (archive,) = tmp_path.glob("anomaly-scorer-*.tgz")
    with tarfile.open(archive) as tar:
        for name, source in (("alerts.yml", ALERTS), ("anomaly-scorer.json", DASHBOARD)):
            member = tar.getmember(f"anomaly-scorer/files/{name}")
            assert member.isfile(), name  # the content, not a link
            assert tar.extractfile(member).read() == source.read_bytes()
    objects = render(tools, "-f", str(FULL_VALUES), chart=archive)
    assert objects["PrometheusRule"]["spec"]["groups"] == alert_groups()
    assert dashboard_json(objects) == dashboard()


def test_a_checkout_without_links_fails_the_render_saying_so(tools: Tools, tmp_path: Path) -> None:
    # With core.symlinks false, git writes a link as a file holding the path it points to.
    chart = tmp_path / "anomaly-scorer"
    shutil.copytree(CHART, chart, symlinks=True)
    for name in ("alerts.yml", "anomaly-scorer.json"):
        link = chart / "files" / name
        target = link.readlink()
        link.unlink()
        link.write_text(str(target))
    for value, message in (
        ("metrics.prometheusRule.enabled", "files/alerts.yml (a symbolic link to deploy/"),
        ("metrics.grafanaDashboard.enabled", "files/anomaly-scorer.json (a symbolic link to"),
    ):
        error = render_error(tools, "--set", f"{value}=true", chart=chart)
        assert message in error and "core.symlinks" in error, error


@pytest.mark.parametrize("values", [[], ["-f", str(FULL_VALUES)]], ids=["default", "full"])
def test_pods_run_as_non_root_on_a_read_only_root(tools: Tools, values) -> None:
    objects = render(tools, *values)
    spec = pod_spec(objects)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    # Service links would inject ANOMALY_SERVE_* variables for a Service of such a name.
    assert spec["enableServiceLinks"] is False
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
    resources = scorer(objects)["resources"]
    assert set(resources) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
        resources["limits"]
    )


def test_the_model_volume_is_mounted_read_only_and_filled_by_the_init_container(
    tools: Tools,
) -> None:
    objects = render(tools)
    (model,) = [v for v in pod_spec(objects)["volumes"] if v["name"] == "model"]
    assert model["persistentVolumeClaim"] == {"claimName": "anomaly-models", "readOnly": True}
    assert "initContainers" not in pod_spec(objects)

    objects = render(tools, "-f", str(FULL_VALUES))
    spec = pod_spec(objects)
    (model,) = [v for v in spec["volumes"] if v["name"] == "model"]
    assert model == {"name": "model", "emptyDir": {"sizeLimit": "4Gi"}}
    (scorer_mount,) = [m for m in scorer(objects)["volumeMounts"] if m["name"] == "model"]
    assert scorer_mount == {"name": "model", "mountPath": "/models", "readOnly": True}
    (init,) = spec["initContainers"]
    assert init["image"] == full_values()["model"]["initContainer"]["image"]
    assert init["command"][-1] == "/models/store" == config_toml(objects)["serve"]["model"]
    (init_mount,) = [m for m in init["volumeMounts"] if m["name"] == "model"]
    assert init_mount == {
        "name": "model",
        "mountPath": "/models",
    }  # writable for the init container

    # A claim the init container fills is not read-only as a volume; the scorer's mount is.
    objects = render(
        tools,
        "--set",
        "model.initContainer.enabled=true",
        "--set",
        "model.initContainer.image=busybox",
    )
    (model,) = [v for v in pod_spec(objects)["volumes"] if v["name"] == "model"]
    assert model["persistentVolumeClaim"]["readOnly"] is False


def test_pod_disruption_budget_selects_the_scorers_and_lets_unready_ones_go(tools: Tools) -> None:
    objects = render(tools)
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert (
        pdb["selector"]["matchLabels"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]
    )
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    pdb = render(
        tools,
        "--set",
        "podDisruptionBudget.maxUnavailable=null",
        "--set",
        "podDisruptionBudget.minAvailable=50%",
    )["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] == "50%" and "maxUnavailable" not in pdb


def test_a_changed_configuration_rolls_the_pods(tools: Tools) -> None:
    def checksum(*args: str) -> str:
        return render(tools, *args)["Deployment"]["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]

    assert checksum() == checksum()
    assert checksum() != checksum("--set", "serve.max_batch_size=64")


def test_the_kustomize_configuration_is_one_the_service_accepts(tmp_path: Path) -> None:
    configmap = yaml.safe_load((K8S_MANIFESTS / "configmap.yaml").read_text())
    path = tmp_path / "config.toml"
    path.write_text(configmap["data"]["config.toml"])
    Config.from_toml(path)
    deployment = yaml.safe_load((K8S_MANIFESTS / "deployment.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    shutdown = tomllib.loads(configmap["data"]["config.toml"])["serve"]["shutdown_timeout_s"]
    assert spec["terminationGracePeriodSeconds"] > math.ceil(shutdown)
    assert spec["enableServiceLinks"] is False
    assert re.fullmatch(r"anomaly-gan:\S+", spec["containers"][0]["image"])


#: [serve] keys the shipped configurations set to other values than the service's defaults,
#: on purpose (a cluster's address; per-key state sized to the pod's memory limit).
DELIBERATE_SERVE_VALUES = {"bootstrap_servers", "max_entities", "restore_records"}


@pytest.mark.parametrize(
    "serve",
    [
        pytest.param(
            lambda: yaml.safe_load((CHART / "values.yaml").read_text())["serve"], id="helm-values"
        ),
        pytest.param(
            lambda: tomllib.loads(
                yaml.safe_load((K8S_MANIFESTS / "configmap.yaml").read_text())["data"][
                    "config.toml"
                ]
            )["serve"],
            id="kustomize-configmap",
        ),
    ],
)
def test_the_shipped_serve_settings_are_the_services_defaults_but_where_chosen(serve) -> None:
    """Each [serve] value the chart's values.yaml and the kustomize ConfigMap spell out is the
    service's own default, but those set on purpose: a default changed in ServeConfig would
    otherwise stay at its old value in every deployment made from them."""
    defaults = Config().serve
    written = {key: value for key, value in serve().items() if key not in DELIBERATE_SERVE_VALUES}

    assert written == {key: getattr(defaults, key) for key in written}
