"""The outbox: a local, durable queue between a request path and the event log.

``Outbox.put`` validates and encodes the event (so a bad event fails the request that made it,
with a clear error), stores it in a local SQLite file and returns: the request never waits on
the broker. An ``OutboxDrainer`` thread delivers stored events to the event log in batches and
deletes them only after the log confirmed the batch (``flush``), retrying with exponential
backoff while the log is unreachable, and reconnecting from scratch after a failure (a
restarted test broker forgets topics and producers).

Guarantee: **at-least-once**. A crash between the log's acknowledgement and the delete
re-delivers that batch; consumers dedupe by ``event_id``. An event the log refuses for good
(a topic this build does not know, a size the broker rejects) is moved to the outbox's
``dead_letters`` table with the reason and counted: never dropped, never blocking the queue.
Run one drainer per outbox file.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kafka.errors import MessageSizeTooLargeError

from common.files import private_file
from common.sqlite import connect
from streams import metrics
from streams.codec import EventError, encode
from streams.events import Event
from streams.log import EventLog

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key TEXT,
    payload BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, key TEXT, payload BLOB NOT NULL,
    created REAL NOT NULL, reason TEXT NOT NULL, dead_at REAL NOT NULL);
"""

_PERMANENT_ERRORS = (EventError, MessageSizeTooLargeError)
"""Errors that retrying cannot cure: the event is dead-lettered instead."""


@dataclass(frozen=True)
class OutboxEntry:
    """One stored, encoded event."""

    id: int
    topic: str
    key: str | None
    payload: bytes


