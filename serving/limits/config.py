"""What one caller, one connection and one request may ask of the gateway (``HHH_LIMITS_*``).

On by default with generous values: an ordinary client never meets them, a flood or a
pathological request does. Benchmarks that drive one caller hard raise the per-caller limits
(``0`` turns the rate or the concurrency limit off).

The per-caller limits are counted by each gateway process: with ``HHH_GATEWAY_WORKERS`` = N,
a caller whose connections reach several workers gets up to N times them (a single keep-alive
connection stays on one worker and gets them once). They are deliberately not divided by N,
which would refuse a single-connection caller at 1/N of its limit; configure limit / N where
the exact bound matters.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.events import Criterion

DEFAULT_CRITERIA = ("helpfulness", "harmlessness", "honesty", "overall")
"""The criteria feedback may name unless the operator configures others (the chat page offers
the first three)."""


class LimitSettings(BaseSettings):
    """Per-caller rate and concurrency, server timeouts, and caps on request fields."""

    model_config = SettingsConfigDict(env_prefix="HHH_LIMITS_", extra="forbid")

    rate_per_s: float = Field(
        default=20.0, ge=0,
        description="Sustained requests per second per caller and gateway worker (token bucket "
        "refill); 0: no rate limit.",
    )
    burst: int = Field(
        default=100, ge=1,
        description="Requests a caller may send at once (per gateway worker) before the rate applies."
    )
    concurrent_per_caller: int = Field(
        default=16, ge=0,
        description="Requests one caller may have in flight at once, per gateway worker; 0: no limit."
    )
    max_callers: int = Field(
        default=100_000, ge=1,
        description="Callers whose rate state is kept; idle callers (full buckets) are forgotten "
        "first, so this bounds memory, not who may call.",
    )
    keep_alive_timeout_s: float = Field(
        default=5.0, gt=0, description="An idle keep-alive connection is closed after this long."
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0,
        description="A connection must send a request's complete headers within this long of "
        "opening (or of its previous response), or it is closed.",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0,
        description="A request's complete body must arrive within this long of its headers (408).",
    )
    max_header_bytes: int = Field(
        default=65_536, ge=1024, description="Largest request line plus headers (431 beyond)."
    )
    max_connections: int = Field(
        default=1000, ge=1,
        description="Connections and requests the server holds at once; beyond it, 503.",
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Comma-separated addresses of reverse proxies whose X-Forwarded-For names "
        "the client (the caller of the limits when auth is off); '*' trusts every peer.",
    )
    max_stop: int = Field(default=16, ge=1, description="Most `stop` strings in one request.")
    max_stop_chars: int = Field(default=256, ge=1, description="Longest `stop` string.")
    max_logit_bias: int = Field(default=300, ge=1, description="Most `logit_bias` entries.")
    max_schema_bytes: int = Field(
        default=65_536, ge=256,
        description="Largest `response_format`, `tools` or `structured_outputs.json`, as JSON.",
    )
    max_schema_depth: int = Field(
        default=64, ge=2,
        description="Deepest nesting of JSON objects and lists in those schemas (a property "
        "nested in an object schema costs two: the schema and its `properties`).",
    )
    max_regex_chars: int = Field(
        default=1000, ge=1,
        description="Longest regular expression: `structured_outputs.regex` and every `pattern` "
        "(or `patternProperties` key) in a JSON schema.",
    )
    max_choices: int = Field(
        default=256, ge=1, description="Most options of `structured_outputs.choice`."
    )
    criteria: tuple[Criterion, ...] = Field(
        default=DEFAULT_CRITERIA, min_length=1,
        description="Criteria feedback may name (JSON list); they are metric labels, so the set "
        "is closed.",
    )

