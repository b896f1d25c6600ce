"""Chat completions: route to an adapter, proxy to a vLLM engine, sign and log every choice.

vLLM's own OpenAI server does the chat template, sampling, ``n``, streaming and logprobs; the
gateway adds identity, routing, completion ids and logging, and touches the response only to
add those. It asks the engine for token ids (exact per-choice token counts, streamed or not)
and usage, and strips both again unless the client asked for usage.

Routing: the request is counted in flight on its route from the moment the route is chosen
until the engine's answer is read (or the stream ends), so the hot-swap controller unloads a
retired adapter only once nothing uses it.

Logging: one ``CompletionEvent`` per choice goes to the outbox after the response is sent
(non-streamed) or when the stream ends; a stream the client leaves early is logged with
``truncated=True``. The outbox write is local, so logging adds no broker latency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import aiohttp
import anyio
import anyio.lowlevel
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

from serving import metrics
from serving.completion_ids import CompletionClaim, CompletionIdSigner, prompt_hash
from serving.config import GatewaySettings
from serving.engines import ENGINE_ERRORS, Engine, EnginePool
from serving.errors import GatewayError
from serving.limits.caps import check_caps
from serving.limits.config import LimitSettings
from serving.protocol import NOT_SERVED, ChatCompletionRequest
from serving.routing import AdapterRouter, Route
from streams import metrics as stream_metrics
from streams.codec import COMPLETIONS, EventError
from streams.events import ChatMessage, CompletionEvent, SamplingParams
from streams.outbox import Outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the auth layer established it."""

    user_id: str
    roles: frozenset[str] = frozenset()
    labeler_ids: frozenset[str] = frozenset()
    """Labeler ids a labeler may rank as, besides ``user_id``."""


@dataclass
class _Exchange:
    """One chat request on its way through the gateway."""

    request: ChatCompletionRequest
    caller: Caller
    route: Route
    messages: list[ChatMessage]
    prompt_id: str
    signer: CompletionIdSigner
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    completion_ids: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.completion_ids = [
            self.signer.sign(CompletionClaim(
                self.caller.user_id, self.prompt_id, self.request_id, index, self.route.adapter
            ))
            for index in range(self.request.n)
        ]

    def events(
        self, texts: list[str], finish_reasons: list[str | None], tokens: list[int],
        prompt_tokens: int, *, truncated: bool,
    ) -> list[CompletionEvent]:
        latency_ms = (time.perf_counter() - self.started) * 1000
        ttft_ms = None if self.first_token_at is None else (self.first_token_at - self.started) * 1000
        return [
            CompletionEvent(
                completion_id=self.completion_ids[index],
                request_id=self.request_id,
                prompt_id=self.prompt_id,
                user_id=self.caller.user_id,
                messages=self.messages,
                completion=texts[index],
                choice_index=index,
                finish_reason=finish_reasons[index],
                truncated=truncated and finish_reasons[index] is None,
                adapter=self.route.adapter,
                model=self.route.engine_model,
                sampling=_sampling(self.request),
                prompt_tokens=prompt_tokens,
                completion_tokens=tokens[index],
                latency_ms=latency_ms,
                time_to_first_token_ms=ttft_ms,
            )
            for index in range(self.request.n)
        ]

    def headers(self) -> dict[str, str]:
        return {
            "x-hhh-completion-ids": ",".join(self.completion_ids),
            "x-hhh-adapter": self.route.adapter.label,
        }

    def decorate(self, payload: dict) -> None:
        """Add hhh's fields to a response or chunk; drop what the engine sent only for us."""
        payload.pop("prompt_token_ids", None)
        payload["id"] = self.completion_ids[0]
        payload["model"] = self.request.model
        payload["hhh_adapter"] = self.route.adapter.model_dump()
        for choice in payload.get("choices", []):
            choice["completion_id"] = self.completion_ids[choice["index"]]


def _sampling(request: ChatCompletionRequest) -> SamplingParams:
    return SamplingParams(
        temperature=request.temperature, top_p=request.top_p, max_tokens=request.token_limit,
        n=request.n, seed=request.seed, stop=request.stop_list(),
        presence_penalty=request.presence_penalty, frequency_penalty=request.frequency_penalty,
    )


