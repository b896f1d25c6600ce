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

With ``HHH_GATEWAY_WORKERS`` = N > 1 the gateway is N supervised worker processes behind the
one port instead of part of this process (`hhh.workers`); the engine and the trainer stay here.

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
import socket
import sys
from pathlib import Path

import uvicorn
from pydantic import SecretStr

from common.cpus import CpuSet, format_cpu_list
from common.errors import UserError
from common.processes import ChildProcess
from hhh.colocation import cpu_plan, local_gateway_url

from serving.adapters.config import AdapterSettings
from serving.app import build_gateway, create_app
from serving.config import GatewaySettings
from serving.engine import EngineConfig, EngineProcess
from serving.limits.server import server_options
from streams.backends import open_event_log
from streams.config import EventLogSettings, hhh_home
from streams.outbox import Outbox, OutboxDrainer
from trainer.config import TrainerSettings

from hhh.supervisor import ProcessSupervisor
from hhh.workers import check_worker_count, run_workers

log = logging.getLogger(__name__)


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


def serve(model_dir: Path | None = None, *, with_trainer: bool = False) -> None:
    """Run the gateway until interrupted (and the engine, unless engine URLs are configured).

    ``with_trainer``: also run the trainer daemon (`hhh train`) as a supervised child process,
    on ``model_dir`` (the served model) where it is known. With ``HHH_GATEWAY_WORKERS`` > 1 the
    gateway runs as that many supervised worker processes behind the one port (`hhh.workers`);
    otherwise in this process.
    """
    settings = GatewaySettings()
    if settings.workers > 1:
        check_worker_count(settings.workers)  # before anything starts: the user's to fix
    if settings.auth:
        settings.key_table()  # a bad API keys file is refused now, before any engine starts
    events = EventLogSettings()
    adapter_settings = AdapterSettings()
    supervisors: list[ProcessSupervisor] = []
    cpus = cpu_plan(settings, TrainerSettings(), with_trainer=with_trainer)
    try:
        if not settings.engine_urls:
            if model_dir is None:
                from trainer.demo_model.build import build_demo_model

                model_dir = build_demo_model("demo", home=hhh_home())
            # A fresh key per start: only this gateway may call the engine it supervises.
            engine_key = settings.engine_api_key or SecretStr(secrets.token_urlsafe(32))
            config = EngineConfig(model_dir=model_dir, log_path=hhh_home() / "engine.log", api_key=engine_key,
                                  cpus=cpus.engine)
            # Every worker loads its own copy of each adapter: room in the cache for all of them.
            engine = EngineProcess(
                config.model_copy(update={"max_cpu_loras": config.max_loras * settings.workers})
            )
            supervisors.append(ProcessSupervisor(
                engine, "engine", probe=engine.health,
                restart_unhealthy_after_s=settings.engine_restart_after_s,
                start_timeout_s=settings.engine_start_timeout_s,
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
        if settings.workers > 1:
            run_workers(settings, adapter_settings, events)
        else:
            run_gateway(settings, adapter_settings, events)
    finally:
        for supervisor in reversed(supervisors):
            supervisor.stop()


def run_gateway(
    settings: GatewaySettings, adapter_settings: AdapterSettings, events: EventLogSettings, *,
    outbox_name: str = "gateway", sockets: list[socket.socket] | None = None,
) -> None:
    """Serve one gateway (its outbox, drainer and hot-swap controller) until SIGTERM/SIGINT.

    ``sockets``: listening sockets to serve on (a gateway worker's); default: bind
    ``settings.host:settings.port``.
    """
    outbox = Outbox(events.outbox_path, name=outbox_name)
    try:
        drainer = OutboxDrainer(outbox, lambda: open_event_log(events))
        gateway = build_gateway(settings, outbox, drainer, adapter_log=lambda: open_event_log(events),
                                adapter_settings=adapter_settings)
        log.info("gateway %s on http://%s:%d (event log: %s)", gateway.replica, settings.host,
                 settings.port, events.backend)
        server = uvicorn.Server(uvicorn.Config(create_app(gateway), host=settings.host, port=settings.port,
                                               log_level="info", **server_options(gateway.limits)))
        server.run(sockets=sockets)
        if not server.started:
            raise UserError(f"the gateway did not start on {settings.host}:{settings.port}; the log "
                            "above says why")
    finally:
        outbox.close()
