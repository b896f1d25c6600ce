"""The deployed topology, as processes on this machine: what `deploy/` runs, minus the containers.

One Kafka-protocol broker (the session's Tansu), one vLLM engine (the session's), two gateway
replicas (`hhh serve` with the engine elsewhere, each its own ``HHH_HOME`` and replica id, one
adapter store and one signing key between them, as the Kubernetes StatefulSet has them), the
trainer daemon (`hhh train` with its metrics port) and a real Prometheus (Debian's package)
scraping all three with the shipped alert rules. Then, as an operator would check a new
deployment: publish an adapter and see both replicas serve it, rate answers on both, and read
the thumbs-up ratio per adapter — and every dashboard panel — through Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from common.processes import free_port
from serving.engine import EngineProcess
from tests.deploy.monitoring import DEPLOY, NOT_INSTALLED, PROMETHEUS, dashboards
from tests.fixtures.tansu import TansuBroker
from trainer.demo_model.adapters import make_lora_adapter

SIGNING_KEY = "topology-signing-key-" + "0" * 32
API_KEYS = {"sk-ann": {"user": "ann"}, "sk-ben": {"user": "ben"}}
READY_TIMEOUT_S = 180.0
SCRAPE_INTERVAL = "1s"


def _wait_for(condition: Callable[[], object], timeout_s: float, what: str,
              log_tail: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{log_tail()}")
        time.sleep(0.25)


@dataclass
class Service:
    """One process of the topology: its name, its URL (if it serves HTTP), and its log."""

    name: str
    process: subprocess.Popen
    log_path: Path
    url: str = ""

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name} ({self.log_path}):\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # as Kubernetes stops a pod
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class Topology:
    gateways: list[Service]
    trainer: Service
    prometheus: Service
    client_env: dict[str, str]
    """What an operator's `hhh` command needs to reach this deployment (event log, adapter store)."""
    services: list[Service] = field(default_factory=list)

    def query(self, expr: str) -> dict:
        return httpx.get(f"{self.prometheus.url}/api/v1/query", params={"query": expr}, timeout=10).json()

    def samples(self, expr: str, by: str = "instance") -> dict[str, float]:
        """``expr``'s instant vector, as {the value of its label ``by`` (or ''): value}."""
        answer = self.query(expr)
        assert answer["status"] == "success", answer
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in answer["data"]["result"]}

    def log_tails(self) -> str:
        return "\n".join(service.log_tail() for service in self.services)


