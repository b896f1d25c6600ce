"""The event-log contract that every backend (Kafka, embedded SQLite) fulfils.

Delivery guarantee: **at-least-once**. ``publish`` buffers; an event is durable once ``flush``
returns without raising. A consumer's position advances as ``poll`` returns records, and is
stored only by ``commit``, which the caller invokes after the effect of those records is stored.
A consumer that dies before committing makes the next owner of its partitions re-read them, so
handlers dedupe by ``event_id`` (effectively once).

Ordering: events with the same key go to one partition and are read in publish order.

Bad messages never stop a consumer and are never silently dropped: a message that does not
decode (invalid JSON, unknown schema version, schema mismatch) or whose handler keeps raising
is republished by the group consumer that met it to the ``dead-letters`` topic with the
reason, counted, and skipped. A reader without a group (inspection, the latest-adapter scan)
skips it with a warning and a count, so that re-reading a topic does not repeat dead letters.
"""

from __future__ import annotations

import base64
import functools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter

from streams import metrics
from streams.codec import DEAD_LETTERS, DecodeError, EventError, check_topic, decode, encode
from streams.events import DeadLetterEvent, Event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawRecord:
    """A message as a backend fetched it, before decoding."""

    topic: str
    partition: int
    offset: int
    key: str | None
    payload: bytes
    timestamp: datetime


@dataclass(frozen=True)
class Record:
    """A decoded event with its position in the log."""

    topic: str
    partition: int
    offset: int
    key: str | None
    event: Event
    timestamp: datetime


class EventLog(ABC):
    """Publishes events to topics and opens consumers on them."""

    backend: str
    """Short backend name, a metric label."""

    def publish(self, topic: str, key: str | None, event: Event) -> None:
        """Validate and encode ``event`` and hand it to the log; durable after ``flush``.

        Raises an ``EventError`` subclass (unknown topic, wrong event type, too large), counted
        in ``hhh_events_rejected_total``; nothing is published then.
        """
        try:
            payload = encode(topic, event)
        except EventError as error:
            metrics.EVENTS_REJECTED.labels(topic=topic, reason=error.reason).inc()
            raise
        self.publish_bytes(topic, key, payload)

    def publish_bytes(self, topic: str, key: str | None, payload: bytes) -> None:
        """Publish an already-encoded event (the outbox stores events encoded)."""
        check_topic(topic)
        self._send(topic, key, payload)
        _published_counter(self.backend, topic).inc()

    @abstractmethod
    def _send(self, topic: str, key: str | None, payload: bytes) -> None:
        """Buffer one encoded message for ``topic`` (a known logical topic)."""

    @abstractmethod
    def flush(self, timeout_s: float | None = None) -> None:
        """Block until everything published so far is durable; raise if any of it failed."""

    @abstractmethod
    def create_topics(self) -> None:
        """Create every known topic if it does not exist (idempotent)."""

    @abstractmethod
    def consumer(
        self, group: str | None, topics: Sequence[str], *, from_beginning: bool = False
    ) -> EventConsumer:
        """Open a consumer of ``topics``.

        ``group``: consumers of one group share the partitions, and the group's committed offsets
        say where a new member starts. ``None`` opens a reader without a group: it reads every
        partition from the beginning and cannot commit (for reading the compacted ``adapters``
        topic, or inspecting the log). ``from_beginning`` ignores the group's committed offsets
        (a rebuild) for partitions this consumer gets.
        """

    @abstractmethod
    def close(self) -> None:
        """Flush and release connections."""

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


Handler = Callable[[Record], None]


