"""`hhh up` as a user runs it (`make run`): the gateway (`hhh serve`) with a supervised engine
that survives a crash, and the supervised trainer daemon beside them."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from common.cpus import available_cpus, default_plan, format_cpu_list
from common.processes import free_port
from tests.hhh.processes import CHAT, child_running, ready, running_hhh, wait_for

pytestmark = pytest.mark.vllm

TRAINER_METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("up")


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, home: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`hhh up` on the tiny model; its trainer starts a round every second."""
    with running_hhh("up", tiny_model_dir, home, {
        "HHH_GATEWAY_HEALTH_INTERVAL_S": "0.3", "HHH_TRAINER_ROUND_INTERVAL_S": "1",
        "HHH_TRAINER_METRICS_PORT": str(TRAINER_METRICS_PORT),
    }) as served:
        yield served


def descendants(process: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(process.pid).children(recursive=True)


def test_the_embedded_engine_refuses_calls_without_the_gateways_key(
    served: tuple[str, subprocess.Popen],
) -> None:
    url, process = served
    engine = child_running(process, "vllm.entrypoints.openai.api_server")
    cmdline = engine.cmdline()
    engine_url = f"http://127.0.0.1:{cmdline[cmdline.index('--port') + 1]}"
    assert "--api-key" not in cmdline  # the key is in the environment, not on the command line
    for path, body in (("/v1/models", None), ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/tmp"})):
        response = httpx.request("GET" if body is None else "POST", f"{engine_url}{path}", json=body, timeout=30)
        assert response.status_code == 401, (path, response.text)
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 200  # the gateway has it


def test_a_crashed_engine_means_503_with_the_reason_then_recovery(served: tuple[str, subprocess.Popen]) -> None:
    url, process = served
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
    engine = child_running(process, "vllm.entrypoints.openai.api_server")
    engine.send_signal(signal.SIGKILL)

    def refused() -> bool:
        return httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 503

    wait_for(refused, 30, "the gateway to notice the engine is gone")
    response = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)
    assert response.status_code == 503
    assert "no model engine is available (retry shortly)" in response.json()["detail"]
    assert httpx.get(f"{url}/readyz").status_code == 503
    assert httpx.get(f"{url}/healthz").status_code == 200  # the process itself is fine

    wait_for(lambda: ready(url), 300, "the supervisor to restart the engine")
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 200


def test_the_trainer_daemon_runs_rounds_beside_the_gateway_and_is_restarted(
    served: tuple[str, subprocess.Popen], home: Path
) -> None:
    _, process = served
    trainer_log = home / "trainer.log"

    def rounds_logged() -> int:
        return trainer_log.read_text().count("no reward model yet: no policy round") if trainer_log.exists() else 0

    wait_for(lambda: rounds_logged() >= 1, 120, "the trainer's first round (no feedback yet)")
    scrape = httpx.get(f"http://127.0.0.1:{TRAINER_METRICS_PORT}/metrics").text
    assert "hhh_trainer_rounds_total" in scrape and "hhh_trainer_last_round_timestamp_seconds" in scrape
    trainer = child_running(process, "-m hhh train")
    trainer.send_signal(signal.SIGKILL)
    trainer.wait(10)

    wait_for(lambda: any(c.pid != trainer.pid for c in psutil.Process(process.pid).children()
                         if "-m hhh train" in " ".join(c.cmdline())), 30, "the trainer to be restarted")
    seen = rounds_logged()
    wait_for(lambda: rounds_logged() > seen, 120, "a round of the restarted trainer")
    assert "the trainer exited; restarting it (restart 1)" in (home / "up.log").read_text()


def test_engine_and_trainer_run_on_disjoint_cpu_sets_also_after_their_restarts(
    served: tuple[str, subprocess.Popen],
) -> None:
    """(After the tests above restarted both.) The engine's processes on the engine's share of
    the plan, its OpenMP threads bound there; the trainer on its share, told its gateway."""
    url, process = served
    plan = default_plan(available_cpus())
    engine = child_running(process, "vllm.entrypoints.openai.api_server")
    assert engine.environ()["VLLM_CPU_OMP_THREADS_BIND"] == format_cpu_list(plan.engine)
    for part in (engine, *engine.children(recursive=True)):
        assert set(part.cpu_affinity()) == plan.engine, part.cmdline()
    trainer = child_running(process, "-m hhh train")
    assert set(trainer.cpu_affinity()) == plan.trainer
    assert trainer.environ()["HHH_TRAINER_CPUS"] == format_cpu_list(plan.trainer)
    assert trainer.environ()["HHH_TRAINER_YIELD_TO"] == url
    assert httpx.get(f"{url}/metrics").text.count("hhh_chat_requests_in_flight 0.0") == 1


def test_sigterm_stops_hhh_up_and_every_child_it_started(served: tuple[str, subprocess.Popen]) -> None:
    """What systemd, Docker and Kubernetes send: the gateway, the engine (with its engine-core
    processes) and the trainer all end, and nothing is left running. (Runs last: it stops the
    module's service.)"""
    _, process = served
    children = descendants(process)
    assert any("vllm" in " ".join(c.cmdline()) for c in children)
    assert any("-m hhh train" in " ".join(c.cmdline()) for c in children)
    process.send_signal(signal.SIGTERM)
    process.wait(90)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
