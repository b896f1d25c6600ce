"""Gateway workers: several gateway processes behind one port (``HHH_GATEWAY_WORKERS`` > 1).

`hhh serve` (and `hhh up`) keep the engine and the trainer as before and start N workers
(`hhh.gateway_worker`), each a whole gateway: its own replica id ``<replica>-w<i>``, so its
own hot-swap controller (consumer group ``gateway-<replica>-w<i>``: every worker sees every
adapter event and loads its own copy of each version into the engines, so one worker's
retirement never unloads what another still serves; N controllers loading "the same" version
at once load N distinct names, and the null adapter's folder they share is written once,
atomically), and its own outbox file
``<outbox stem>-w<i><suffix>`` with its own drainer (an outbox takes one drainer). The signing
key and the API keys are the parent's, so a completion id signed by one worker verifies on
every other. A worker that exits is restarted (`ProcessSupervisor`) on the same index: same
replica id, same outbox, whose leftovers it delivers. SIGTERM/SIGINT stop every worker at once
(SIGTERM: uvicorn lets in-flight requests finish; SIGKILL after 30 s), and a worker gets
SIGTERM if the parent dies without that chance (`ChildProcess`: PDEATHSIG).

One port: every worker binds it with ``SO_REUSEPORT`` and the kernel spreads new connections
over their accept queues by a hash of the connection's addresses. One listening socket shared
by all (uvicorn's ``fd``) balances worse: asyncio accepts every queued connection on each
wake-up, so the worker that wakes first takes a whole burst of keep-alive connections, and
they stay on it. Measured (2 uvicorn processes, bursts of 32 keep-alive connections, six
bursts, on this project's 2-core machine under load): reuseport split them 14/18 at worst,
16/16 at best; the shared socket 8/24, 10/22 and once 0/32. The price of reuseport:
connections still queued at a worker that dies are reset (the client retries). The parent
holds the port bound, not listening (so it gets no connections), from start to end: a port in
use is refused at start-up, and no other program can take it while a worker restarts.

Metrics: the workers write prometheus_client's multiprocess files into a folder of this start
(``$HHH_HOME/metrics/<port>``, emptied at start), so ``/metrics`` on the one port reports the
whole gateway whichever worker answers (`serving.metrics`). Limits: the per-caller rate and
concurrency limits are kept per worker (a caller whose connections reach several workers gets
up to N times them); dividing them by N would refuse a single-connection caller at 1/N.

More workers than the cores this process may run on is refused: a worker is CPU-bound, so one
more than the cores only adds context switches.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from common.errors import UserError
from common.files import PRIVATE_DIR_MODE
from common.processes import ChildProcess
from serving.adapters.config import AdapterSettings
from serving.config import GatewaySettings
from streams.config import EventLogSettings, private_hhh_home

from hhh.supervisor import ProcessSupervisor

log = logging.getLogger(__name__)

METRICS_FOLDER_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's multiprocess mode: where each worker writes its values."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_worker_count(workers: int) -> None:
    """Refuse more gateway workers than usable cores, naming both numbers."""
    cores = usable_cores()
    if workers > cores:
        raise UserError(
            f"HHH_GATEWAY_WORKERS={workers} is more than the {cores} cores this process may run on "
            f"(os.cpu_count() {os.cpu_count()}, CPU affinity {cores}): a gateway worker keeps a core "
            f"busy, so extra workers only slow the others down. Set HHH_GATEWAY_WORKERS to at most "
            f"{cores} (and leave cores to the engine and the trainer where they run here too)"
        )


def worker_replica(replica: str, index: int) -> str:
    """Worker ``index``'s replica id: ``<replica>-w<index>``, within the 64 characters allowed."""
    suffix = f"-w{index}"
    return replica[: 64 - len(suffix)] + suffix


def worker_outbox_path(outbox_path: Path, index: int) -> Path:
    """Worker ``index``'s outbox file: ``outbox.db`` -> ``outbox-w<index>.db``."""
    return outbox_path.with_name(f"{outbox_path.stem}-w{index}{outbox_path.suffix}")


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (not listening yet)."""
    return _bind(host, port, reuse_port=True)


def hold_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` for the workers to share, refusing a port anyone holds already.

    A bind without ``SO_REUSEPORT`` first: it fails where a socket listens on the port, also a
    reuseport one (a worker of another `hhh serve`), which a reuseport bind would join.
    """
    _bind(host, port, reuse_port=False).close()
    return _bind(host, port, reuse_port=True)


