"""Prometheus metrics of the gateway (process default registry, served at ``/metrics``).

With gateway workers (``HHH_GATEWAY_WORKERS`` > 1) every worker is started with
``PROMETHEUS_MULTIPROC_DIR`` (a folder private to one `hhh serve`), so each writes its values to
files there, and ``/metrics`` on the one port, whichever worker answers, reports all of them
(`exposition`): counters and histograms summed over every worker that ran since the start (a
restarted worker's counts stay in: rates never dip), gauges as their ``multiprocess_mode`` says,
over the workers alive. Without the variable the process's own registry is served, as before.

Thumbs-up ratio per adapter version, as one PromQL expression:

    sum by (adapter) (rate(hhh_feedback_total{kind="thumbs", vote="up"}[1h]))
      / sum by (adapter) (rate(hhh_feedback_total{kind="thumbs"}[1h]))
"""

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from streams.events import AdapterRef

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

HTTP_REQUESTS = Counter(
    "hhh_http_requests_total", "HTTP requests by route and status.", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "hhh_http_request_duration_seconds", "Time to the full response, by route.", ["route"],
    buckets=_LATENCY_BUCKETS,
)
REJECTED = Counter(
    "hhh_rejected_requests_total",
    "Requests refused with a 4xx, by route and reason.",
    ["route", "reason"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "hhh_chat_time_to_first_token_seconds", "Chat: request received to first content.",
    ["adapter_scope"], buckets=_LATENCY_BUCKETS,
)
CHAT_LATENCY = Histogram(
    "hhh_chat_latency_seconds", "Chat: request received to last token.", ["adapter_scope"],
    buckets=_LATENCY_BUCKETS,
)
CHAT_IN_FLIGHT = Gauge(
    "hhh_chat_requests_in_flight",
    "Chat completion requests received and not yet fully answered (streams until their last "
    "chunk). A co-located trainer pauses while it is high (HHH_TRAINER_YIELD_ABOVE_CHATS).",
    multiprocess_mode="livesum",
)
TOKENS = Counter("hhh_chat_tokens_total", "Tokens in prompts and completions.", ["direction"])
FEEDBACK = Counter(
    "hhh_feedback_total",
    "Accepted feedback. vote: up/down for thumbs, 'ranking' for rankings; adapter: what "
    "served the rated (for rankings: the best-ranked) completion: base, global@<version>, or "
    "user for every personal adapter (one label value per user would grow without bound).",
    ["kind", "criterion", "vote", "adapter"],
)
ENGINE_UP = Gauge(
    "hhh_engine_up", "1 while the engine answers health checks (of every worker).", ["engine"],
    multiprocess_mode="livemin",
)

ADAPTER_LIVE_VERSION = Gauge(
    "hhh_adapter_live_version",
    "Adapter version this replica serves, per scope (0: none); with workers, the lowest of theirs.",
    ["scope"], multiprocess_mode="livemin",
)
ADAPTER_SWAPS = Counter(
    "hhh_adapter_swaps_total", "Adapter versions switched live, by scope kind (global/user).",
    ["scope_kind"],
)
ADAPTER_SWAP_SECONDS = Histogram(
    "hhh_adapter_swap_seconds",
    "Adapter event received to the first request served by the new version.",
    buckets=_LATENCY_BUCKETS,
)
ADAPTER_REFUSED = Counter(
    "hhh_adapter_refused_total", "Adapter versions refused (the old one kept serving), by reason.",
    ["reason"],
)
ADAPTER_CONTROLLER_FAILURES = Counter(
    "hhh_adapter_controller_failures_total",
    "Times this replica's hot-swap controller stopped following the adapters topic on an error "
    "(the event log could not be opened or read, a commit failed) and started again.",
)
ADAPTERS_LOADED = Gauge(
    "hhh_adapters_loaded", "Adapters this replica (all its workers) has loaded into each engine.",
    ["engine"], multiprocess_mode="livesum",
)


def exposition() -> bytes:
    """The text ``/metrics`` serves: every worker's values where ``PROMETHEUS_MULTIPROC_DIR`` is
    set, else this process's registry."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


def feedback_adapter_label(adapter: AdapterRef) -> str:
    """The ``adapter`` label of `FEEDBACK`: ``base``, ``global@<version>``, or ``user`` for any
    personal adapter, so that the label's values stay as few as the global versions."""
    return "user" if adapter.scope.startswith("user:") else adapter.label
