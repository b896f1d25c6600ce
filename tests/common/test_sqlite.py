"""`common.sqlite`: processes that open a new database at the same moment all get a connection
in WAL mode (the switch to WAL is not covered by SQLite's busy handler)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from common.sqlite import connect

PROCESSES = 6
TRIALS = 20
"""Before `connect` retried the switch, 6 trials in 30 of 6 processes had one fail."""


def open_at(path: Path, start: float) -> str:
    """Wait until ``start`` (so that every process opens together), open ``path``, and say how it went."""
    while time.time() < start:
        pass
    try:
        connection = connect(path, durable_sync=False)
    except sqlite3.OperationalError as error:
        return f"failed: {error}"
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS t (x)")
        return connection.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        connection.close()


def test_processes_opening_a_new_database_together_all_get_it_in_wal_mode(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        pool.map(abs, range(PROCESSES))  # started and importing before the first trial
        for trial in range(TRIALS):
            start = time.time() + 0.2
            modes = pool.starmap(open_at, [(tmp_path / f"{trial}.db", start)] * PROCESSES)
            assert modes == ["wal"] * PROCESSES, f"trial {trial}: {modes}"


def test_a_lock_held_past_the_timeout_is_an_error_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # a new file in rollback mode: the switch to WAL must wait
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            connect(path, durable_sync=False, timeout_s=0.5)
        assert time.monotonic() - started < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