def _bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to ``host:port``, or a `UserError` naming the address and the reason.

    ``SO_REUSEADDR`` always: a restart is not refused for the old run's connections in TIME_WAIT.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror} (is another program, or "
                        "another `hhh serve`, using the port? HHH_GATEWAY_PORT picks another)") from None
    return sock


def fresh_metrics_folder(port: int) -> Path:
    """``$HHH_HOME/metrics/<port>``, emptied: the multiprocess metrics of this start only."""
    folder = private_hhh_home() / "metrics" / str(port)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
    return folder


class GatewayWorker(ChildProcess):
    """`python -m hhh.gateway_worker <index>` with the environment that makes it worker ``index``."""

    def __init__(self, index: int, environment: dict[str, str], log_path: Path, metrics_folder: Path) -> None:
        super().__init__(log_path)
        self.index = index
        self.environment = environment
        self.metrics_folder = metrics_folder

    def start(self) -> None:
        """Launch the worker; returns at once."""
        self.spawn([sys.executable, "-m", "hhh.gateway_worker", str(self.index)], self.environment)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop it (SIGTERM, SIGKILL after ``timeout`` s); its live gauges leave ``/metrics``."""
        pid = self.pid
        super().stop(timeout)
        if pid is not None:
            mark_process_dead(pid, str(self.metrics_folder))


def worker_environment(
    settings: GatewaySettings, adapter_settings: AdapterSettings, events: EventLogSettings,
    index: int, metrics_folder: Path,
) -> dict[str, str]:
    """This process's environment plus what makes a gateway worker ``index`` of it: the engines
    `hhh serve` resolved (and their key), its replica id and outbox, the metrics folder."""
    environment = dict(os.environ)
    environment.update({
        "HHH_GATEWAY_ENGINE_URLS": json.dumps(settings.engine_urls),
        "HHH_ADAPTERS_REPLICA_ID": worker_replica(adapter_settings.replica(settings.port), index),
        "HHH_ADAPTERS_MAX_LORA_RANK": str(adapter_settings.max_lora_rank),
        "HHH_EVENTS_OUTBOX_PATH": str(worker_outbox_path(events.outbox_path, index)),
        METRICS_FOLDER_VARIABLE: str(metrics_folder),
    })
    if settings.engine_api_key is not None:
        environment["HHH_GATEWAY_ENGINE_API_KEY"] = settings.engine_api_key.get_secret_value()
    if adapter_settings.base_model_dir is not None:
        environment["HHH_ADAPTERS_BASE_MODEL_DIR"] = str(adapter_settings.base_model_dir)
    return environment


def run_workers(
    settings: GatewaySettings, adapter_settings: AdapterSettings, events: EventLogSettings
) -> None:
    """Serve ``settings.workers`` supervised gateway workers on one port until SIGTERM/SIGINT."""
    held_port = hold_port(settings.host, settings.port)
    settings.signing_secret()  # generated here once, so that every worker reads the same key
    metrics_folder = fresh_metrics_folder(settings.port)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    supervisors = []
    try:
        for index in range(settings.workers):
            worker = GatewayWorker(
                index, worker_environment(settings, adapter_settings, events, index, metrics_folder),
                private_hhh_home() / f"gateway-w{index}.log", metrics_folder,
            )
            supervisors.append(ProcessSupervisor(worker, f"gateway worker {index}"))
            supervisors[-1].start()
        log.info("%d gateway workers on http://%s:%d (logs: %s)", settings.workers, settings.host,
                 settings.port, private_hhh_home() / "gateway-w*.log")
        stop.wait()
        log.info("stopping the gateway workers")
    finally:
        with ThreadPoolExecutor(max(1, len(supervisors))) as stopping:  # all at once: bounded time
            list(stopping.map(ProcessSupervisor.stop, supervisors))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        held_port.close()
        shutil.rmtree(metrics_folder, ignore_errors=True)
