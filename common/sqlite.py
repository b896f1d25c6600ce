"""SQLite files that several processes open at once: the embedded event log, the outbox, the
dataset.

`connect` opens one in WAL mode (readers never wait for the writer) with a busy timeout.
Switching a database to WAL is the one step SQLite's busy handler does not cover: when a new
file is opened by several processes at the same moment (``hhh up`` starts the gateway's
readers and the trainer together), ``PRAGMA journal_mode=WAL`` fails at once with "database is
locked" in some of them (6 trials in 30 with 6 processes opening a new event log, before this
module). `connect` retries that step, pausing 10 ms and doubling up to 100 ms, until the
same timeout the busy handler uses for everything else.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

_FIRST_PAUSE_S = 0.01
_LONGEST_PAUSE_S = 0.1


def connect(path: Path, *, durable_sync: bool, timeout_s: float = 30.0) -> sqlite3.Connection:
    """An autocommit connection (usable from any thread) to ``path`` in WAL mode.

    ``durable_sync``: ``synchronous=FULL`` (a commit survives an OS crash or power loss) rather
    than ``NORMAL`` (it survives a process crash). ``timeout_s`` bounds every wait for another
    process's lock, the switch to WAL included; past it ``sqlite3.OperationalError`` is raised.
    """
    connection = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    try:
        _switch_to_wal(connection, timeout_s)
        connection.execute(f"PRAGMA synchronous={'FULL' if durable_sync else 'NORMAL'}")
    except BaseException:
        connection.close()
        raise
    return connection


def _switch_to_wal(connection: sqlite3.Connection, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pause = _FIRST_PAUSE_S
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            locked = error.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not locked or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, _LONGEST_PAUSE_S)