class ChatService:
    """Serves ``POST /v1/chat/completions``."""

    def __init__(
        self,
        settings: GatewaySettings,
        pool: EnginePool,
        router: AdapterRouter,
        signer: CompletionIdSigner,
        outbox: Outbox,
        limits: LimitSettings | None = None,
    ) -> None:
        self._settings = settings
        self._limits = limits or LimitSettings()
        self._pool = pool
        self._router = router
        self._signer = signer
        self._outbox = outbox
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)
        # A stream is timed by the engine's silence, not by its length: under a total deadline
        # a stream that a client reads slowly outlives it, and the healthy engine was marked
        # down. sock_read also stops while the client's pace has paused reading.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.request_timeout_s, sock_read=settings.request_timeout_s
        )

    async def complete(self, request: ChatCompletionRequest, caller: Caller) -> Response:
        """Answer ``request`` for ``caller``: JSON, or an SSE stream if it asked for one.

        Raises ``GatewayError`` for a request to refuse, ``EngineUnavailable`` with no engine up.
        """
        self._check_limits(request)
        route = self._router.acquire(caller.user_id, self._pool.base_model)
        served = streaming = False
        try:
            messages = [message.as_event_message() for message in request.messages]
            exchange = _Exchange(request, caller, route, messages, prompt_hash(messages), self._signer)
            body = self._engine_body(request, route)
            if request.stream:
                response = await self._stream(body, exchange)
                streaming = True  # the relay releases the route when the stream ends
                return response
            response = await self._complete_once(body, exchange)
            served = True
            return response
        finally:
            if not streaming:
                self._router.release(route, served=served)

    def _check_limits(self, request: ChatCompletionRequest) -> None:
        settings = self._settings
        if request.model != settings.served_model_name:
            raise GatewayError(
                404, "model_not_found",
                f"model {request.model!r} does not exist; this service serves "
                f"{settings.served_model_name!r} (GET /v1/models)",
            )
        if request.n > settings.max_n:
            raise GatewayError(400, "n_too_large", f"n={request.n} exceeds the limit of {settings.max_n}")
        if request.token_limit is not None and request.token_limit > settings.max_tokens:
            raise GatewayError(
                400, "max_tokens_too_large",
                f"max_tokens={request.token_limit} exceeds the limit of {settings.max_tokens}",
            )
        check_caps(request, self._limits, max_tokens=request.token_limit or settings.max_tokens)

    def _engine_body(self, request: ChatCompletionRequest, route: Route) -> dict:
        body = request.model_dump(
            exclude_unset=True, exclude={"max_completion_tokens", *NOT_SERVED}, by_alias=True
        )
        body["model"] = route.engine_model
        body["max_tokens"] = request.token_limit or self._settings.max_tokens
        body["return_token_ids"] = True
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def _complete_once(self, body: dict, exchange: _Exchange) -> Response:
        async with self._pool.lease() as engine:
            try:
                async with self._pool.session.post(
                    f"{engine.url}/v1/chat/completions", json=body, timeout=self._timeout
                ) as response:
                    status, document = response.status, await response.read()
            except ENGINE_ERRORS as error:
                raise self._engine_failed(engine, error) from error
        if status != 200:
            raise _engine_refusal(status, document)
        payload = json.loads(document)
        choices = sorted(payload["choices"], key=lambda choice: choice["index"])
        texts = [choice["message"].get("content") or "" for choice in choices]
        tokens = [len(choice.pop("token_ids", None) or []) for choice in choices]
        finish_reasons = [choice.get("finish_reason") for choice in choices]
        prompt_tokens = (payload.get("usage") or {}).get("prompt_tokens", 0)
        exchange.decorate(payload)
        events = exchange.events(texts, finish_reasons, tokens, prompt_tokens, truncated=False)
        self._observe(exchange, prompt_tokens, sum(tokens))
        return JSONResponse(
            payload, headers=exchange.headers(), background=BackgroundTask(self._log, events)
        )

    async def _stream(self, body: dict, exchange: _Exchange) -> Response:
        resources = AsyncExitStack()
        engine = await resources.enter_async_context(self._pool.lease())
        try:
            upstream = await self._pool.session.post(
                f"{engine.url}/v1/chat/completions", json=body, timeout=self._stream_timeout
            )
        except ENGINE_ERRORS as error:
            await resources.aclose()
            raise self._engine_failed(engine, error) from error
        # Closing (not releasing) the connection when the client leaves makes vLLM abort the
        # generation; a stream read to its end is released back to the pool instead.
        resources.callback(upstream.close)
        if upstream.status != 200:
            document = await upstream.read()
            await resources.aclose()
            raise _engine_refusal(upstream.status, document)
        return StreamingResponse(
            self._relay(upstream, engine, resources, exchange),
            media_type="text/event-stream",
            headers=exchange.headers(),
        )

    async def _relay(
        self, upstream: aiohttp.ClientResponse, engine: Engine, resources: AsyncExitStack,
        exchange: _Exchange,
    ) -> AsyncIterator[str]:
        """Pass the engine's SSE chunks on, decorated; log the choices however the stream ends."""
        n = exchange.request.n
        texts: list[list[str]] = [[] for _ in range(n)]
        tokens, finish_reasons = [0] * n, [None] * n
        usage: dict = {}
        options = exchange.request.stream_options
        client_wants_usage = bool(options and options.include_usage)
        finished = False
        try:
            async for raw_line in upstream.content:
                line = raw_line.decode("utf-8").rstrip("\r\n")
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    finished = True
                    upstream.release()
                    yield "data: [DONE]\n\n"
                    break
                chunk = json.loads(data)
                usage = chunk.get("usage") or usage
                if not client_wants_usage:
                    chunk.pop("usage", None)
                    if not chunk.get("choices"):
                        continue  # the usage-only chunk we asked for ourselves
                for choice in chunk.get("choices", []):
                    index = choice["index"]
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        texts[index].append(content)
                        exchange.first_token_at = exchange.first_token_at or time.perf_counter()
                    token_ids = choice.pop("token_ids", None)
                    tokens[index] += len(token_ids) if token_ids is not None else int(bool(content))
                    finish_reasons[index] = choice.get("finish_reason") or finish_reasons[index]
                exchange.decorate(chunk)
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
                # A burst of buffered chunks would otherwise run without ever suspending,
                # starving the client-disconnect listener and every other stream on this loop.
                await anyio.lowlevel.checkpoint()
        except ENGINE_ERRORS as error:
            self._pool.mark_down(engine, f"{type(error).__name__}: {error}")
            failure = {"error": {"message": f"the model engine failed mid-stream: {error}",
                                 "type": "engine_unavailable", "code": 503}}
            yield f"data: {json.dumps(failure)}\n\n"
        finally:
            prompt_tokens = usage.get("prompt_tokens", 0)
            self._observe(exchange, prompt_tokens, sum(tokens))
            events = exchange.events(
                ["".join(parts) for parts in texts], finish_reasons, tokens, prompt_tokens,
                truncated=not finished,
            )
            with anyio.CancelScope(shield=True):  # a client that left must not stop the logging
                await resources.aclose()
                self._router.release(exchange.route, served=finished)
                await self._log(events)

    def _engine_failed(self, engine: Engine, error: Exception) -> GatewayError:
        self._pool.mark_down(engine, f"{type(error).__name__}: {error}")
        return GatewayError(
            503, "engine_unavailable",
            f"the model engine failed during the request ({type(error).__name__}); retry shortly",
        )

    def _observe(self, exchange: _Exchange, prompt_tokens: int, completion_tokens: int) -> None:
        scope = exchange.route.adapter.scope.split(":")[0]
        metrics.CHAT_LATENCY.labels(adapter_scope=scope).observe(time.perf_counter() - exchange.started)
        if exchange.first_token_at is not None:
            metrics.TIME_TO_FIRST_TOKEN.labels(adapter_scope=scope).observe(
                exchange.first_token_at - exchange.started
            )
        metrics.TOKENS.labels(direction="in").inc(prompt_tokens)
        metrics.TOKENS.labels(direction="out").inc(completion_tokens)

    async def _log(self, events: list[CompletionEvent]) -> None:
        """Put each choice's event in the outbox (one group commit). A choice that cannot be
        logged (too large, say) leaves the others logged, and is counted in
        ``hhh_events_rejected_total{topic="completions"}``, which the HhhEventsRejected alert
        watches: the served response cannot be taken back, but the loss is never silent."""
        outcomes = await asyncio.gather(
            *(self._outbox.put_many_async([(COMPLETIONS, event.prompt_id, event)]) for event in events),
            return_exceptions=True,
        )
        for event, outcome in zip(events, outcomes, strict=True):
            if outcome is None:
                continue
            if not isinstance(outcome, EventError):  # the outbox counts the events it refuses
                stream_metrics.EVENTS_REJECTED.labels(topic=COMPLETIONS, reason="outbox_error").inc()
            log.error("completion %s is not logged (%s: %s); it is lost to training",
                      event.completion_id, type(outcome).__name__, outcome)


def _engine_refusal(status: int, document: bytes) -> GatewayError:
    """The gateway error for a non-200 engine answer."""
    try:
        parsed = json.loads(document)
        error = parsed.get("error", parsed)
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        message = document[:500].decode("utf-8", "replace")
    if 400 <= status < 500 and status != 404:
        return GatewayError(status, "engine_refused", f"the model refused the request: {message}")
    return GatewayError(502, "engine_error", f"the model engine answered {status}: {message}")
