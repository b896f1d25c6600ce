"""`hhh serve` as a user runs it: gateway plus a supervised engine that survives a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from streams.tansu import free_port

pytestmark = pytest.mark.vllm

CHAT = {"model": "hhh", "messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 4}


def wait_for(predicate, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def served(tiny_model_dir: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    env = {**os.environ, "HHH_HOME": str(tmp_path), "HHH_GATEWAY_PORT": str(port),
           "HHH_GATEWAY_HEALTH_INTERVAL_S": "0.3"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from hhh.cli import main; main()", "serve", "--model", str(tiny_model_dir)],
        env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(url) or process.poll() is not None, 300, "hhh serve to be ready")
        assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        yield url, process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_a_crashed_engine_means_503_with_the_reason_then_recovery(served: tuple[str, subprocess.Popen]) -> None:
    url, process = served
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
    (engine,) = [child for child in psutil.Process(process.pid).children()
                 if "vllm.entrypoints.openai.api_server" in " ".join(child.cmdline())]
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
