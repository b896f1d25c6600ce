"""The embedded event log: one SQLite file, shared by every process on one machine.

It keeps the Kafka contract of ``streams.log`` (topics with partitions, keyed ordering,
consumer groups with committed offsets) without a broker to run:

- Durability: WAL journal; ``synchronous=NORMAL`` survives a process crash, ``FULL``
  (``durable_sync=True``) also an OS crash or power loss, at a cost in publish rate.
- Concurrency: any number of processes publish and consume at once. Appends take SQLite's
  write lock (``BEGIN IMMEDIATE``), so offsets within a partition are dense and ordered.
- Groups: a member registers with a heartbeat in ``group_members``; the live members of a
  group (sorted by id) split the partitions round-robin. A member silent for
  ``session_timeout_s`` is dropped and its partitions move on from the committed offsets.
- Threads: each connection is used under its object's lock, so ``close`` from one thread never
  frees a connection another thread is reading (CPython's sqlite3 crashes the process then: a
  gateway stopping while its adapters poll was in a worker thread did, in CI). A call after
  ``close`` raises ``sqlite3.ProgrammingError``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

from common.files import private_file
from common.sqlite import connect
from streams.codec import COMPACTED_TOPICS, TOPIC_SCHEMAS, check_topic
from streams.log import EventConsumer, EventLog, RawRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY, partitions INTEGER NOT NULL, compacted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partition_ends (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key TEXT, payload BLOB NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL, PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_members (
    grp TEXT NOT NULL, member TEXT NOT NULL, heartbeat REAL NOT NULL,
    PRIMARY KEY (grp, member)) WITHOUT ROWID;
"""

_AUTO_FLUSH_AT = 1000
"""Buffered messages that trigger a flush by themselves (bounds memory and loss window)."""


def partition_for(key: str | None, partitions: int, fallback: int) -> int:
    """The partition of ``key``: CRC-32 of its UTF-8 bytes modulo ``partitions``."""
    if key is None:
        return fallback % partitions
    return zlib.crc32(key.encode("utf-8")) % partitions


class SqliteEventLog(EventLog):
    """An ``EventLog`` in one SQLite file; see the module docstring."""

    backend = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        partitions: int = 4,
        session_timeout_s: float = 10.0,
        durable_sync: bool = False,
    ) -> None:
        """Open (creating if needed) the log at ``path``.

        ``partitions`` applies to topics this call creates; existing topics keep theirs.
        """
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.path = Path(path)
        private_file(self.path)  # every user's prompts: owner only
        self.partitions = partitions
        self.session_timeout_s = session_timeout_s
        self.durable_sync = durable_sync
        self._connection = connect(self.path, durable_sync=durable_sync)
        self._connection.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._buffer: list[tuple[str, str | None, bytes, float]] = []
        self._round_robin = count()
        self._partition_counts: dict[str, int] = {}
        self.create_topics()

    def create_topics(self) -> None:
        with self._lock, _transaction(self._connection):
            for topic in TOPIC_SCHEMAS:
                self._connection.execute(
                    "INSERT OR IGNORE INTO topics VALUES (?, ?, ?)",
                    (topic, self.partitions, int(topic in COMPACTED_TOPICS)),
                )
            rows = self._connection.execute("SELECT name, partitions FROM topics").fetchall()
        self._partition_counts = dict(rows)

    def partition_count(self, topic: str) -> int:
        """The number of partitions of ``topic``."""
        return self._partition_counts[topic]

    def _send(self, topic: str, key: str | None, payload: bytes) -> None:
        with self._lock:
            self._buffer.append((topic, key, payload, time.time()))
            should_flush = len(self._buffer) >= _AUTO_FLUSH_AT
        if should_flush:
            self.flush()

    def flush(self, timeout_s: float | None = None) -> None:
        """Append the buffered messages in one transaction (``timeout_s``: SQLite's own)."""
        with self._lock:
            if not self._buffer:
                return
            pending, self._buffer = self._buffer, []
            try:
                self._append(pending)
            except BaseException:
                self._buffer[:0] = pending  # keep them for the next flush
                raise

    def _append(self, pending: list[tuple[str, str | None, bytes, float]]) -> None:
        rows = []
        with _transaction(self._connection):
            ends = dict(
                ((topic, partition), end)
                for topic, partition, end in self._connection.execute(
                    "SELECT topic, partition, next_offset FROM partition_ends"
                )
            )
            for topic, key, payload, created in pending:
                partition = partition_for(
                    key, self._partition_counts[topic], next(self._round_robin)
                )
                offset = ends.get((topic, partition), 0)
                ends[(topic, partition)] = offset + 1
                rows.append((topic, partition, offset, key, payload, created))
            self._connection.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)", rows)
            touched = {(topic, partition) for topic, partition, *_ in rows}
            self._connection.executemany(
                "INSERT OR REPLACE INTO partition_ends VALUES (?, ?, ?)",
                [(topic, partition, ends[(topic, partition)]) for topic, partition in touched],
            )

    def consumer(
        self, group: str | None, topics: Sequence[str], *, from_beginning: bool = False
    ) -> SqliteConsumer:
        return SqliteConsumer(self, group, topics, from_beginning=from_beginning)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._connection.close()


