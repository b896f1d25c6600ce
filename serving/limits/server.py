"""Connection limits of the gateway's HTTP server (uvicorn): slow or idle clients cannot hold it.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive`` and refuses work
beyond ``limit_concurrency`` (503), but it waits for a request's headers and body for ever: a
connection that opens and sends nothing, or trickles its headers, is held until the client
leaves. ``DeadlineProtocol`` (uvicorn's httptools protocol) closes a connection whose headers
are not complete within ``header_timeout_s`` of opening or of its previous response, and one
whose headers exceed ``max_header_bytes`` (431); ``BodyDeadline`` (ASGI middleware) answers
408 to a request whose body is not complete within ``body_timeout_s`` of its headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving import metrics
from serving.errors import error_response
from serving.limits.config import LimitSettings

_TOO_LARGE_TEXT = b"the request line and headers are too large"
_HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TOO_LARGE_TEXT), _TOO_LARGE_TEXT)
)


def server_options(settings: LimitSettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` that enforce ``settings``."""
    return {
        "http": deadline_protocol(settings),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.max_connections,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "proxy_headers": True,
    }


def deadline_protocol(settings: LimitSettings) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a header deadline and a header size cap."""

    class DeadlineProtocol(HttpToolsProtocol):
        """Closes connections whose request headers are late or too large."""

        _header_deadline: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_arrived()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            awaiting_headers = self._header_deadline is not None
            super().data_received(data)
            if not awaiting_headers:
                return
            self._header_bytes += len(data)
            # Still no complete headers after the cap (complete ones are measured as a whole).
            if self._header_deadline is not None and self._header_bytes > settings.max_header_bytes:
                self._refuse_headers()

        def on_headers_complete(self) -> None:
            self._headers_arrived()
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > settings.max_header_bytes:
                self._refuse_headers()
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The next request's headers are due, unless a pipelined one has them already.
            if not self.transport.is_closing() and self.cycle.response_complete:
                self._await_headers()

        def _await_headers(self) -> None:
            self._headers_arrived()
            self._header_bytes = 0
            self._header_deadline = self.loop.call_later(settings.header_timeout_s, self._too_slow)

        def _headers_arrived(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _refuse_headers(self) -> None:
            self._headers_arrived()
            self._refused = True
            metrics.REJECTED.labels(route="other", reason="headers_too_large").inc()
            self.transport.write(_HEADERS_TOO_LARGE)
            self.transport.close()

        def _too_slow(self) -> None:
            self._header_deadline = None
            metrics.REJECTED.labels(route="other", reason="header_timeout").inc()
            if not self.transport.is_closing():
                self.transport.close()

    return DeadlineProtocol


class BodyDeadline:
    """ASGI middleware: a request body must be complete within ``body_timeout_s`` (else 408).

    The body is read here, under the deadline, and handed on whole: only the body is timed,
    not the wait for the client to disconnect that a streamed response keeps up while it runs.
    Inside the body-size limit, which counts the bytes as they are read here.
    """

    def __init__(self, app: ASGIApp, *, body_timeout_s: float, route_of: Callable[[str], str]) -> None:
        self._app = app
        self._timeout_s = body_timeout_s
        self._route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        message = await self._read_body(receive)
        if message is None:
            metrics.REJECTED.labels(route=self._route_of(scope["path"]), reason="body_timeout").inc()
            detail = (f"the request body did not arrive within {self._timeout_s:g} s of its headers; "
                      "send the whole body at once")
            await error_response(408, "body_timeout", detail, {"connection": "close"})(scope, receive, send)
            return
        handed_on = False

        async def replay() -> Message:
            nonlocal handed_on
            if handed_on:
                return await receive()
            handed_on = True
            return message

        await self._app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> Message | None:
        """The whole body as one message (or the client's disconnect); ``None`` if it is late."""
        chunks: list[bytes] = []
        with anyio.move_on_after(self._timeout_s):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return None
