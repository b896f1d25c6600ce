"""`ProcessSupervisor`: keeps a child process of `hhh serve` running (the engine, the trainer
daemon, the gateway workers)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from serving.engine import EngineHealth

log = logging.getLogger(__name__)


class Supervised(Protocol):
    """A child process a supervisor keeps running (`EngineProcess`, `TrainerProcess`, `GatewayWorker`)."""

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def log_tail(self, lines: int = 40) -> str: ...


class ProcessSupervisor:
    """Keeps one child process running: starts it, and restarts it when it exits — or, with a
    ``probe``, when it stays unhealthy for ``restart_unhealthy_after_s`` although it runs.

    ``probe`` says whether the child answered and why it is unhealthy (`EngineHealth`). Being
    unhealthy counts only once the child has answered since its last start, so a child that is
    still starting (vLLM: a minute or two, its port closed meanwhile) is not restarted for that —
    unless it has not answered at all ``start_timeout_s`` after starting (hung while loading).
    A restart stops the child's whole process group first (`ChildProcess.stop`): for vLLM, its
    API server and what is left of its engine core.
    """

    def __init__(
        self, child: Supervised, name: str, *, check_interval_s: float = 1.0,
        probe: Callable[[], EngineHealth] | None = None, restart_unhealthy_after_s: float = 15.0,
        start_timeout_s: float = 900.0,
    ) -> None:
        self.child = child
        self.name = name
        self.restarts = 0
        self._check_interval_s = check_interval_s
        self._probe = probe
        self._restart_unhealthy_after_s = restart_unhealthy_after_s
        self._start_timeout_s = start_timeout_s
        self._started_at = time.monotonic()
        self._answered_since_start = False
        self._unhealthy_since: float | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{name}-supervisor", daemon=True)

    def start(self) -> None:
        """Start the child (without waiting for it) and watch it from a thread."""
        self._started_at = time.monotonic()
        self.child.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, then stop the child."""
        self._stopping.set()
        self._thread.join(10)
        self.child.stop()

    def _watch(self) -> None:
        while not self._stopping.wait(self._check_interval_s):
            problem = self._restart_reason()
            if problem is None:
                continue
            self.restarts += 1
            log.error("the %s %s; restarting it (restart %d). Its last output:\n%s",
                      self.name, problem, self.restarts, self.child.log_tail(10))
            self._answered_since_start, self._unhealthy_since = False, None
            try:
                self.child.stop()  # the old process group first: reaps an exited one, ends a live one
                self._started_at = time.monotonic()
                self.child.start()
            except Exception:  # noqa: BLE001 - keep supervising; the next check tries again
                log.exception("restarting the %s failed", self.name)

    def _restart_reason(self) -> str | None:
        """Why the child must be restarted now, or None."""
        if not self.child.running:
            return "exited"
        if self._probe is None:
            return None
        health = self._probe()
        self._answered_since_start |= health.answered
        if health.problem is None:
            self._unhealthy_since = None
            return None
        now = time.monotonic()
        if not self._answered_since_start:
            if now - self._started_at < self._start_timeout_s:
                return None  # still starting
            return f"has not answered {now - self._started_at:.0f} s after starting ({health.problem})"
        problem = health.problem
        if self._unhealthy_since is None:
            self._unhealthy_since = now
            log.warning("the %s is unhealthy although its process runs (%s); restarting it unless it "
                        "recovers within %.0f s", self.name, problem, self._restart_unhealthy_after_s)
        if now - self._unhealthy_since < self._restart_unhealthy_after_s:
            return None
        return f"stayed unhealthy for {now - self._unhealthy_since:.0f} s although its process runs ({problem})"
