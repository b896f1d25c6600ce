"""The event-log contract that every backend (Kafka, embedded SQLite) fulfils.

Delivery guarantee: **at-least-once**. ``publish`` buffers; an event is durable once ``flush``
returns without raising. A consumer's position advances as ``poll`` returns records, and is
stored only by ``commit``, which the caller invokes after the effect of those records is stored.
A consumer that dies before committing makes the next owner of its partitions re-read them, so
handlers dedupe by ``event_id`` (effectively once).

Ordering: events with the same key go to one partition and are read in publish order.

Bad messages never stop a consumer and are never silently dropped: a message that does not
decode (whatever the bytes: too large, not JSON, nested too deeply, unknown schema version,
schema mismatch) or whose handler keeps raising is republished by the group consumer that met
it to the ``dead-letters`` topic with the reason, counted, and skipped. A poll that fetched
only such messages is not "quiet" (``Batch.quiet``), and ``handle`` commits past them, so they
are dead-lettered once. A reader without a group (inspection, the latest-adapter scan) skips
them with a warning and a count, so that re-reading a topic does not repeat dead letters.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter

from streams import metrics
from streams.codec import (
    DEAD_LETTERS,
    MAX_EVENT_BYTES,
    DecodeError,
    EventError,
    check_topic,
    decode,
    encode,
)
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
    payload: bytes = field(default=b"", repr=False, compare=False)
    """The message as fetched: a record its handler cannot store is dead-lettered unchanged."""


@dataclass(frozen=True)
class Batch:
    """What one poll fetched: the decoded records, and the messages it could not decode."""

    records: list[Record]
    rejected: int
    """Messages fetched but not returned: dead-lettered (a group) or skipped (a reader)."""

    @property
    def quiet(self) -> bool:
        """Nothing arrived. A batch of only undecodable messages is not quiet: the log moved."""
        return not self.records and not self.rejected


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


BatchHandler = Callable[[Sequence[Record]], None]
"""Applies a batch of records all or nothing (one transaction), idempotently by ``event_id``."""

_DEAD_LETTER_PAYLOAD_BYTES = 512 * 1024
"""The most of an original message a dead letter keeps (base64 of it stays under the event limit)."""


class EventConsumer(ABC):
    """Reads decoded events; dead-letters the messages it cannot decode or handle."""

    def __init__(self, event_log: EventLog, group: str | None) -> None:
        self._event_log = event_log
        self.group = group

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Return up to ``max_records`` events, waiting up to ``timeout_s`` for the first.

        An empty list does not mean the log is quiet: every message fetched may have been
        dead-lettered. Loops that stop when quiet use ``poll_batch`` or ``handle``.
        """
        return self.poll_batch(max_records, timeout_s).records

    def poll_batch(self, max_records: int = 500, timeout_s: float = 1.0) -> Batch:
        """Fetch up to ``max_records`` messages (waiting up to ``timeout_s`` for the first),
        decode them, and dead-letter (a group) or skip (a reader) those that do not decode."""
        records = []
        rejected = 0
        for raw in self._fetch(max_records, timeout_s):
            try:
                event = decode(raw.topic, raw.payload)
            except DecodeError as error:
                rejected += 1
                # A reader owns no processing (the groups dead-letter); the dead-letter topic's
                # own bad messages are not sent back to it.
                if self.group is None or raw.topic == DEAD_LETTERS:
                    log.warning("skipped undecodable %s: %s", _where(raw), error)
                    metrics.EVENTS_SKIPPED.labels(topic=raw.topic, reason=error.reason).inc()
                else:
                    self.dead_letter(raw, error.reason, str(error))
                continue
            metrics.EVENTS_CONSUMED.labels(backend=self._event_log.backend, topic=raw.topic).inc()
            records.append(Record(
                raw.topic, raw.partition, raw.offset, raw.key, event, raw.timestamp, raw.payload
            ))
        return Batch(records, rejected)

    def commit(self) -> None:
        """Store the position of every record returned so far (after their effect is stored)."""
        if self.group is None:
            raise RuntimeError("a consumer without a group cannot commit; pass a group name")
        self._event_log.flush()  # dead letters first: a committed bad message must not be lost
        self._commit()

    def handle(
        self,
        handler: BatchHandler,
        *,
        max_records: int = 500,
        timeout_s: float = 1.0,
        attempts: int = 3,
        retry_backoff_s: float = 0.05,
        fatal: tuple[type[Exception], ...] = (),
    ) -> Batch:
        """Poll once, apply ``handler`` to the records, commit; return what the poll fetched.

        Retry, then dead-letter: a batch whose handler raises ``attempts`` times in a row
        (waiting ``retry_backoff_s``, doubling, between tries) is applied one record at a
        time, each up to ``attempts`` times; a record that still fails is dead-lettered with
        the error (reason ``handler_error``), counted, and skipped, so one poisoned event
        blocks neither its partition nor its batch. Errors of a type in ``fatal`` (the
        environment failing, such as the store's disk, rather than one record) are raised
        after the retries instead: nothing is dead-lettered or committed, and the batch is
        read again. With a group, positions are committed after every batch that was not
        quiet, one of only undecodable messages included.
        """
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        batch = self.poll_batch(max_records, timeout_s)
        if batch.records:
            self._handle_records(handler, batch.records, attempts, retry_backoff_s, fatal)
        if not batch.quiet and self.group is not None:
            self.commit()
        return batch

    def _handle_records(
        self,
        handler: BatchHandler,
        records: list[Record],
        attempts: int,
        backoff_s: float,
        fatal: tuple[type[Exception], ...],
    ) -> None:
        """The batch, else each record alone; dead-letter the records that keep failing."""
        failure = self._apply(handler, records, attempts, backoff_s, fatal)
        if failure is None:
            return
        if len(records) == 1:
            outcomes = [(records[0], failure)]
        else:
            log.warning("a batch of %d records failed %d times (%s); applying them one by one",
                        len(records), attempts, _describe(failure))
            outcomes = [
                (record, self._apply(handler, [record], attempts, backoff_s, fatal))
                for record in records
            ]
        for record, error in outcomes:
            if error is not None:
                log.error("handler failed %d times on %s", attempts, _where(record), exc_info=error)
                self.dead_letter(_as_raw(record), "handler_error", _describe(error))

    def _apply(
        self,
        handler: BatchHandler,
        records: Sequence[Record],
        attempts: int,
        backoff_s: float,
        fatal: tuple[type[Exception], ...],
    ) -> Exception | None:
        """Run ``handler`` on ``records`` up to ``attempts`` times; the last error if all failed."""
        error: Exception | None = None
        for attempt in range(attempts):
            if error is not None:
                metrics.HANDLER_RETRIES.labels(group=str(self.group)).inc()
                time.sleep(backoff_s * 2 ** (attempt - 1))
            try:
                handler(records)
                return None
            except Exception as failure:  # noqa: BLE001 - retried, then dead-lettered or raised
                error = failure
        if isinstance(error, fatal):
            raise error
        return error

    def dead_letter(self, raw: RawRecord, reason: str, message: str) -> None:
        """Republish ``raw`` to the dead-letter topic with ``reason``, and count it.

        The letter keeps the original bytes (as text, or base64 if they are not UTF-8), their
        size and SHA-256; of a message too large to fit in a letter it keeps the first 512 KiB.
        """
        letter = _dead_letter_event(raw, reason, message, raw.payload)
        if len(letter.model_dump_json()) > MAX_EVENT_BYTES:
            letter = _dead_letter_event(
                raw, reason, message, raw.payload[:_DEAD_LETTER_PAYLOAD_BYTES], as_base64=True
            )
        log.warning("dead-lettered %s: %s: %s", _where(raw), reason, message[:500])
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


def _dead_letter_event(
    raw: RawRecord, reason: str, message: str, kept: bytes, *, as_base64: bool = False
) -> DeadLetterEvent:
    """The dead letter of ``raw`` keeping ``kept`` (all or the start of its payload)."""
    text = None if as_base64 else _utf8_or_none(kept)
    if text is None:
        payload, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    else:
        payload, encoding = text, "utf-8"
    return DeadLetterEvent(
        source_topic=raw.topic,
        source_partition=raw.partition,
        source_offset=raw.offset,
        key=raw.key[:1000] if raw.key is not None else None,
        payload=payload,
        payload_encoding=encoding,
        payload_size=len(raw.payload),
        payload_sha256=hashlib.sha256(raw.payload).hexdigest(),
        payload_truncated=len(kept) < len(raw.payload),
        reason=reason,
        detail={"message": message[:2000]},
    )


def _utf8_or_none(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _as_raw(record: Record) -> RawRecord:
    return RawRecord(
        record.topic, record.partition, record.offset, record.key, record.payload, record.timestamp
    )


def _where(record: RawRecord | Record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"
