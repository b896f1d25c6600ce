"""The monitoring files in deploy/ query only metrics the service really exports."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.monitoring import (
    DEPLOY,
    alert_expressions,
    alert_rules,
    dashboard_expressions,
    dashboards,
    exported_names,
    queried,
)


def test_a_counter_is_exported_only_with_its_total_suffix() -> None:
    names = exported_names()
    assert "hhh_http_requests_total" in names and "hhh_http_requests" not in names
    assert "hhh_trainer_rounds_total" in names and "hhh_trainer_rounds" not in names
    assert "hhh_chat_latency_seconds_bucket" in names and "hhh_chat_latency_seconds" not in names
    assert "hhh_engine_up" in names


@pytest.mark.parametrize("wrong", ["hhh_trainer_rounds", "hhh_feedback", "hhh_chat_latency_seconds"])
def test_a_query_of_a_name_prometheus_never_sees_is_caught(wrong: str) -> None:
    assert queried([f"sum(rate({wrong}[5m]))"]) - exported_names() == {wrong}


def test_alert_rules_use_exported_metrics() -> None:
    rules = alert_rules()
    assert len(rules) >= 10 and all(rule.get("annotations", {}).get("summary") for rule in rules)
    assert queried(alert_expressions()) - exported_names() == set()


def test_every_dashboard_uses_exported_metrics() -> None:
    for uid, dashboard in dashboards().items():
        expressions = dashboard_expressions(dashboard)
        assert len(expressions) >= 8, uid
        assert queried(expressions) - exported_names() == set(), uid


def test_dashboards_are_split_by_audience_with_unique_ids() -> None:
    boards = dashboards()
    assert set(boards) == {"hhh-service", "hhh-learning", "hhh-adapters"}
    for uid, dashboard in boards.items():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), uid
        assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"]), uid


def _watched(uid: str) -> set[str]:
    return queried(dashboard_expressions(dashboards()[uid]))


def test_service_dashboard_shows_traffic_latency_errors_engines_and_outbox() -> None:
    assert {"hhh_http_requests_total", "hhh_chat_time_to_first_token_seconds_bucket",
            "hhh_chat_latency_seconds_bucket", "hhh_rejected_requests_total", "hhh_engine_up",
            "hhh_outbox_depth", "hhh_outbox_delivery_failures_total",
            "hhh_events_dead_lettered_total"} <= _watched("hhh-service")


def test_learning_dashboard_shows_feedback_approval_rounds_verdicts_kl_and_reward() -> None:
    dashboard = dashboards()["hhh-learning"]
    assert {"hhh_feedback_total", "hhh_trainer_rounds_total", "hhh_trainer_verdicts_total",
            "hhh_trainer_iteration_stat", "hhh_reward_refreshes_total",
            "hhh_trainer_last_round_timestamp_seconds", "hhh_trainer_labeler_agreement",
            "hhh_trainer_gate_stat"} <= _watched("hhh-learning")
    expressions = dashboard_expressions(dashboard)
    assert any('vote="up"' in e and "by (adapter)" in e for e in expressions), "approval per adapter"
    assert any("kl" in e and "reward_mean" in e for e in expressions)
    assert any("krippendorff_alpha" in e for e in expressions), "labeler agreement"
    assert any("reward_gain_lower" in e and "kl_to_base" in e for e in expressions), "gate per round"


def test_adapters_dashboard_and_alerts_watch_swaps_and_refusals() -> None:
    assert {"hhh_adapter_live_version", "hhh_adapter_swap_seconds_bucket", "hhh_adapter_swaps_total",
            "hhh_adapter_refused_total", "hhh_adapters_loaded"} <= _watched("hhh-adapters")
    assert {"hhh_adapter_refused_total", "hhh_adapter_swap_seconds_bucket"} <= queried(alert_expressions())


def test_alerts_watch_the_trainer() -> None:
    assert {"hhh_trainer_last_round_timestamp_seconds", "hhh_trainer_verdicts_total"} <= queried(
        alert_expressions()
    )


def test_prometheus_scrapes_gateway_and_trainer_and_loads_the_rules() -> None:
    from trainer.config import TrainerSettings

    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"hhh-gateway", "hhh-trainer"}
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    (trainer_target,) = jobs["hhh-trainer"]["static_configs"][0]["targets"]
    assert trainer_target.endswith(f":{TrainerSettings().metrics_port}")


def test_the_operator_guide_explains_every_alert() -> None:
    guide = (DEPLOY / "README.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`") for line in guide.splitlines() if line.startswith("| `Hhh")
    }
    assert rows == {rule["alert"] for rule in alert_rules()}


def test_an_alert_fires_on_events_that_could_not_be_logged() -> None:
    """A completion served but not logged (too large, unencodable) never reaches training."""
    (rule,) = [rule for rule in alert_rules() if "hhh_events_rejected_total" in rule["expr"]]
    assert "topic" in rule["expr"] and "reason" in rule["expr"]
