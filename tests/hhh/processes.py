"""`hhh up` / `hhh serve` started as a user starts them, for the tests of this folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from common.processes import free_port
from tests.fixtures.waiting import wait_for

CHAT = {"model": "hhh", "messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 4}




def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def child_running(process: subprocess.Popen, command: str) -> psutil.Process:
    (child,) = [child for child in psutil.Process(process.pid).children()
                if command in " ".join(child.cmdline())]
    return child


@contextmanager
def running_hhh(
    command: str, model_dir: Path, home: Path, env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``hhh <command> --model <model_dir>`` on a free port with ``HHH_HOME=home`` and ``env``,
    once ready: (its URL, its process). Its stderr goes to ``<home>/<command>.log``. Stopped
    after with SIGTERM, as systemd, Docker and Kubernetes stop it (SIGKILL if it hangs)."""
    port = free_port()
    log = home / f"{command}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "hhh", command, "--model", str(model_dir)],
        env={**os.environ, "HHH_HOME": str(home), "HHH_GATEWAY_PORT": str(port), **env},
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(url) or process.poll() is not None, 300, f"hhh {command} to be ready")
        assert process.poll() is None, log.read_text()[-3000:]
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
