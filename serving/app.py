"""The gateway's HTTP layer: routes, caller identity, error mapping, body limit, metrics.

Every dependency and handler is ``async``: FastAPI runs plain ``def`` ones in a threadpool,
a thread handoff per call that cost more than the work (measured: bench/serving.py).

Layers: ``protocol`` (pydantic bodies) → services (``ChatService``, ``FeedbackService``;
they return a result or raise ``GatewayError``) → this thin router, which maps errors to
HTTP. Every error body carries ``detail`` (what to fix) and an OpenAI-style ``error`` object,
so that both plain HTTP clients and the ``openai`` client show the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import metrics
from serving.adapters import admin
from serving.adapters.config import AdapterSettings
from serving.adapters.controller import HotSwapController
from serving.adapters.store import AdapterStore
from serving.chat import Caller, ChatService
from serving.completion_ids import CompletionIdSigner
from serving.config import ApiKey, GatewaySettings, api_key_digest
from serving.engines import EnginePool, EngineUnavailable
from serving.errors import GatewayError
from serving.feedback import LABELER, FeedbackService
from serving.limits.callers import CallerLimits
from serving.limits.config import LimitSettings
from serving.limits.server import BodyDeadline
from serving.protocol import ChatCompletionRequest, FeedbackAccepted, RankingRequest, ThumbsRequest
from serving.routing import AdapterRouter
from serving.config import LabelingSettings
from serving.web.labeling import LabelingFollower, LabelingQueue, LabelingTask
from serving.web.pages import PAGE_ROUTES, install_pages
from streams.log import EventLog
from streams.outbox import Outbox, OutboxDrainer

log = logging.getLogger(__name__)

_ROUTES = {
    "/v1/chat/completions", "/v1/models", "/v1/feedback", "/v1/rankings",
    "/healthz", "/readyz", "/metrics", "/admin/adapters", "/admin/adapters/rollback",
    "/admin/adapters/pin", "/admin/adapters/unpin", "/v1/labeling/next",
} | PAGE_ROUTES


@dataclass
class Gateway:
    """Everything one gateway process runs, wired together."""

    settings: GatewaySettings
    pool: EnginePool
    router: AdapterRouter
    outbox: Outbox
    drainer: OutboxDrainer
    chat: ChatService
    feedback: FeedbackService
    api_keys: dict[str, ApiKey]
    """SHA-256 of each API key -> its owner."""
    limits: LimitSettings
    replica: str
    """This gateway's replica id (``HHH_ADAPTERS_REPLICA_ID``; a worker's ends in ``-w<i>``)."""
    adapters: HotSwapController | None = None
    labeling: LabelingFollower | None = None


def build_gateway(
    settings: GatewaySettings,
    outbox: Outbox,
    drainer: OutboxDrainer,
    *,
    adapter_log: Callable[[], EventLog] | None = None,
    adapter_settings: AdapterSettings | None = None,
    limits: LimitSettings | None = None,
) -> Gateway:
    """Wire a gateway for ``settings``; the outbox and its drainer come from the caller.

    ``limits``: per-caller, server and request limits (default: ``HHH_LIMITS_*``).

    ``adapter_log`` opens the event log whose ``adapters`` topic the hot-swap controller
    follows, and whose ``completions`` and ``feedback`` the labeler queue reads; without it the
    gateway serves the base model only and has no labeler queue.
    """
    if settings.public_without_auth:
        log.warning("UNSAFE: auth is off on %s (HHH_GATEWAY_ALLOW_UNAUTHENTICATED_PUBLIC): anyone "
                    "who reaches this port can act as any user", settings.host)
    pool = EnginePool(settings.engine_urls, interval_s=settings.health_interval_s,
                      api_key=settings.engine_api_key.get_secret_value() if settings.engine_api_key else None)
    router = AdapterRouter()
    signer = CompletionIdSigner(settings.signing_secret())
    limits = limits or LimitSettings()
    adapters = labeling = None
    adapter_settings = adapter_settings or AdapterSettings()
    replica = adapter_settings.replica(settings.port)
    if adapter_log is not None:
        labeling = LabelingFollower(LabelingQueue(LabelingSettings()), adapter_log)
        adapters = HotSwapController(
            adapter_settings, replica,
            AdapterStore(adapter_settings.store_root), router, pool, adapter_log,
        )
    return Gateway(
        settings=settings, pool=pool, router=router, outbox=outbox, drainer=drainer,
        chat=ChatService(settings, pool, router, signer, outbox, limits),
        feedback=FeedbackService(signer, outbox, limits.criteria),
        api_keys=settings.key_table() if settings.auth else {},
        limits=limits, replica=replica, adapters=adapters, labeling=labeling,
    )


async def get_gateway(request: Request) -> Gateway:
    """The gateway this app serves."""
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def owner_of(gateway: Gateway, key: str) -> ApiKey | None:
    """Who API key ``key`` belongs to (looked up by its SHA-256), or None for no such key."""
    return gateway.api_keys.get(api_key_digest(key))


async def authenticate(gateway: GatewayDep, authorization: Annotated[str | None, Header()] = None) -> Caller | None:
    """The caller named by the API key; ``None`` when auth is off."""
    if not gateway.settings.auth:
        return None
    if not authorization or not authorization.lower().startswith("bearer "):
        raise GatewayError(401, "missing_api_key", "send your API key as 'Authorization: Bearer <key>'")
    owner = owner_of(gateway, authorization[7:].strip())
    if owner is None:
        raise GatewayError(401, "invalid_api_key", "the API key is not valid")
    return Caller(user_id=owner.user, roles=owner.roles, labeler_ids=owner.labeler_ids)


Authenticated = Annotated[Caller | None, Depends(authenticate)]


def caller_of(gateway: Gateway, authenticated: Caller | None, user: str | None) -> Caller:
    """With auth on the API key names the caller; with auth off the ``user`` field (or anonymous)."""
    return authenticated or Caller(user_id=user or gateway.settings.anonymous_user)


router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, gateway: GatewayDep, authenticated: Authenticated):
    return await gateway.chat.complete(body, caller_of(gateway, authenticated, body.user))


@router.get("/v1/models")
async def models(gateway: GatewayDep, _: Authenticated) -> dict:
    return {"object": "list", "data": [{
        "id": gateway.settings.served_model_name, "object": "model", "created": 0, "owned_by": "hhh",
    }]}


IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key",
    description="Optional, 1-255 visible ASCII characters, fresh per vote or ranking: every retry "
    "of a request with this key is one event. Without it, a repeat of your latest feedback on "
    "the same target is one event.",
)]


@router.post("/v1/feedback")
async def feedback(
    body: ThumbsRequest, gateway: GatewayDep, authenticated: Authenticated, key: IdempotencyKey = None
) -> FeedbackAccepted:
    return await gateway.feedback.thumbs(body, caller_of(gateway, authenticated, body.user), key)


@router.post("/v1/rankings")
async def rankings(
    body: RankingRequest, gateway: GatewayDep, authenticated: Authenticated, key: IdempotencyKey = None
) -> FeedbackAccepted:
    return await gateway.feedback.ranking(body, caller_of(gateway, authenticated, body.user), key)


@router.get("/v1/labeling/next")
async def labeling_next(
    gateway: GatewayDep, authenticated: Authenticated,
    skip: Annotated[str | None, Query(max_length=64, description="The item just done")] = None,
) -> LabelingTask:
    """Reserve the next item that needs judgements for the calling labeler; their progress."""
    caller = caller_of(gateway, authenticated, None)
    if LABELER not in caller.roles:
        raise GatewayError(
            403, "not_a_labeler", "the labeler queue is for API keys with the labeler role"
        )
    if gateway.labeling is None:
        raise GatewayError(
            404, "no_labeling_queue", "this gateway does not read the event log, so it has no queue"
        )
    return gateway.labeling.queue.next(caller.user_id, skip)


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(gateway: GatewayDep) -> dict:
    if not gateway.pool.ready:
        raise GatewayError(503, "not_ready", str(gateway.pool.unavailable()))
    engines = [{"url": e.url, "up": e.up, "error": e.last_error} for e in gateway.pool.engines]
    body: dict = {"status": "ready", "replica": gateway.replica, "engines": engines}
    if gateway.adapters is not None:
        body["adapters"] = {"last_event": gateway.adapters.last_event, "last_error": gateway.adapters.last_error,
                            "caught_up": gateway.adapters.caught_up.is_set()}
    return body


@router.get("/metrics")
async def prometheus_metrics() -> PlainTextResponse:
    return PlainTextResponse(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI application serving ``gateway``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        gateway.drainer.start()
        await gateway.pool.start()
        if gateway.adapters is not None:
            gateway.adapters.start()
        if gateway.labeling is not None:
            gateway.labeling.start()
        try:
            yield
        finally:
            if gateway.labeling is not None:
                gateway.labeling.stop()
            if gateway.adapters is not None:
                await gateway.adapters.stop()
            await gateway.pool.stop()
            gateway.drainer.stop()

    app = FastAPI(
        title="hhh gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.gateway = gateway
    app.include_router(router)
    install_pages(app, gateway.settings)
    if gateway.settings.admin_key is not None:
        app.include_router(admin.router)
    # Outermost last: size limit and metrics, then the per-caller limits, then the body deadline.
    app.add_middleware(BodyDeadline, body_timeout_s=gateway.limits.body_timeout_s, route_of=_route)
    app.add_middleware(CallerLimits, settings=gateway.limits, route_of=_route,
                       user_of_key=lambda key: owner.user if (owner := owner_of(gateway, key)) else None)
    app.add_middleware(BodyLimitAndMetrics, max_body_bytes=gateway.settings.max_body_bytes)

    @app.exception_handler(GatewayError)
    async def on_gateway_error(request: Request, error: GatewayError) -> JSONResponse:
        return _error(request, error.status, error.reason, error.detail)

    @app.exception_handler(EngineUnavailable)
    async def on_engine_unavailable(request: Request, error: EngineUnavailable) -> JSONResponse:
        return _error(request, 503, "engine_unavailable", str(error))

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(request, 400, "invalid_request", _describe(error))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals: an unknown route or method, and a body it could not parse at
        # all (json_invalid is a RequestValidationError; JSON nested past Python's recursion
        # limit is this, with the RecursionError as its cause).
        if isinstance(error.__cause__, RecursionError):
            return _error(request, 400, "invalid_request",
                          "malformed JSON: nested too deeply to parse; send plain objects and arrays")
        reason = _HTTP_REASONS.get(error.status_code, "invalid_request")
        return _error(request, error.status_code, reason, str(error.detail))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _error(request, 500, "internal_error", "internal error; it was logged")

    return app


_HTTP_REASONS = {404: "not_found", 405: "method_not_allowed"}
"""The ``reason`` label of FastAPI's own 4xx refusals (`on_http_error`)."""


