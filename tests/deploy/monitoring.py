"""What the monitoring files in deploy/ query, and what the service exports (for the tests here)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import serving.metrics  # noqa: F401 - registers the gateway's metrics
import streams.metrics  # noqa: F401 - registers the event log's and outbox's metrics
import trainer.metrics  # noqa: F401 - registers the trainer's metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROMETHEUS = shutil.which("prometheus")
NOT_INSTALLED = "Debian's prometheus package is not installed (apt-get install prometheus)"
METRIC = re.compile(r"\b(hhh_[a-z0-9_]+)")

_SAMPLE_SUFFIXES = {
    # How prometheus_client names the series of each metric type in its exposition (the
    # collector's name has the `_total` of a counter stripped; `_created` is the creation time).
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported_names() -> set[str]:
    """Every series name the process registry exposes, as Prometheus stores it.

    A counter created as ``Counter("hhh_trainer_rounds", ...)`` is scraped as
    ``hhh_trainer_rounds_total``; a query of ``hhh_trainer_rounds`` would match nothing.
    """
    return {
        collector.name + suffix
        for collector in REGISTRY.collect()
        for suffix in _SAMPLE_SUFFIXES[collector.type]
    }


def queried(expressions: list[str]) -> set[str]:
    """The hhh metric names a list of PromQL expressions reads."""
    return {name for expr in expressions for name in METRIC.findall(expr)}


def alert_rules() -> list[dict]:
    document = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_expressions() -> list[str]:
    return [rule["expr"] for rule in alert_rules()]


def dashboards() -> dict[str, dict]:
    """Every provisioned dashboard, by uid."""
    boards = [json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))]
    return {board["uid"]: board for board in boards}


def dashboard_expressions(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
