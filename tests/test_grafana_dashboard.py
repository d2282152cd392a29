"""The Grafana dashboard (``deploy/grafana/anomaly-scorer.json``) is about the service's real
metrics: each panel queries Prometheus, names only metrics the service exports, and every
``anomaly_*`` metric is on a panel. Its queries run against a live service in
``test_alerting_e2e``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from anomaly.stream.metrics import ServiceMetrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "anomaly-scorer.json"
#: Suffixes Prometheus adds to a histogram's or an info's series.
SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_info")


def dashboard_panels() -> list[dict]:
    """The dashboard's panels that query (rows only group them)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [panel for panel in panels if panel["type"] != "row"]


def panel_queries(instance: str = ".*", rate_interval: str = "1m") -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query, with the dashboard's variables filled in."""
    variables = {"$instance": instance, "$__rate_interval": rate_interval}
    queries = []
    for panel in dashboard_panels():
        for target in panel["targets"]:
            query = target["expr"]
            for variable, value in variables.items():
                query = query.replace(variable, value)
            queries.append((panel["title"], query))
    return queries


def _exported_metrics() -> set[str]:
    metrics = ServiceMetrics(
        model_version="1", formulation="fanogan", threshold=1.0, target_fpr=0.01, max_batch_size=8
    )
    return {family.name for family in metrics.registry.collect()}


def _queried_metrics() -> set[str]:
    names = set()
    for _, query in panel_queries():
        for name in re.findall(r"\banomaly_[a-z_]+", query):
            for suffix in SERIES_SUFFIXES:
                if name.endswith(suffix) and name != "anomaly_model_info":
                    name = name.removesuffix(suffix)
            names.add(name.removesuffix("_total"))
    return names


def test_every_panel_queries_prometheus_with_a_unique_id_and_a_place():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        assert panel["description"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


def test_the_panels_cover_every_metric_the_service_exports_and_no_other():
    exported = {
        "anomaly_model_info" if name == "anomaly_model" else name.removesuffix("_total")
        for name in _exported_metrics()
    }
    assert _queried_metrics() == exported
