"""Child processes that a parent starts, watches and stops for good.

`ChildProcess` runs one command in a process group of its own, its output appended to a log
file. `stop` signals the whole group — SIGTERM, then SIGKILL after a timeout — and returns
once no process of the group is left, so grandchildren (vLLM's engine core, say) never outlive
it and its port and memory are free again. On Linux the child is also asked to receive SIGTERM
when its parent dies (``PR_SET_PDEATHSIG``), so that a parent killed without a chance to stop
it (SIGKILL, a crash) leaves no orphan behind. Given ``cpus``, the child is pinned to them before
it runs its command (``sched_setaffinity``), and so is every process it starts: the whole group
stays on its CPU set (`common.cpus`). The vLLM engine (`serving.engine.EngineProcess`),
the trainer daemon that `hhh up` supervises and the test broker are all `ChildProcess`es.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ChildProcess:
    """One subprocess (and its descendants) in its own process group, logging to ``log_path``."""

    def __init__(self, log_path: Path | None) -> None:
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the process has been started and has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id, which is also its process group's id; None when stopped."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited; None while it runs or was never started."""
        return self._process.poll() if self._process is not None else None

    def spawn(self, command: Sequence[str], env: Mapping[str, str] | None = None,
              cpus: frozenset[int] | None = None) -> None:
        """Start ``command`` in a new session (its own process group); returns at once.

        ``cpus``: the CPUs it and its descendants may run on (None: this process's).
        """
        options = {"stdin": subprocess.DEVNULL, "stderr": subprocess.STDOUT, "start_new_session": True,
                   "env": None if env is None else dict(env), "preexec_fn": partial(_prepare_child, cpus)}
        if self.log_path is None:
            self._process = subprocess.Popen(list(command), stdout=subprocess.DEVNULL, **options)
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(list(command), stdout=log, **options)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the group, SIGKILL it after ``timeout`` s; return once the group is gone."""
        if self._process is None:
            return
        process, self._process = self._process, None
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process.pid, signal.SIGKILL)  # also children that outlive their parent
        process.wait()
        _wait_until_group_gone(process.pid, timeout)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log ('' if there is none yet)."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(deque(log, maxlen=lines))
        except FileNotFoundError:
            return ""


def wait_for_port(port: int, child: ChildProcess, timeout_s: float, host: str = "127.0.0.1") -> None:
    """Poll until ``host:port`` accepts connections; raise at once if ``child`` exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not child.running:
            raise RuntimeError(f"the process exited with {child.returncode} before listening on "
                               f"{host}:{port}:\n{child.log_tail(20)}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listened on {host}:{port} within {timeout_s:.0f} s") from None
            time.sleep(0.02)


_PR_SET_PDEATHSIG = 1


def _prepare_child(cpus: frozenset[int] | None) -> None:
    """In the forked child, before exec: SIGTERM me when the thread that forked me exits; pin
    me (and so what I start) to ``cpus``."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_until_group_gone(pgid: int, timeout: float) -> None:
    """Wait (bounded) until no process of the group is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
