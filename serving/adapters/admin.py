"""The admin API of adapters, behind its own bearer credential (``HHH_GATEWAY_ADMIN_KEY``);
not mounted at all unless that is set.

``GET /admin/adapters``: this replica's live version per scope, the adapters it has loaded per
engine, its refusals, and the store's versions. ``POST /admin/adapters/rollback``, ``/pin``,
``/unpin``: change the store's state and announce it on the ``adapters`` topic, so every
replica follows (the same as ``hhh adapters rollback|pin|unpin``).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from serving.adapters.controller import HotSwapController
from serving.adapters.publish import announce
from serving.adapters.store import AdapterRefused, Manifest
from serving.errors import GatewayError
from streams.events import Scope


class ScopeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Scope = Field(description="'global' or 'user:<id>'.")


class RollbackRequest(ScopeRequest):
    to: int | None = Field(default=None, ge=1, description="Default: the newest unrefused earlier version.")


class PinRequest(ScopeRequest):
    version: int | None = Field(default=None, ge=1, description="Default: the current version.")


class Announced(BaseModel):
    scope: str
    version: int
    parent_version: int | None


async def _controller(request: Request, authorization: Annotated[str | None, Header()] = None) -> HotSwapController:
    gateway = request.app.state.gateway
    expected = gateway.settings.admin_key.get_secret_value()
    if not authorization or not authorization.lower().startswith("bearer "):
        raise GatewayError(401, "missing_admin_key", "send the admin key as 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(authorization[7:].strip().encode(), expected.encode()):
        raise GatewayError(403, "invalid_admin_key", "the admin key is not valid")
    if gateway.adapters is None:
        raise GatewayError(503, "adapters_off", "this gateway follows no adapter topic")
    return gateway.adapters


Controller = Annotated[HotSwapController, Depends(_controller)]
router = APIRouter(prefix="/admin/adapters")


@router.get("")
async def list_adapters(controller: Controller) -> dict:
    store = await asyncio.to_thread(controller.store.list)
    live = controller.router.live()
    return {
        "replica": controller.replica,
        "live": {scope: {"version": route.adapter.version, "engine_model": route.engine_model,
                         "in_flight": controller.router.in_flight(route)}
                 for scope, route in live.items()},
        "engines": controller.loaded(),
        "refused": {label: refusal.model_dump(mode="json") for label, refusal in controller.refused.items()},
        "store": [info.model_dump(mode="json") for info in store],
    }


@router.post("/rollback")
async def rollback(body: RollbackRequest, controller: Controller) -> Announced:
    return await _change(controller, lambda: controller.store.rollback(body.scope, body.to))


@router.post("/pin")
async def pin(body: PinRequest, controller: Controller) -> Announced:
    return await _change(controller, lambda: controller.store.pin(body.scope, body.version))


@router.post("/unpin")
async def unpin(body: ScopeRequest, controller: Controller) -> Announced:
    return await _change(controller, lambda: controller.store.unpin(body.scope))


async def _change(controller: HotSwapController, change: Callable[[], Manifest]) -> Announced:
    def change_and_announce() -> Manifest:
        manifest = change()
        event_log = controller.open_log()
        try:
            announce(event_log, controller.store, manifest)
        finally:
            event_log.close()
        return manifest

    try:
        manifest = await asyncio.to_thread(change_and_announce)
    except AdapterRefused as error:
        raise GatewayError(404 if error.reason == "not_found" else 409, error.reason, error.detail) from error
    except ValueError as error:
        raise GatewayError(409, "invalid_change", str(error)) from error
    return Announced(scope=manifest.scope, version=manifest.version, parent_version=manifest.parent_version)