class Outbox:
    """A durable queue of encoded events in one SQLite file (thread-safe)."""

    def __init__(self, path: Path, *, name: str = "default", durable_sync: bool = False) -> None:
        """Open (creating if needed) the outbox at ``path``; ``name`` labels its metrics.

        ``durable_sync`` fsyncs every put (survives power loss); by default a put survives a
        process crash, which is what a gateway restart needs.
        """
        self.path = Path(path)
        private_file(self.path)  # every user's prompts: owner only
        self.name = name
        self._connection = connect(self.path, durable_sync=durable_sync)
        self._connection.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._has_work = threading.Event()
        self._queue_lock = threading.Lock()
        self._queue: list[tuple[list[tuple], asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._queued = threading.Event()
        self._committer: threading.Thread | None = None
        self._closed = False
        self._depth = self._connection.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self._publish_depth()

    def put(self, topic: str, key: str | None, event: Event) -> None:
        """Store ``event`` for delivery to ``topic``; durable when this returns.

        Raises an ``EventError`` (unknown topic, wrong type, too large) and stores nothing.
        """
        self.put_many([(topic, key, event)])

    def put_many(self, items: list[tuple[str, str | None, Event]]) -> None:
        """Store several events in one transaction: all of them or (on error) none."""
        self._insert(self._encode(items))

    async def put_many_async(self, items: list[tuple[str, str | None, Event]]) -> None:
        """``put_many`` for an event loop, with group commit: durable when the await returns.

        The events are validated here (errors raise at once); the insert waits for the
        committer thread, which stores every batch queued meanwhile in one transaction. So the
        loop never blocks on SQLite, and N concurrent requests cost one commit, not N.
        """
        rows = self._encode(items)
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[None] = loop.create_future()
        with self._queue_lock:
            if self._closed:
                raise RuntimeError(f"outbox {self.name} is closed")
            self._queue.append((rows, loop, stored))
            if self._committer is None:
                self._committer = threading.Thread(
                    target=self._commit_queued, name=f"outbox-commit-{self.name}", daemon=True
                )
                self._committer.start()
        self._queued.set()
        await stored

    def _encode(self, items: list[tuple[str, str | None, Event]]) -> list[tuple]:
        rows = []
        for topic, key, event in items:
            try:
                rows.append((topic, key, encode(topic, event), time.time()))
            except EventError as error:
                metrics.EVENTS_REJECTED.labels(topic=topic, reason=error.reason).inc()
                raise
        return rows

    def _insert(self, rows: list[tuple]) -> None:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._connection.executemany(
                    "INSERT INTO outbox (topic, key, payload, created) VALUES (?, ?, ?, ?)", rows
                )
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._depth += len(rows)
        self._publish_depth()
        self._has_work.set()

    def _commit_queued(self) -> None:
        """The committer thread: one transaction per gathering of queued async puts."""
        while True:
            self._queued.wait()
            with self._queue_lock:
                self._queued.clear()
                batch, self._queue = self._queue, []
                closing = self._closed
            if batch:
                error: BaseException | None = None
                try:
                    self._insert([row for rows, _, _ in batch for row in rows])
                except Exception as failure:  # noqa: BLE001 - handed to every waiting caller
                    error = failure
                for _, loop, stored in batch:
                    loop.call_soon_threadsafe(_settle, stored, error)
            if closing:
                return

    def depth(self) -> int:
        """Events waiting for delivery."""
        return self._depth

    def take(self, limit: int) -> list[OutboxEntry]:
        """The oldest ``limit`` waiting events (not removed: ``remove`` them once delivered)."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT id, topic, key, payload FROM outbox ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [OutboxEntry(*row) for row in rows]

    def remove_through(self, last_id: int) -> None:
        """Forget every event up to ``last_id``: the delivered head of the queue.

        Ids only grow (AUTOINCREMENT under SQLite's single writer), and ``take`` returns the
        oldest rows, so after a batch is delivered (or dead-lettered) nothing at or below its
        last id is still waiting.
        """
        with self._lock:
            removed = self._connection.execute("DELETE FROM outbox WHERE id <= ?", (last_id,)).rowcount
            self._depth -= removed
        self._publish_depth()

    def dead_letter(self, entry: OutboxEntry, reason: str) -> None:
        """Move ``entry`` to the dead-letter table with ``reason``."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            self._connection.execute(
                "INSERT INTO dead_letters SELECT id, topic, key, payload, created, ?, ?"
                " FROM outbox WHERE id = ?",
                (reason, time.time(), entry.id),
            )
            self._connection.execute("DELETE FROM outbox WHERE id = ?", (entry.id,))
            self._connection.execute("COMMIT")
            self._depth -= 1
        self._publish_depth()
        metrics.OUTBOX_DEAD_LETTERED.labels(outbox=self.name, reason=reason.split(":")[0]).inc()

    def dead_letters(self) -> list[tuple[OutboxEntry, str]]:
        """Every dead-lettered event with its reason, oldest first."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT id, topic, key, payload, reason FROM dead_letters ORDER BY id"
            ).fetchall()
        return [(OutboxEntry(*row[:4]), row[4]) for row in rows]

    def wait_for_work(self, timeout_s: float) -> None:
        """Block until something is put (or ``wake`` is called), or ``timeout_s`` passed."""
        self._has_work.wait(timeout_s)
        self._has_work.clear()

    def wake(self) -> None:
        """Release a ``wait_for_work`` now."""
        self._has_work.set()

    def close(self) -> None:
        """Finish queued async puts, then close the file (stored events stay)."""
        with self._queue_lock:
            self._closed = True
            committer = self._committer
        self._queued.set()
        if committer is not None:
            committer.join()
        with self._lock:
            self._connection.close()

    def _publish_depth(self) -> None:
        metrics.OUTBOX_DEPTH.labels(outbox=self.name).set(self._depth)


class OutboxDrainer:
    """Delivers an outbox to an event log in the background (see the module docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        connect: Callable[[], EventLog],
        *,
        batch_size: int = 1000,
        flush_timeout_s: float = 30.0,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        linger_s: float = 0.02,
    ) -> None:
        """``connect`` opens the event log (and creates its topics); it is called again after
        any delivery failure, so a broker that was reset is met with fresh clients.
        ``linger_s``: how long the thread lets a partial batch gather before delivering it."""
        self.outbox = outbox
        self._connect = connect
        self._batch_size = batch_size
        self._flush_timeout_s = flush_timeout_s
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._linger_s = linger_s
        self._event_log: EventLog | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def drain_once(self) -> int:
        """Deliver one batch; return how many events left the outbox. Raises on failure."""
        entries = self.outbox.take(self._batch_size)
        if not entries:
            return 0
        if self._event_log is None:
            self._event_log = self._connect()
        delivered = 0
        for entry in entries:
            try:
                self._event_log.publish_bytes(entry.topic, entry.key, entry.payload)
                delivered += 1
            except _PERMANENT_ERRORS as error:
                self.outbox.dead_letter(entry, f"{type(error).__name__}: {error}")
        self._event_log.flush(self._flush_timeout_s)
        self.outbox.remove_through(entries[-1].id)
        metrics.OUTBOX_DELIVERED.labels(outbox=self.outbox.name).inc(delivered)
        return len(entries)

    def drain(self, timeout_s: float) -> None:
        """Deliver until the outbox is empty; raise ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        backoff = self._initial_backoff_s
        while self.outbox.depth() > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.outbox.depth()} events still in the outbox")
            if not self._attempt():
                time.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
            else:
                backoff = self._initial_backoff_s

    def start(self) -> None:
        """Deliver in a daemon thread until ``stop``."""
        self._thread = threading.Thread(target=self._run, name=f"outbox-{self.outbox.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (after its current batch) and close the event log."""
        self._stopping.set()
        self.outbox.wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._disconnect()

    def _run(self) -> None:
        backoff = self._initial_backoff_s
        while not self._stopping.is_set():
            if self.outbox.depth() == 0:
                self.outbox.wait_for_work(1.0)
                continue
            if self.outbox.depth() < self._batch_size:
                self._stopping.wait(self._linger_s)  # let a batch gather: one flush, not many
            if self._attempt():
                backoff = self._initial_backoff_s
            else:
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)

    def _attempt(self) -> bool:
        """One delivery attempt; on failure drop the connection and return False."""
        try:
            self.drain_once()
            return True
        except Exception as error:  # noqa: BLE001 - any failure means: retry later, reconnected
            metrics.OUTBOX_FAILED.labels(outbox=self.outbox.name).inc()
            log.warning("outbox %s: delivery failed (%s: %s); will retry",
                        self.outbox.name, type(error).__name__, error)
            self._disconnect()
            return False

    def _disconnect(self) -> None:
        event_log, self._event_log = self._event_log, None
        if event_log is not None:
            try:
                event_log.close()
            except Exception as error:  # noqa: BLE001 - closing a broken client may fail too
                log.debug("closing the event log failed: %s", error)


def _settle(stored: asyncio.Future[None], error: BaseException | None) -> None:
    """Resolve an async put's future on its own loop (unless its caller gave up waiting)."""
    if stored.cancelled():
        return
    if error is None:
        stored.set_result(None)
    else:
        stored.set_exception(error)