class EventConsumer(ABC):
    """Reads decoded events; dead-letters the messages it cannot decode."""

    def __init__(self, event_log: EventLog, group: str | None) -> None:
        self._event_log = event_log
        self.group = group

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Return up to ``max_records`` events, waiting up to ``timeout_s`` for the first."""
        records = []
        for raw in self._fetch(max_records, timeout_s):
            try:
                event = decode(raw.topic, raw.payload)
            except DecodeError as error:
                if self.group is None:  # a reader owns no processing: the groups dead-letter
                    log.warning("skipped undecodable %s: %s", _where(raw), error)
                    metrics.EVENTS_SKIPPED.labels(topic=raw.topic, reason=error.reason).inc()
                else:
                    self.dead_letter(raw, error.reason, str(error))
                continue
            metrics.EVENTS_CONSUMED.labels(backend=self._event_log.backend, topic=raw.topic).inc()
            records.append(
                Record(raw.topic, raw.partition, raw.offset, raw.key, event, raw.timestamp)
            )
        return records

    def commit(self) -> None:
        """Store the position of every record returned so far (after their effect is stored)."""
        if self.group is None:
            raise RuntimeError("a consumer without a group cannot commit; pass a group name")
        self._event_log.flush()  # dead letters first: a committed bad message must not be lost
        self._commit()

    def handle(
        self,
        handler: Handler,
        *,
        max_records: int = 500,
        timeout_s: float = 1.0,
        attempts: int = 3,
    ) -> int:
        """Poll once, run ``handler`` on each record, commit; return the records handled.

        A record whose handler raises ``attempts`` times in a row is dead-lettered with the
        error, counted, and skipped: one poisoned event does not block the partition.
        """
        records = self.poll(max_records, timeout_s)
        for record in records:
            for attempt in range(1, attempts + 1):
                try:
                    handler(record)
                    break
                except Exception as error:  # noqa: BLE001 - any handler failure is dead-lettered
                    if attempt == attempts:
                        log.exception("handler failed %d times on %s", attempts, _where(record))
                        self.dead_letter(
                            _as_raw(record), "handler_error", f"{type(error).__name__}: {error}"
                        )
        if records and self.group is not None:
            self.commit()
        return len(records)

    def dead_letter(self, raw: RawRecord, reason: str, message: str) -> None:
        """Republish ``raw`` to the dead-letter topic with ``reason``, and count it."""
        try:
            payload, encoding = raw.payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw.payload).decode("ascii"), "base64"
        letter = DeadLetterEvent(
            source_topic=raw.topic,
            source_partition=raw.partition,
            source_offset=raw.offset,
            key=raw.key,
            payload=payload,
            payload_encoding=encoding,
            reason=reason,
            detail={"message": message[:2000]},
        )
        log.warning("dead-lettered %s: %s: %s", _where(raw), reason, message)
        self._event_log.publish(DEAD_LETTERS, raw.topic, letter)
        metrics.EVENTS_DEAD_LETTERED.labels(topic=raw.topic, reason=reason).inc()

    def wait_for_assignment(self, timeout_s: float = 30.0) -> set[tuple[str, int]]:
        """Poll (keeping returned records for later) until partitions are assigned."""
        deadline = time.monotonic() + timeout_s
        while not (assigned := self.assignment()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partitions assigned to group {self.group!r} in {timeout_s}s")
            self._join()
        return assigned

    @abstractmethod
    def _fetch(self, max_records: int, timeout_s: float) -> Iterable[RawRecord]:
        """Fetch raw messages from the current position, advancing it."""

    @abstractmethod
    def _commit(self) -> None:
        """Store the current positions of the owned partitions for the group."""

    @abstractmethod
    def _join(self) -> None:
        """Take part in the group's assignment once without consuming messages."""

    @abstractmethod
    def assignment(self) -> set[tuple[str, int]]:
        """The (logical topic, partition) pairs this consumer owns now."""

    @abstractmethod
    def seek_to_beginning(self) -> None:
        """Move the position of every owned partition to its first message."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group (without committing) and release the connection."""

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@functools.cache
def _published_counter(backend: str, topic: str) -> Counter:
    """The labelled counter child, looked up once (``labels`` costs more than ``inc``)."""
    return metrics.EVENTS_PUBLISHED.labels(backend=backend, topic=topic)


def _as_raw(record: Record) -> RawRecord:
    payload = record.event.model_dump_json().encode("utf-8")
    return RawRecord(record.topic, record.partition, record.offset, record.key, payload, record.timestamp)


def _where(record: RawRecord | Record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"
