"""Explicit serialisation of events to bytes and back, one schema per topic.

Wire format: UTF-8 JSON of the event's pydantic model. ``decode`` never returns a half-valid
event and never raises anything but ``DecodeError``, whatever the bytes: its ``reason`` is a
short, countable label (see ``DECODE_REASONS``) and its message says what was wrong, so that the
consumer can move the message to the dead-letter topic with that reason.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from common.errors import UserError
from streams.events import (
    SCHEMA_VERSION,
    AdapterPublishedEvent,
    CompletionEvent,
    DeadLetterEvent,
    Event,
    FeedbackEvent,
)

COMPLETIONS = "completions"
FEEDBACK = "feedback"
ADAPTERS = "adapters"
DEAD_LETTERS = "dead-letters"

TOPIC_SCHEMAS: dict[str, TypeAdapter[Any]] = {
    COMPLETIONS: TypeAdapter(CompletionEvent),
    FEEDBACK: TypeAdapter(FeedbackEvent),
    ADAPTERS: TypeAdapter(AdapterPublishedEvent),
    DEAD_LETTERS: TypeAdapter(DeadLetterEvent),
}
"""The logical topics and the one schema each carries."""

COMPACTED_TOPICS = frozenset({ADAPTERS})
"""Topics whose readers want the latest event per key (Kafka ``cleanup.policy=compact``)."""

MAX_EVENT_BYTES = 1_000_000
"""The largest encoded event accepted (Kafka's default ``message.max.bytes`` is about 1 MB)."""


class EventError(ValueError):
    """Base of the errors an event can be refused with; ``reason`` is a metric label."""

    reason = "invalid_event"


class UnknownTopicError(EventError, UserError):
    """A topic that is not one of ``TOPIC_SCHEMAS`` (a user's mistake where a user names it)."""

    reason = "unknown_topic"

    def __init__(self, topic: str) -> None:
        super().__init__(f"unknown topic {topic!r}; known topics: {sorted(TOPIC_SCHEMAS)}")


class WrongEventTypeError(EventError):
    """An event published to a topic that carries another schema."""

    reason = "wrong_event_type"


class UnencodableEventError(EventError):
    """An event holding text that UTF-8 cannot encode (a lone surrogate)."""

    reason = "unencodable"


class EventTooLargeError(EventError):
    """An event whose encoding exceeds ``MAX_EVENT_BYTES``."""

    reason = "too_large"


DECODE_REASONS = (
    "too_large",  # more than MAX_EVENT_BYTES
    "invalid_json",  # not UTF-8, or not JSON
    "too_deep",  # nested deeper than the parser's recursion limit
    "unsupported_schema_version",
    "schema_mismatch",  # JSON, but not the topic's schema
    "undecodable",  # anything else the parser or validator raised
)
"""Every ``DecodeError.reason``: a bounded set, so they are safe as metric labels."""


class DecodeError(EventError):
    """Bytes that are not a valid event of the topic's schema; ``reason`` is in ``DECODE_REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_topic(topic: str) -> None:
    """Raise ``UnknownTopicError`` unless ``topic`` is a known logical topic."""
    if topic not in TOPIC_SCHEMAS:
        raise UnknownTopicError(topic)


def encode(topic: str, event: Event) -> bytes:
    """Serialise ``event`` for ``topic``, refusing a wrong type, text UTF-8 cannot encode or an
    oversized event (an ``EventError`` whose ``reason`` says which)."""
    check_topic(topic)
    schema = TOPIC_SCHEMAS[topic]
    try:
        schema.validate_python(event)
    except ValidationError as error:
        raise WrongEventTypeError(
            f"topic {topic!r} does not carry {type(event).__name__}: {error.errors()[0]['msg']}"
        ) from error
    try:
        payload = event.model_dump_json().encode("utf-8")
    except PydanticSerializationError as error:
        raise UnencodableEventError(
            f"{type(event).__name__} {event.event_id} cannot be encoded: {error}"
        ) from error
    if len(payload) > MAX_EVENT_BYTES:
        raise EventTooLargeError(
            f"{type(event).__name__} {event.event_id} encodes to {len(payload):,} bytes; "
            f"the limit is {MAX_EVENT_BYTES:,}: shorten its text fields"
        )
    return payload


def decode(topic: str, payload: bytes) -> Event:
    """Parse ``payload`` as an event of ``topic``'s schema or raise ``DecodeError``.

    No other exception escapes for any ``payload`` (a consumer must be able to dead-letter
    every message it meets); ``UnknownTopicError`` is raised for an unknown ``topic``.
    """
    check_topic(topic)
    if len(payload) > MAX_EVENT_BYTES:
        raise DecodeError("too_large", f"{len(payload):,} bytes exceeds {MAX_EVENT_BYTES:,}")
    try:
        return _decode(topic, payload)
    except DecodeError:
        raise
    except RecursionError as error:
        raise DecodeError("too_deep", f"nested too deeply to parse: {error}") from error
    except Exception as error:  # noqa: BLE001 - any failure of untrusted bytes is a dead letter
        raise DecodeError("undecodable", f"{type(error).__name__}: {error}") from error


def _decode(topic: str, payload: bytes) -> Event:
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DecodeError("invalid_json", f"not UTF-8 JSON: {error}") from error
    if not isinstance(document, dict):
        raise DecodeError("schema_mismatch", f"expected a JSON object, got {type(document).__name__}")
    version = document.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DecodeError(
            "unsupported_schema_version",
            f"schema_version {version!r:.80} is not {SCHEMA_VERSION}, the version this build reads",
        )
    try:
        return TOPIC_SCHEMAS[topic].validate_python(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise DecodeError(
            "schema_mismatch",
            f"{error.error_count()} schema error(s); first at {where:.200}: {first['msg']:.200}",
        ) from error
