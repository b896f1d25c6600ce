"""Which weights serve a caller: their own adapter, else the global one, else the base model.

The router holds the live adapter per scope; the hot-swap controller replaces an entry in one
assignment (atomic under the GIL and the event loop), so a request sees the old route or the
new one, never a mixture.

In-flight tracking: ``acquire`` picks the route and counts the request against it in one step
(no ``await`` between them), ``release`` uncounts it; ``drained`` waits until a retired route
has no request left, so the controller unloads an adapter only once nothing uses it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from serving import metrics
from streams.events import AdapterRef

BASE = AdapterRef(scope="base")


@dataclass(frozen=True)
class Route:
    """Where a request goes: the model name the engines know, and what it is."""

    engine_model: str
    adapter: AdapterRef


class AdapterRouter:
    """The live adapter of each scope, the choice among them, and requests in flight per route."""

    def __init__(self) -> None:
        self._live: dict[str, Route] = {}
        self._base: Route | None = None
        self._in_flight: Counter[str] = Counter()
        self._idle: dict[str, asyncio.Event] = {}
        self._awaiting_first: dict[str, float] = {}

    def route(self, user_id: str, base_model: str) -> Route:
        """The caller's own adapter if live, else the global adapter, else the base model."""
        return (
            self._live.get(f"user:{user_id}")
            or self._live.get("global")
            or self._base
            or Route(engine_model=base_model, adapter=BASE)
        )

    def set_base(self, engine_model: str) -> None:
        """Serve the base model under ``engine_model`` (the null adapter; see null_adapter.py)."""
        self._base = Route(engine_model=engine_model, adapter=BASE)

    def acquire(self, user_id: str, base_model: str) -> Route:
        """``route``, counted as in flight until ``release``."""
        route = self.route(user_id, base_model)
        self._in_flight[route.engine_model] += 1
        if (idle := self._idle.get(route.engine_model)) is not None:
            idle.clear()
        return route

    def release(self, route: Route, *, served: bool) -> None:
        """The request on ``route`` is over; ``served``: it got an answer from the engine."""
        name = route.engine_model
        self._in_flight[name] -= 1
        if served and (received_at := self._awaiting_first.pop(name, None)) is not None:
            metrics.ADAPTER_SWAP_SECONDS.observe(time.monotonic() - received_at)
        if self._in_flight[name] <= 0:
            del self._in_flight[name]
            if (idle := self._idle.get(name)) is not None:
                idle.set()

    def set_live(self, route: Route, *, received_at: float | None = None) -> Route | None:
        """Serve ``route`` for its scope from now on; return the route it replaced.

        ``received_at`` (``time.monotonic``): when the swap's event arrived; the swap latency
        histogram observes it to the first request the new route serves.
        """
        if received_at is not None:
            self._awaiting_first[route.engine_model] = received_at
        previous = self._live.get(route.adapter.scope)
        self._live[route.adapter.scope] = route
        return previous

    def in_flight(self, route: Route) -> int:
        """Requests on ``route`` now."""
        return self._in_flight[route.engine_model]

    async def drained(self, route: Route, timeout_s: float) -> bool:
        """Wait until no request is in flight on ``route``; False if ``timeout_s`` passed first."""
        self._awaiting_first.pop(route.engine_model, None)
        if not self._in_flight[route.engine_model]:
            return True
        idle = self._idle.setdefault(route.engine_model, asyncio.Event())
        try:
            await asyncio.wait_for(idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._idle.pop(route.engine_model, None)

    def live(self) -> dict[str, Route]:
        """A snapshot of the live route per scope."""
        return dict(self._live)