class SqliteConsumer(EventConsumer):
    """A consumer of a ``SqliteEventLog``; see the module docstring for group membership."""

    _POLL_INTERVAL_S = 0.02

    def __init__(
        self,
        event_log: SqliteEventLog,
        group: str | None,
        topics: Sequence[str],
        *,
        from_beginning: bool,
    ) -> None:
        super().__init__(event_log, group)
        for topic in topics:
            check_topic(topic)
        self._sqlite_log = event_log
        self._topics = sorted(set(topics))
        self._from_beginning = from_beginning or group is None
        self._member = uuid.uuid4().hex
        self._connection = connect(event_log.path, durable_sync=event_log.durable_sync)
        self._connection_lock = threading.Lock()
        self._positions: dict[tuple[str, int], int] = {}
        self._next_heartbeat = 0.0

    def _all_partitions(self) -> list[tuple[str, int]]:
        return [
            (topic, partition)
            for topic in self._topics
            for partition in range(self._sqlite_log.partition_count(topic))
        ]

    def _join(self) -> None:
        """Heartbeat, drop dead members, and take this member's share of the partitions."""
        if self.group is None:
            owned = self._all_partitions()
        else:
            now = time.time()
            with _transaction(self._connection):
                self._connection.execute(
                    "INSERT OR REPLACE INTO group_members VALUES (?, ?, ?)",
                    (self.group, self._member, now),
                )
                self._connection.execute(
                    "DELETE FROM group_members WHERE grp = ? AND heartbeat < ?",
                    (self.group, now - self._sqlite_log.session_timeout_s),
                )
                members = [
                    member
                    for (member,) in self._connection.execute(
                        "SELECT member FROM group_members WHERE grp = ? ORDER BY member",
                        (self.group,),
                    )
                ]
            mine = members.index(self._member)
            owned = self._all_partitions()[mine :: len(members)]
        self._positions = {tp: self._positions.get(tp) for tp in owned}  # type: ignore[misc]
        for topic_partition, position in self._positions.items():
            if position is None:
                self._positions[topic_partition] = self._start_offset(*topic_partition)
        self._next_heartbeat = time.monotonic() + self._sqlite_log.session_timeout_s / 3

    def _start_offset(self, topic: str, partition: int) -> int:
        if self._from_beginning:
            return 0
        row = self._connection.execute(
            "SELECT next_offset FROM group_offsets WHERE grp = ? AND topic = ? AND partition = ?",
            (self.group, topic, partition),
        ).fetchone()
        return row[0] if row else 0

    def _fetch(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._connection_lock:
                if time.monotonic() >= self._next_heartbeat:
                    self._join()
                fetched = list(self._read(max_records))
            if fetched or time.monotonic() >= deadline:
                return fetched
            time.sleep(self._POLL_INTERVAL_S)

    def _read(self, max_records: int) -> Iterator[RawRecord]:
        remaining = max_records
        for (topic, partition), position in self._positions.items():
            if remaining <= 0:
                return
            rows = self._connection.execute(
                "SELECT offset, key, payload, created FROM messages"
                " WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (topic, partition, position, remaining),
            ).fetchall()
            for offset, key, payload, created in rows:
                self._positions[(topic, partition)] = offset + 1
                remaining -= 1
                yield RawRecord(
                    topic, partition, offset, key, payload, datetime.fromtimestamp(created, UTC)
                )

    def _commit(self) -> None:
        with self._connection_lock, _transaction(self._connection):
            self._connection.executemany(
                "INSERT OR REPLACE INTO group_offsets VALUES (?, ?, ?, ?)",
                [(self.group, t, p, position) for (t, p), position in self._positions.items()],
            )

    def assignment(self) -> set[tuple[str, int]]:
        return set(self._positions)

    def seek_to_beginning(self) -> None:
        for topic_partition in self._positions:
            self._positions[topic_partition] = 0

    def close(self) -> None:
        with self._connection_lock:
            if self.group is not None:
                with _transaction(self._connection):
                    self._connection.execute(
                        "DELETE FROM group_members WHERE grp = ? AND member = ?",
                        (self.group, self._member),
                    )
            self._connection.close()


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> sqlite3.Connection:
        self._connection.execute("BEGIN IMMEDIATE")
        return self._connection

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._connection.execute("ROLLBACK" if exc_type else "COMMIT")