def _error(request: Request, status: int, reason: str, detail: str) -> JSONResponse:
    if status < 500:
        metrics.REJECTED.labels(route=_route(request.url.path), reason=reason).inc()
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"detail": detail, "error": {"message": detail, "type": kind, "code": reason}}
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _describe(error: RequestValidationError) -> str:
    """One sentence per problem: where it is and what is wrong."""
    problems = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item["loc"] if part != "body") or "body"
        if item["type"] == "json_invalid":
            problems.append(f"malformed JSON: {item.get('ctx', {}).get('error', item['msg'])}")
        elif item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown field; remove it (see the OpenAI API reference)")
        elif item["type"] == "missing":
            problems.append(f"{where}: required field is missing")
        else:
            problems.append(f"{where}: {item['msg']}")
    more = len(error.errors()) - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def _route(path: str) -> str:
    return path if path in _ROUTES else "other"


class _BodyTooLarge(Exception):
    pass


class BodyLimitAndMetrics:
    """ASGI middleware: refuse bodies over the limit (413), count requests and time them."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self._app = app
        self._max = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        route, started, status, received = _route(scope["path"]), time.perf_counter(), 500, 0
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        too_large = f"the request body exceeds the limit of {self._max:,} bytes"

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self._max:
                raise _BodyTooLarge
            return message

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        chat = route == "/v1/chat/completions"
        if chat:
            metrics.CHAT_IN_FLIGHT.inc()
        try:
            if declared.isdigit() and int(declared) > self._max:
                raise _BodyTooLarge
            await self._app(scope, limited_receive, observed_send)
        except _BodyTooLarge:
            metrics.REJECTED.labels(route=route, reason="body_too_large").inc()
            status = 413
            response = JSONResponse(
                {"detail": too_large, "error": {"message": too_large, "type": "invalid_request_error",
                                                 "code": "body_too_large"}},
                status_code=413,
            )
            await response(scope, receive, send)
        finally:
            if chat:
                metrics.CHAT_IN_FLIGHT.dec()
            metrics.HTTP_REQUESTS.labels(route=route, method=scope["method"], status=str(status)).inc()
            metrics.HTTP_LATENCY.labels(route=route).observe(time.perf_counter() - started)
