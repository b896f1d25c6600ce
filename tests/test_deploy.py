"""The monitoring files in deploy/ query only metrics the service really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import serving.metrics  # noqa: F401 - registers the gateway's metrics
import streams.metrics  # noqa: F401 - registers the event log's and outbox's metrics
import trainer.metrics  # noqa: F401 - registers the trainer's metrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
METRIC = re.compile(r"\b(hhh_[a-z0-9_]+)")


def exported_names() -> set[str]:
    """Every sample name the process registry can expose (histograms: _bucket, _sum, _count)."""
    names = set()
    for collector in REGISTRY.collect():
        names |= {sample.name for sample in collector.samples}
        names.add(collector.name)
        if collector.type == "histogram":
            names |= {f"{collector.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        if collector.type == "counter":
            names.add(f"{collector.name}_total")
    return names


def queried(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC.findall(expr)}


def test_alert_rules_use_exported_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert expressions and all(rule.get("annotations", {}).get("summary")
                               for group in rules["groups"] for rule in group["rules"])
    assert queried(expressions) - exported_names() == set()


def test_dashboard_uses_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "hhh-serving.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(expressions) >= 10
    assert queried(expressions) - exported_names() == set()


def test_prometheus_scrapes_gateway_and_trainer_and_loads_the_rules() -> None:
    from trainer.config import TrainerSettings

    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"hhh-gateway", "hhh-trainer"}
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    (trainer_target,) = jobs["hhh-trainer"]["static_configs"][0]["targets"]
    assert trainer_target.endswith(f":{TrainerSettings().metrics_port}")


def test_dashboard_and_alerts_watch_adapter_swaps() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "hhh-serving.json").read_text())
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    watched = queried([target["expr"] for panel in dashboard["panels"] for target in panel["targets"]])
    alerted = queried([rule["expr"] for group in rules["groups"] for rule in group["rules"]])
    assert {"hhh_adapter_live_version", "hhh_adapter_swap_seconds_bucket", "hhh_adapter_swaps_total",
            "hhh_adapter_refused_total", "hhh_adapters_loaded"} <= watched
    assert {"hhh_adapter_refused_total", "hhh_adapter_swap_seconds_bucket"} <= alerted


def test_dashboard_and_alerts_watch_the_trainer() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "hhh-serving.json").read_text())
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    watched = queried([target["expr"] for panel in dashboard["panels"] for target in panel["targets"]])
    alerted = queried([rule["expr"] for group in rules["groups"] for rule in group["rules"]])
    assert {"hhh_trainer_iteration_stat", "hhh_trainer_verdicts_total", "hhh_reward_refreshes_total",
            "hhh_trainer_last_round_timestamp_seconds"} <= watched
    assert {"hhh_trainer_last_round_timestamp_seconds", "hhh_trainer_verdicts_total"} <= alerted
