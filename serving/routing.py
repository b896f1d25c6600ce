"""Which weights serve a caller: their own adapter, else the global one, else the base model.

The router holds the live adapter per scope; the hot-swap controller replaces an entry in one
assignment (atomic under the GIL and the event loop), so a request sees the old route or the
new one, never a mixture.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.events import AdapterRef

BASE = AdapterRef(scope="base")


@dataclass(frozen=True)
class Route:
    """Where a request goes: the model name the engines know, and what it is."""

    engine_model: str
    adapter: AdapterRef


class AdapterRouter:
    """The live adapter of each scope, and the choice among them for a caller."""

    def __init__(self) -> None:
        self._live: dict[str, Route] = {}

    def route(self, user_id: str, base_model: str) -> Route:
        """The caller's own adapter if live, else the global adapter, else the base model."""
        return (
            self._live.get(f"user:{user_id}")
            or self._live.get("global")
            or Route(engine_model=base_model, adapter=BASE)
        )

    def set_live(self, route: Route) -> Route | None:
        """Serve ``route`` for its scope from now on; return the route it replaced."""
        previous = self._live.get(route.adapter.scope)
        self._live[route.adapter.scope] = route
        return previous

    def live(self) -> dict[str, Route]:
        """A snapshot of the live route per scope."""
        return dict(self._live)
