"""`hhh serve` with ``HHH_GATEWAY_WORKERS=2`` in front of the session vLLM engine: two gateway
worker processes behind one port, each with its own replica id, hot-swap controller and
outbox, supervised by the `hhh serve` process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from common.errors import UserError
from common.processes import free_port
from hhh.workers import hold_port, reuseport_socket, usable_cores, worker_outbox_path, worker_replica
from serving.adapters.publish import publish_adapter
from serving.adapters.store import AdapterStore
from serving.engine import EngineProcess
from streams.codec import FEEDBACK
from streams.sqlite_log import SqliteEventLog
from tests.hhh.processes import CHAT, child_running, running_hhh, wait_for
from trainer.demo_model.adapters import make_lora_adapter

REPLICA = "workers-test"
WORKERS = {f"{REPLICA}-w0", f"{REPLICA}-w1"}


# -- without an engine ------------------------------------------------------------------------


def test_more_workers_than_cores_are_refused_at_start_up_naming_both_numbers(tmp_path: Path) -> None:
    cores = usable_cores()
    result = subprocess.run(
        [sys.executable, "-m", "hhh", "serve"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "HHH_HOME": str(tmp_path), "HHH_GATEWAY_WORKERS": str(cores + 1)},
    )
    assert result.returncode != 0
    assert f"HHH_GATEWAY_WORKERS={cores + 1} is more than the {cores} cores this process may run on" \
        in result.stderr
    assert f"Set HHH_GATEWAY_WORKERS to at most {cores}" in result.stderr
    assert not (tmp_path / "engine.log").exists()  # refused before anything started


def test_a_port_in_use_is_refused_with_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            hold_port("127.0.0.1", port)


def test_a_port_another_hhh_serve_holds_for_its_workers_is_refused() -> None:
    port = free_port()
    with hold_port("127.0.0.1", port):
        with reuseport_socket("127.0.0.1", port) as worker:  # its workers may join
            worker.listen()
            with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
                hold_port("127.0.0.1", port)  # a second `hhh serve` may not


def test_each_worker_has_its_own_replica_id_and_outbox_file() -> None:
    assert worker_replica("gw", 1) == "gw-w1"
    assert worker_replica("x" * 64, 3) == "x" * 61 + "-w3"  # still a valid replica id
    assert worker_outbox_path(Path("/s/outbox.db"), 0) == Path("/s/outbox-w0.db")


# -- two workers in front of the session engine -----------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


@pytest.fixture(scope="module")
def served(
    vllm_engine: EngineProcess, tiny_model_dir: Path, home: Path,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`hhh serve` with two workers on the session engine; the engine is left as found."""
    if usable_cores() < 2:
        pytest.skip(f"two gateway workers need two cores; this process may use {usable_cores()}")
    with running_hhh("serve", tiny_model_dir, home, {
        "HHH_GATEWAY_WORKERS": "2", "HHH_GATEWAY_ENGINE_URLS": f'["{vllm_engine.url}"]',
        "HHH_GATEWAY_HEALTH_INTERVAL_S": "0.3", "HHH_ADAPTERS_REPLICA_ID": REPLICA,
        "HHH_ADAPTERS_POLL_TIMEOUT_S": "0.2",
    }) as served:
        yield served
    for model in httpx.get(f"{vllm_engine.url}/v1/models").json()["data"]:
        if model["parent"] is not None:
            httpx.post(f"{vllm_engine.url}/v1/unload_lora_adapter", json={"lora_name": model["id"]})


def readyz_of_each_worker(url: str, attempts: int = 200) -> dict[str, dict]:
    """The /readyz body of every worker seen in up to ``attempts`` fresh connections (the kernel
    picks a worker per connection), stopping once both answered."""
    bodies: dict[str, dict] = {}
    for _ in range(attempts):
        response = httpx.get(f"{url}/readyz", timeout=10)  # a new connection each time
        if response.status_code == 200:
            bodies[response.json()["replica"]] = response.json()
        if set(bodies) == WORKERS:
            break
    return bodies


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample of ``/metrics`` (0 when it is absent)."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        sample = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if sample and wanted <= set(sample.group(1).split(",")):
            return float(sample.group(2))
    return 0.0


@pytest.mark.vllm
def test_requests_over_the_one_port_reach_both_workers(served: tuple[str, subprocess.Popen]) -> None:
    url, _ = served
    assert set(readyz_of_each_worker(url)) == WORKERS


