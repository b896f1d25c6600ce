"""Every dashboard panel and alert expression runs without error on a real Prometheus (Debian's
`prometheus` package) that scrapes the process registry with all of hhh's metrics; promtool
accepts the scrape configurations and the rule file.

A query of a metric nobody exports still succeeds in Prometheus (empty result), so the names
are checked separately (test_monitoring.py); this catches what only Prometheus can: syntax,
functions, types (`rate` of a gauge range), label matchers, and rules that fail to evaluate.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
import yaml
from prometheus_client import make_wsgi_app

from common.processes import free_port
from tests.deploy.monitoring import (
    DEPLOY,
    NOT_INSTALLED,
    PROMETHEUS,
    alert_expressions,
    alert_rules,
    dashboard_expressions,
    dashboards,
)

PROMTOOL = shutil.which("promtool")
READY_TIMEOUT_S = 60.0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass


@dataclass
class RunningPrometheus:
    url: str
    log_path: Path

    def query(self, expr: str) -> dict:
        return httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])


def _poll(condition, what: str, prometheus: RunningPrometheus) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus: {what} within {READY_TIMEOUT_S:.0f} s; its log:\n"
                        f"{prometheus.log_tail()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def metrics_endpoint() -> Iterator[str]:
    """The process registry (gateway, event log, trainer metrics) over HTTP on a free port."""
    server = make_server("127.0.0.1", 0, make_wsgi_app(), handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def prometheus(
    metrics_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPrometheus]:
    if PROMETHEUS is None:
        pytest.skip(NOT_INSTALLED)
    home = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "alerts.yml")],
        "scrape_configs": [{"job_name": "hhh", "static_configs": [{"targets": [metrics_endpoint]}]}],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    running = RunningPrometheus(url=f"http://127.0.0.1:{port}", log_path=home / "prometheus.log")
    with open(running.log_path, "wb") as log:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={home / 'prometheus.yml'}",
             f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"Prometheus exited with {process.returncode}:\n{running.log_tail()}")
            try:
                return httpx.get(f"{running.url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _poll(ready, "not ready", running)
        _poll(lambda: [r["value"][1] for r in running.query('up{job="hhh"}')["data"]["result"]] == ["1"],
              "no successful scrape of the metrics endpoint", running)
        yield running
    finally:
        process.terminate()
        process.wait(30)


def test_prometheus_scraped_hhh_metrics(prometheus: RunningPrometheus) -> None:
    result = prometheus.query("hhh_trainer_rounds_total")["data"]["result"]
    assert [sample["metric"]["__name__"] for sample in result] == ["hhh_trainer_rounds_total"]


PANELS = [
    pytest.param(expr, id=f"{uid}:{panel['title']}:{target['refId']}")
    for uid, board in dashboards().items()
    for panel in board["panels"]
    for target in panel["targets"]
    for expr in [target["expr"]]
]


@pytest.mark.parametrize("expr", PANELS)
def test_dashboard_panel_query_runs(prometheus: RunningPrometheus, expr: str) -> None:
    answer = prometheus.query(expr)
    assert answer["status"] == "success", answer


@pytest.mark.parametrize("expr", alert_expressions(), ids=[rule["alert"] for rule in alert_rules()])
def test_alert_expression_runs(prometheus: RunningPrometheus, expr: str) -> None:
    answer = prometheus.query(expr)
    assert answer["status"] == "success", answer


def test_a_broken_expression_is_caught(prometheus: RunningPrometheus) -> None:
    assert prometheus.query("sum by (le) (rate(hhh_engine_up[5m])")["status"] == "error"


def test_every_alert_rule_loads_and_evaluates(prometheus: RunningPrometheus) -> None:
    def rules() -> list[dict]:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    _poll(lambda: rules() and all(not r["lastEvaluation"].startswith("0001") for r in rules()),
          "rules not evaluated", prometheus)
    evaluated = rules()
    assert sorted(r["name"] for r in evaluated) == sorted(rule["alert"] for rule in alert_rules())
    assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-cluster.yml"])
def test_promtool_accepts_the_scrape_configuration_and_its_rules(config: str) -> None:
    if PROMTOOL is None:
        pytest.skip(NOT_INSTALLED)
    result = subprocess.run([PROMTOOL, "check", "config", str(DEPLOY / config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_have_queries_to_run() -> None:
    assert len(PANELS) >= 30 and all(dashboard_expressions(board) for board in dashboards().values())
