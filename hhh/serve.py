"""`hhh serve`: the gateway and, on one machine, the vLLM engine it supervises.

With ``HHH_GATEWAY_ENGINE_URLS`` empty (the default) the gateway starts one vLLM server on the
demo model (built on first use), closed by an API key that only the gateway holds (generated
per start unless ``HHH_GATEWAY_ENGINE_API_KEY`` is set), watches it, and restarts it whenever it
exits, or when its process runs but it fails its health check (``GET /health``; vLLM answers
503 once its engine core died) for ``HHH_GATEWAY_ENGINE_RESTART_AFTER_S``; meanwhile the
gateway answers 503 with the reason, and ``/readyz`` reports not ready. With engine URLs
configured, the engines are someone else's to run (several machines, GPUs). Either way the
gateway follows the ``adapters`` topic of the configured event log and hot-swaps adapters
(``serving/adapters/controller.py``; settings ``HHH_ADAPTERS_*``).

`hhh up` is the same with the trainer daemon as a third supervised process: the whole service
on one machine, where thumbs and rankings turn into new adapter versions that the gateway then
serves. There the engine and the trainer run on disjoint CPU sets (`hhh.colocation`), and the
trainer is told this gateway's URL to yield to (``HHH_TRAINER_YIELD_*``).

This module is the composition root's: it joins serving (gateway, engine), the trainer (its
daemon as a child process) and the demo set-up, which is why it lives in ``hhh/``.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import uvicorn
from pydantic import SecretStr

from common.cpus import CpuSet, format_cpu_list
from common.processes import ChildProcess
from hhh.colocation import cpu_plan, local_gateway_url

from serving.adapters.config import AdapterSettings
from serving.app import build_gateway, create_app
from serving.config import GatewaySettings
from serving.engine import EngineConfig, EngineHealth, EngineProcess
from serving.limits.server import server_options
from streams.backends import open_event_log
from streams.config import EventLogSettings, hhh_home
from streams.outbox import Outbox, OutboxDrainer
from trainer.config import TrainerSettings

log = logging.getLogger(__name__)


class Supervised(Protocol):
    """A child process a supervisor keeps running (`EngineProcess`, `TrainerProcess`)."""

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def log_tail(self, lines: int = 40) -> str: ...


class TrainerProcess(ChildProcess):
    """`python -m hhh train` with this process's environment, output appended to ``log_path``.

    ``base_model``: the served model's folder, passed as ``HHH_TRAINER_BASE_MODEL`` unless that
    is set already, so that adapters are trained on the weights the engine serves. ``cpus``: the
    trainer's CPU set (`hhh.colocation`), passed as ``HHH_TRAINER_CPUS``, which the daemon pins
    itself and its torch threads to. ``gateway_url``: passed as ``HHH_TRAINER_YIELD_TO`` unless
    that is set, so that ``HHH_TRAINER_YIELD_ABOVE_CHATS`` alone makes it yield to this gateway.
    The daemon is safe to kill at any point (`trainer.daemon`), so `stop` is a plain SIGTERM,
    then SIGKILL.
    """

    def __init__(self, log_path: Path, base_model: Path | None = None, *, cpus: CpuSet | None = None,
                 gateway_url: str | None = None) -> None:
        super().__init__(log_path)
        self.base_model = base_model
        self.cpus = cpus
        self.gateway_url = gateway_url

    def environment(self) -> dict[str, str]:
        """The daemon's environment: this process's, plus what the trainer is told."""
        environment = dict(os.environ)
        if self.base_model is not None:
            environment.setdefault("HHH_TRAINER_BASE_MODEL", str(self.base_model))
        if self.cpus is not None:
            environment["HHH_TRAINER_CPUS"] = format_cpu_list(self.cpus)
        if self.gateway_url is not None:
            environment.setdefault("HHH_TRAINER_YIELD_TO", self.gateway_url)
        return environment

    def start(self) -> None:
        """Launch the daemon; returns at once."""
        self.spawn([sys.executable, "-m", "hhh", "train"], self.environment(), cpus=self.cpus)


class ProcessSupervisor:
    """Keeps one child process running: starts it, and restarts it when it exits — or, with a
    ``probe``, when it stays unhealthy for ``restart_unhealthy_after_s`` although it runs.

    ``probe`` says whether the child answered and why it is unhealthy (`EngineHealth`). Being
    unhealthy counts only once the child has answered since its last start, so a child that is
    still starting (vLLM: a minute or two, its port closed meanwhile) is not restarted for that.
    A restart stops the child's whole process group first (`ChildProcess.stop`): for vLLM, its
    API server and what is left of its engine core.
    """

    def __init__(
        self, child: Supervised, name: str, *, check_interval_s: float = 1.0,
        probe: Callable[[], EngineHealth] | None = None, restart_unhealthy_after_s: float = 15.0,
    ) -> None:
        self.child = child
        self.name = name
        self.restarts = 0
        self._check_interval_s = check_interval_s
        self._probe = probe
        self._restart_unhealthy_after_s = restart_unhealthy_after_s
        self._answered_since_start = False
        self._unhealthy_since: float | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{name}-supervisor", daemon=True)

    def start(self) -> None:
        """Start the child (without waiting for it) and watch it from a thread."""
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
        if not self._answered_since_start:
            return None  # still starting
        problem = health.problem
        now = time.monotonic()
        if self._unhealthy_since is None:
            self._unhealthy_since = now
            log.warning("the %s is unhealthy although its process runs (%s); restarting it unless it "
                        "recovers within %.0f s", self.name, problem, self._restart_unhealthy_after_s)
        if now - self._unhealthy_since < self._restart_unhealthy_after_s:
            return None
        return f"stayed unhealthy for {now - self._unhealthy_since:.0f} s although its process runs ({problem})"


def serve(model_dir: Path | None = None, *, with_trainer: bool = False) -> None:
    """Run the gateway until interrupted (and the engine, unless engine URLs are configured).

    ``with_trainer``: also run the trainer daemon (`hhh train`) as a supervised child process,
    on ``model_dir`` (the served model) where it is known.
    """
    settings = GatewaySettings()
    if settings.auth:
        settings.key_table()  # a bad API keys file is refused now, before any engine starts
    events = EventLogSettings()
    adapter_settings = AdapterSettings()
    supervisors: list[ProcessSupervisor] = []
    cpus = cpu_plan(settings, TrainerSettings(), with_trainer=with_trainer)
    outbox = Outbox(events.outbox_path, name="gateway")
    try:
        if not settings.engine_urls:
            if model_dir is None:
                from trainer.demo_model.build import build_demo_model

                model_dir = build_demo_model("demo", home=hhh_home())
            # A fresh key per start: only this gateway may call the engine it supervises.
            engine_key = settings.engine_api_key or SecretStr(secrets.token_urlsafe(32))
            engine = EngineProcess(EngineConfig(model_dir=model_dir, log_path=hhh_home() / "engine.log",
                                                api_key=engine_key, cpus=cpus.engine))
            supervisors.append(ProcessSupervisor(
                engine, "engine", probe=engine.health,
                restart_unhealthy_after_s=settings.engine_restart_after_s,
            ))
            supervisors[-1].start()
            settings = settings.model_copy(update={"engine_urls": [engine.url], "engine_api_key": engine_key})
            adapter_settings = adapter_settings.model_copy(update={
                "base_model_dir": model_dir, "max_lora_rank": engine.config.max_lora_rank,
            })
            log.info("engine starting at %s on %s (log: %s)", engine.url, model_dir, engine.config.log_path)
        if with_trainer:
            trainer = TrainerProcess(hhh_home() / "trainer.log", base_model=model_dir, cpus=cpus.trainer,
                                     gateway_url=local_gateway_url(settings.host, settings.port))
            supervisors.append(ProcessSupervisor(trainer, "trainer"))
            supervisors[-1].start()
            log.info("trainer daemon started (log: %s)", trainer.log_path)
        log.info("CPUs: %s", cpus.describe())
        drainer = OutboxDrainer(outbox, lambda: open_event_log(events))
        gateway = build_gateway(settings, outbox, drainer, adapter_log=lambda: open_event_log(events),
                                adapter_settings=adapter_settings)
        log.info("gateway on http://%s:%d (event log: %s)", settings.host, settings.port, events.backend)
        uvicorn.run(create_app(gateway), host=settings.host, port=settings.port, log_level="info",
                    **server_options(gateway.limits))
    finally:
        for supervisor in reversed(supervisors):
            supervisor.stop()
        outbox.close()