@pytest.mark.vllm
def test_feedback_through_both_workers_is_all_stored(
    served: tuple[str, subprocess.Popen], home: Path,
) -> None:
    url, _ = served
    completion_ids = []
    for _ in range(4):  # a new connection each: both workers sign completion ids
        response = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "n": 3}, timeout=120)
        assert response.status_code == 200, response.text
        completion_ids += [choice["completion_id"] for choice in response.json()["choices"]]
    accepted = set()
    for index in range(40):  # a retry of each is one event, whichever worker it reaches
        body = {"completion_id": completion_ids[index % len(completion_ids)],
                "vote": "up" if index % 2 else "down"}
        key = str(uuid.uuid4())
        for _ in range(2):
            response = httpx.post(f"{url}/v1/feedback", json=body, headers={"Idempotency-Key": key},
                                  timeout=30)
            assert response.status_code == 200, response.text
            accepted.add(response.json()["event_id"])
    assert len(accepted) == 40

    def stored() -> set[str]:
        with SqliteEventLog(home / "events.db") as event_log, event_log.consumer(None, [FEEDBACK]) as reader:
            return {record.event.event_id for record in reader.poll(10_000, 0.5)}

    wait_for(lambda: stored() >= accepted, 30, "every accepted feedback event in the event log")
    assert stored() == accepted  # nothing lost, nothing twice
    for worker in ("gateway-w0", "gateway-w1"):  # both took part (completions, feedback)
        assert metric(url, "hhh_outbox_delivered_total", outbox=worker) > 0, worker


@pytest.mark.vllm
def test_metrics_on_the_one_port_sum_over_the_workers(served: tuple[str, subprocess.Popen]) -> None:
    url, _ = served
    labels = {"route": "/readyz", "method": "GET", "status": "200"}
    before = metric(url, "hhh_http_requests_total", **labels)
    seen = readyz_of_each_worker(url, attempts=200)
    requests = 20
    for _ in range(requests):
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    counted = metric(url, "hhh_http_requests_total", **labels) - before
    assert set(seen) == WORKERS
    assert counted >= requests + len(seen)  # whichever worker answered the scrapes: all of them
    assert metric(url, "hhh_engine_up") == 1.0  # a gauge: the lowest of the workers', not a sum


@pytest.mark.vllm
def test_a_published_adapter_becomes_live_on_both_workers(
    served: tuple[str, subprocess.Popen], home: Path, tiny_model_dir: Path, vllm_engine: EngineProcess,
) -> None:
    """Both controllers load their own copy into the one engine at the same time."""
    url, _ = served
    adapter = make_lora_adapter(tiny_model_dir, home / "adapter-a", seed=1)
    with SqliteEventLog(home / "events.db") as event_log:
        publish_adapter(AdapterStore(home / "adapters"), event_log, adapter, "global",
                        base_model=tiny_model_dir)

    def both_live() -> bool:
        bodies = readyz_of_each_worker(url, attempts=50)
        return set(bodies) == WORKERS and all(
            body["adapters"]["last_event"] == "global@1" for body in bodies.values()
        )

    wait_for(both_live, 180, "global@1 live on both workers")
    engine_models = {m["id"] for m in httpx.get(f"{vllm_engine.url}/v1/models").json()["data"]}
    assert {f"hhh-{worker}-global-v1" for worker in WORKERS} <= engine_models
    assert all(b["adapters"]["last_error"] is None for b in readyz_of_each_worker(url).values())
    assert metric(url, "hhh_adapter_live_version", scope="global") == 1.0
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=120).status_code == 200


@pytest.mark.vllm
def test_a_killed_worker_is_restarted_while_the_other_keeps_serving(
    served: tuple[str, subprocess.Popen], home: Path,
) -> None:
    url, process = served
    killed = child_running(process, "hhh.gateway_worker 0")
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    for _ in range(10):  # new connections: the kernel no longer offers them to the dead worker
        response = httpx.get(f"{url}/readyz", timeout=10)
        if response.status_code == 200:
            assert response.json()["replica"] == f"{REPLICA}-w1"
        else:  # the restarted worker, up but not ready yet
            assert response.status_code == 503, response.text
    wait_for(lambda: set(readyz_of_each_worker(url, attempts=20)) == WORKERS, 120, "worker 0 to be back")
    assert child_running(process, "hhh.gateway_worker 0").pid != killed.pid
    assert "the gateway worker 0 exited; restarting it (restart 1)" in (home / "serve.log").read_text()


@pytest.mark.vllm
def test_sigterm_stops_hhh_serve_and_every_worker(served: tuple[str, subprocess.Popen], home: Path) -> None:
    """(Runs last: it stops the module's service.)"""
    _, process = served
    workers = [child for child in psutil.Process(process.pid).children(recursive=True)
               if "hhh.gateway_worker" in " ".join(child.cmdline())]
    assert len(workers) == 2
    process.send_signal(signal.SIGTERM)
    process.wait(45)
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    assert not (home / "metrics").exists() or not any((home / "metrics").iterdir())
