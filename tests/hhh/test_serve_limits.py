"""`hhh serve` runs its HTTP server with the limits (``HHH_LIMITS_*``), whatever the engines.

The engines are someone else's here (an address nobody answers on), so no engine starts: what
is checked is the server `hhh serve` builds, not serving.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from common.processes import free_port


def test_hhh_serve_closes_slow_connections_and_refuses_floods(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "HHH_HOME": str(tmp_path), "HHH_GATEWAY_PORT": str(port),
           "HHH_GATEWAY_ENGINE_URLS": f'["http://127.0.0.1:{free_port()}"]',
           "HHH_LIMITS_HEADER_TIMEOUT_S": "0.5", "HHH_LIMITS_RATE_PER_S": "0.001",
           "HHH_LIMITS_BURST": "2"}
    process = subprocess.Popen([sys.executable, "-m", "hhh", "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "hhh serve did not start"
            time.sleep(0.1)

        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.settimeout(30)
            assert idle.recv(1024) == b"", "an idle connection is closed at the header deadline"
        statuses = [httpx.get(f"{url}/v1/models").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
    finally:
        process.terminate()
        process.wait(30)
