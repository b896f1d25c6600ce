"""Per-caller request rate (a token bucket) and concurrency, enforced as ASGI middleware.

Who the caller is: with auth on, the user a valid API key names (a user's keys share one
quota: keys are credentials of the identity, so a second key must not double it); otherwise
(auth off, or a missing or wrong key) the client address. Not the ``user`` field: anyone may
write any value there, so a limit keyed on it is escaped by changing it, and lets one client
spend another user's quota. Behind a reverse proxy the address comes from ``X-Forwarded-For``
of a trusted proxy (``HHH_LIMITS_FORWARDED_ALLOW_IPS``).

Token bucket: a caller holds up to ``burst`` tokens, refilled at ``rate_per_s``; a request
takes one, or is refused with 429 and ``Retry-After`` (whole seconds until a token is there).
A request in flight (a stream until its last chunk) holds a concurrency slot; beyond
``concurrent_per_caller`` it is refused with 429 and ``Retry-After: 1``. Memory stays bounded:
a bucket that has refilled is the same as a new one, so the least recently seen callers are
forgotten once they are full (and once more than ``max_callers`` are kept, regardless).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from serving import metrics
from serving.errors import error_response
from serving.limits.config import LimitSettings

LIMITED_PREFIXES = ("/v1/", "/admin/")
"""Paths the limits apply to: the API (health checks, metrics and the page's files are free)."""


@dataclass(frozen=True)
class Refusal:
    """Why a request may not run now, and when to try again."""

    reason: str
    """Metric label and OpenAI error code: ``rate_limited`` or ``too_many_concurrent_requests``."""
    detail: str
    retry_after_s: int


@dataclass
class _Bucket:
    tokens: float
    updated: float


class CallerLimiter:
    """Token bucket and in-flight count per caller; ``admit`` then ``release`` per request."""

    def __init__(self, settings: LimitSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}  # least recently seen first
        self._in_flight: dict[str, int] = {}

    def admit(self, caller: str) -> Refusal | None:
        """Take a token and a concurrency slot for ``caller``, or say why not (taking nothing)."""
        settings = self._settings
        if settings.concurrent_per_caller and self._in_flight.get(caller, 0) >= settings.concurrent_per_caller:
            return Refusal(
                "too_many_concurrent_requests",
                f"too many concurrent requests: at most {settings.concurrent_per_caller} at once "
                "per caller; wait for one to finish",
                1,
            )
        if settings.rate_per_s:
            wait_s = self._take(caller)
            if wait_s > 0:
                return Refusal(
                    "rate_limited",
                    f"rate limit exceeded: at most {settings.rate_per_s:g} requests/s per caller "
                    f"(bursts of {settings.burst}); retry in {math.ceil(wait_s)} s",
                    math.ceil(wait_s),
                )
        self._in_flight[caller] = self._in_flight.get(caller, 0) + 1
        return None

    def release(self, caller: str) -> None:
        """The request that ``admit`` let in has ended."""
        left = self._in_flight.pop(caller) - 1
        if left:
            self._in_flight[caller] = left

    @property
    def tracked_callers(self) -> int:
        """How many callers' buckets are kept now."""
        return len(self._buckets)

    def _take(self, caller: str) -> float:
        """Take one token; 0.0 if there was one, else the seconds until there is."""
        rate, burst, now = self._settings.rate_per_s, self._settings.burst, self._clock()
        bucket = self._buckets.pop(caller, None) or _Bucket(float(burst), now)
        self._forget_idle(now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        self._buckets[caller] = bucket  # now the most recently seen
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate

    def _forget_idle(self, now: float) -> None:
        """Drop the least recently seen buckets while they are full (or too many are kept)."""
        rate, burst = self._settings.rate_per_s, self._settings.burst
        while self._buckets:
            caller = next(iter(self._buckets))
            bucket = self._buckets[caller]
            full = bucket.tokens + (now - bucket.updated) * rate >= burst
            if not full and len(self._buckets) < self._settings.max_callers:
                return
            del self._buckets[caller]


class CallerLimits:
    """ASGI middleware: refuse a caller's request beyond its rate or concurrency (429).

    ``user_of_key``: the user an API key names, ``None`` for no valid key (auth off: always
    ``None``). ``route_of``: the bounded route label of a path, for the rejection metric.
    """

    def __init__(
        self, app: ASGIApp, *, settings: LimitSettings,
        user_of_key: Callable[[str], str | None], route_of: Callable[[str], str],
    ) -> None:
        self._app = app
        self._limiter = CallerLimiter(settings)
        self._user_of_key = user_of_key
        self._route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(LIMITED_PREFIXES):
            await self._app(scope, receive, send)
            return
        caller = self._caller(scope)
        refusal = self._limiter.admit(caller)
        if refusal is not None:
            metrics.REJECTED.labels(route=self._route_of(scope["path"]), reason=refusal.reason).inc()
            response = error_response(
                429, refusal.reason, refusal.detail, {"retry-after": str(refusal.retry_after_s)}
            )
            await response(scope, receive, send)
            return
        try:
            await self._app(scope, receive, send)
        finally:
            self._limiter.release(caller)

    def _caller(self, scope: Scope) -> str:
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if authorization[:7].lower() == "bearer ":
            user = self._user_of_key(authorization[7:].strip())
            if user is not None:
                return f"user:{user}"
        client = scope.get("client")
        return f"address:{client[0] if client else 'unknown'}"