def _spawn(name: str, command: list[str], env: dict[str, str], log_path: Path, url: str = "") -> Service:
    process = subprocess.Popen(command, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                               stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    return Service(name, process, log_path, url)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _prometheus_config(gateways: list[str], trainer: str) -> dict:
    """deploy/prometheus.yml, its targets replaced by this topology's and scraped every second."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL}
    config["rule_files"] = [str(DEPLOY / rule_file) for rule_file in config["rule_files"]]
    targets = {"hhh-gateway": gateways, "hhh-trainer": [trainer]}
    assert sorted(job["job_name"] for job in config["scrape_configs"]) == sorted(targets)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return config


@pytest.fixture(scope="module")
def topology(
    kafka_broker: TansuBroker, vllm_engine: EngineProcess, tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Topology]:
    if PROMETHEUS is None:
        pytest.skip(NOT_INSTALLED)
    root = tmp_path_factory.mktemp("topology")
    event_log_env = {  # topics of its own on the session's broker; short group joins (Tansu)
        "HHH_EVENTS_BACKEND": "kafka", "HHH_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "HHH_KAFKA_TOPIC_PREFIX": f"topology{os.getpid()}.", "HHH_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "HHH_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
    }
    # The volume the trainer and the gateways share (ReadWriteMany in deploy/k8s/storage.yaml).
    adapter_env = {"HHH_ADAPTERS_STORE_ROOT": str(root / "adapters"),
                   "HHH_ADAPTERS_BASE_MODEL_DIR": str(tiny_model_dir)}
    services: list[Service] = []
    try:
        gateway_ports = [free_port(), free_port()]
        for replica, port in enumerate(gateway_ports):
            home = root / f"gateway-{replica}"
            home.mkdir()
            services.append(_spawn(f"gateway-{replica}", [sys.executable, "-m", "hhh", "serve"], {
                **event_log_env, **adapter_env, "HHH_HOME": str(home),
                "HHH_ADAPTERS_REPLICA_ID": f"gateway-{replica}", "HHH_GATEWAY_PORT": str(port),
                "HHH_GATEWAY_ENGINE_URLS": json.dumps([vllm_engine.url]),
                "HHH_GATEWAY_AUTH": "true", "HHH_GATEWAY_API_KEYS": json.dumps(API_KEYS),
                "HHH_GATEWAY_SIGNING_KEY": SIGNING_KEY, "HHH_GATEWAY_HEALTH_INTERVAL_S": "0.5",
                "HHH_ADAPTERS_POLL_TIMEOUT_S": "0.5", "HHH_LIMITS_RATE_PER_S": "0",
            }, home / "gateway.log", url=f"http://127.0.0.1:{port}"))
        trainer_home = root / "trainer"
        trainer_home.mkdir()
        trainer_port = free_port()
        services.append(_spawn("trainer", [sys.executable, "-m", "hhh", "train"], {
            **event_log_env, **adapter_env, "HHH_HOME": str(trainer_home),
            "HHH_TRAINER_BASE_MODEL": str(tiny_model_dir), "HHH_TRAINER_METRICS_PORT": str(trainer_port),
            "HHH_TRAINER_ROUND_INTERVAL_S": "1", "HHH_TRAINER_INGEST_IDLE_S": "0.5",
        }, trainer_home / "trainer.log", url=f"http://127.0.0.1:{trainer_port}"))
        prometheus_home = root / "prometheus"
        prometheus_home.mkdir()
        prometheus_port = free_port()
        config = _prometheus_config([f"127.0.0.1:{port}" for port in gateway_ports], f"127.0.0.1:{trainer_port}")
        (prometheus_home / "prometheus.yml").write_text(yaml.safe_dump(config))
        services.append(_spawn("prometheus", [
            PROMETHEUS, f"--config.file={prometheus_home / 'prometheus.yml'}",
            f"--storage.tsdb.path={prometheus_home / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ], {}, prometheus_home / "prometheus.log", url=f"http://127.0.0.1:{prometheus_port}"))
        *gateways, trainer, prometheus = services
        topology = Topology(gateways, trainer, prometheus, {**event_log_env, **adapter_env}, services)

        def all_up() -> bool:
            exited = [s.name for s in services if s.process.poll() is not None]
            assert not exited, f"{exited} exited\n{topology.log_tails()}"
            return (all(_answers(f"{g.url}/readyz") for g in gateways) and _answers(f"{trainer.url}/metrics")
                    and _answers(f"{prometheus.url}/-/ready"))

        _wait_for(all_up, READY_TIMEOUT_S, "the gateways, the trainer and Prometheus", topology.log_tails)
        _wait_for(lambda: set(topology.samples("up").values()) == {1.0} and len(topology.samples("up")) == 3,
                  60, "Prometheus to scrape both gateways and the trainer", topology.log_tails)
        yield topology
    finally:
        for service in reversed(services):
            service.stop()


def _chat(gateway: Service, key: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "hhh", "messages": [{"role": "user", "content": "Hello"}],
                            "max_tokens": 4}, timeout=120)


def _thumbs(gateway: Service, key: str, completion_id: str, vote: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/feedback", headers={"authorization": f"Bearer {key}"},
                      json={"completion_id": completion_id, "vote": vote}, timeout=30)


@pytest.fixture(scope="module")
def published(topology: Topology, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A global adapter published with the operator's command, once both replicas serve it:
    its label (``global@1``)."""
    operator_home = tmp_path_factory.mktemp("operator")
    source = make_lora_adapter(tiny_model_dir, operator_home / "adapter", seed=3)
    result = subprocess.run(
        [sys.executable, "-m", "hhh", "adapters", "publish", str(source), "--scope", "global"],
        env={**os.environ, **topology.client_env, "HHH_HOME": str(operator_home)},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    def served_everywhere() -> bool:
        return all(_chat(g, "sk-ann").headers.get("x-hhh-adapter") == "global@1" for g in topology.gateways)

    _wait_for(served_everywhere, 120, "both replicas to serve global@1", topology.log_tails)
    return "global@1"


def test_both_replicas_serve_a_published_adapter(topology: Topology, published: str) -> None:
    for gateway in topology.gateways:
        response = _chat(gateway, "sk-ben")
        assert response.status_code == 200, response.text
        assert response.headers["x-hhh-adapter"] == published
    _wait_for(lambda: list(topology.samples('hhh_adapter_live_version{scope="global"}').values()) == [1.0, 1.0],
              30, "Prometheus to see global version 1 live on both replicas", topology.log_tails)


def test_thumbs_on_both_replicas_give_the_approval_per_adapter_in_prometheus(
    topology: Topology, published: str
) -> None:
    """Votes cast on both replicas add up in Prometheus, per adapter version, and all of them
    reach the trainer over Kafka.

    The ratio is taken of the counters themselves: the dashboard's ``rate(...[1h])`` of a
    series that Prometheus first scraped at 1 leaves that first vote out, which is right for a
    rate and wrong for a count of four.
    """
    votes = {"sk-ann": ["up", "up", "down"], "sk-ben": ["up"]}
    accepted = 0
    for replica, (key, key_votes) in enumerate(votes.items()):
        for vote in key_votes:
            # Chat on one replica, vote on the other: completion ids are valid on every replica.
            chat = _chat(topology.gateways[replica], key)
            assert chat.headers["x-hhh-adapter"] == published
            (completion_id,) = chat.headers["x-hhh-completion-ids"].split(",")
            response = _thumbs(topology.gateways[1 - replica], key, completion_id, vote)
            assert response.status_code == 200, response.text
            accepted += 1
    ratio = ('sum by (adapter) (hhh_feedback_total{kind="thumbs", vote="up"})'
             ' / sum by (adapter) (hhh_feedback_total{kind="thumbs"})')
    _wait_for(lambda: topology.samples(ratio, by="adapter").get(published) == pytest.approx(0.75), 30,
              f"the thumbs-up ratio of {published} to be 3/4 in Prometheus", topology.log_tails)
    stored = 'sum(hhh_events_consumed_total{job="hhh-trainer", topic="feedback"})'
    _wait_for(lambda: topology.samples(stored).get("") == accepted, 60,
              f"the trainer to have consumed the {accepted} votes from both replicas", topology.log_tails)


PANELS = [
    pytest.param(target["expr"], id=f"{uid}:{panel['title']}:{target['refId']}")
    for uid, board in dashboards().items()
    for panel in board["panels"]
    for target in panel["targets"]
]


@pytest.mark.parametrize("expr", PANELS)
def test_every_dashboard_panel_query_runs_on_the_deployment(
    topology: Topology, published: str, expr: str
) -> None:
    answer = topology.query(expr)
    assert answer["status"] == "success", answer


def test_the_shipped_alert_rules_evaluate_on_the_deployment(topology: Topology) -> None:
    def rules() -> list[dict]:
        groups = httpx.get(f"{topology.prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    _wait_for(lambda: rules() and all(not r["lastEvaluation"].startswith("0001") for r in rules()),
              30, "the alert rules to be evaluated", topology.log_tails)
    assert [(r["name"], r.get("lastError")) for r in rules() if r["health"] != "ok"] == []
    assert [r["name"] for r in rules() if r["state"] == "firing"] == [], "a healthy deployment raises no alert"
