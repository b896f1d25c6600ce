"""Prometheus metrics of the event log and the outbox (one registry: the process default; with
gateway workers, prometheus_client's multiprocess files: see `serving.metrics`)."""

from prometheus_client import Counter, Gauge

EVENTS_PUBLISHED = Counter(
    "hhh_events_published_total", "Events handed to the event log.", ["backend", "topic"]
)
EVENTS_CONSUMED = Counter(
    "hhh_events_consumed_total", "Valid events returned to consumers.", ["backend", "topic"]
)
EVENTS_REJECTED = Counter(
    "hhh_events_rejected_total",
    "Events refused at publish time (unknown topic, wrong type, unencodable, too large): "
    "they are not in the event log.",
    ["topic", "reason"],
)
EVENTS_DEAD_LETTERED = Counter(
    "hhh_events_dead_lettered_total",
    "Messages moved to the dead-letter topic by a consumer: reason is a decode failure"
    " (streams.codec.DECODE_REASONS) or handler_error.",
    ["topic", "reason"],
)
HANDLER_RETRIES = Counter(
    "hhh_event_handler_retries_total",
    "Handler failures a consumer retried (a record failing every retry is dead-lettered).",
    ["group"],
)
EVENTS_SKIPPED = Counter(
    "hhh_events_skipped_total",
    "Undecodable messages a reader without a group skipped (groups dead-letter them instead).",
    ["topic", "reason"],
)

OUTBOX_DEPTH = Gauge(
    "hhh_outbox_depth", "Events in the outbox not yet delivered.", ["outbox"], multiprocess_mode="livesum"
)
OUTBOX_DELIVERED = Counter(
    "hhh_outbox_delivered_total", "Events delivered from the outbox to the event log.", ["outbox"]
)
OUTBOX_FAILED = Counter(
    "hhh_outbox_delivery_failures_total",
    "Delivery attempts that failed (the events stay in the outbox and are retried).",
    ["outbox"],
)
OUTBOX_DEAD_LETTERED = Counter(
    "hhh_outbox_dead_lettered_total",
    "Events the outbox could never deliver, kept in its dead-letter table.",
    ["outbox", "reason"],
)
