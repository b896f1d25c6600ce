"""`hhh serve`: the gateway and, on one machine, the vLLM engine it supervises.

With ``HHH_GATEWAY_ENGINE_URLS`` empty (the default) the gateway starts one vLLM server on the
demo model (built on first use), watches it, and restarts it whenever it exits; meanwhile the
gateway answers 503 with the reason, and ``/readyz`` reports not ready. With engine URLs
configured, the engines are someone else's to run (several machines, GPUs). Either way the
gateway follows the ``adapters`` topic of the configured event log and hot-swaps adapters
(``serving/adapters/controller.py``; settings ``HHH_ADAPTERS_*``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import uvicorn

from serving.adapters.config import AdapterSettings
from serving.app import build_gateway, create_app
from serving.config import GatewaySettings
from serving.engine import EngineConfig, EngineProcess
from streams.backends import open_event_log
from streams.config import EventLogSettings, hhh_home
from streams.outbox import Outbox, OutboxDrainer

log = logging.getLogger(__name__)


class EngineSupervisor:
    """Keeps one engine process running: starts it, and restarts it when it exits."""

    def __init__(self, engine: EngineProcess, *, check_interval_s: float = 1.0) -> None:
        self.engine = engine
        self.restarts = 0
        self._check_interval_s = check_interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="engine-supervisor", daemon=True)

    def start(self) -> None:
        """Start the engine (without waiting for it) and watch it from a thread."""
        self.engine.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, then stop the engine."""
        self._stopping.set()
        self._thread.join(10)
        self.engine.stop()

    def _watch(self) -> None:
        while not self._stopping.wait(self._check_interval_s):
            if self.engine.running:
                continue
            self.restarts += 1
            log.error("the engine exited; restarting it (restart %d). Its last output:\n%s",
                      self.restarts, self.engine.log_tail(10))
            try:
                self.engine.stop()  # reap what is left of the old process group first
                self.engine.start()
            except Exception:  # noqa: BLE001 - keep supervising; the next check tries again
                log.exception("restarting the engine failed")


def serve(model_dir: Path | None = None) -> None:
    """Run the gateway until interrupted (and the engine, unless engine URLs are configured)."""
    settings = GatewaySettings()
    events = EventLogSettings()
    adapter_settings = AdapterSettings()
    supervisor = None
    if not settings.engine_urls:
        if model_dir is None:
            from trainer.demo_model.build import build_demo_model

            model_dir = build_demo_model("demo", home=hhh_home())
        engine = EngineProcess(EngineConfig(model_dir=model_dir, log_path=hhh_home() / "engine.log"))
        supervisor = EngineSupervisor(engine)
        supervisor.start()
        settings = settings.model_copy(update={"engine_urls": [engine.url]})
        adapter_settings = adapter_settings.model_copy(update={
            "base_model_dir": model_dir, "max_lora_rank": engine.config.max_lora_rank,
        })
        log.info("engine starting at %s on %s (log: %s)", engine.url, model_dir, engine.config.log_path)
    outbox = Outbox(events.outbox_path, name="gateway")
    drainer = OutboxDrainer(outbox, lambda: open_event_log(events))
    gateway = build_gateway(settings, outbox, drainer, adapter_log=lambda: open_event_log(events),
                            adapter_settings=adapter_settings)
    app = create_app(gateway)
    log.info("gateway on http://%s:%d (event log: %s)", settings.host, settings.port, events.backend)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    finally:
        if supervisor is not None:
            supervisor.stop()
        outbox.close()
