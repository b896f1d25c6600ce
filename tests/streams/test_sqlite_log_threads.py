"""The embedded log's connections may be closed from one thread while others use them.

CI lost a whole run to this: the gateway stopped while its adapters poll ran in a worker thread,
the stop closed the consumer's SQLite connection under the running query, and CPython's sqlite3
crashed the process (a segmentation fault in ``SqliteConsumer._read``).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from streams.codec import FEEDBACK
from streams.sqlite_log import SqliteEventLog

REPO = Path(__file__).resolve().parents[2]


def test_closing_the_log_and_a_consumer_while_threads_use_them_never_crashes(
    tmp_path: Path,
) -> None:
    # In a child process, so that a crash fails this test rather than the whole session.
    command = [sys.executable, "-m", "tests.streams.close_during_poll",
               str(tmp_path / "events.db"), "--trials", "40"]
    finished = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.strip() == "ok 40"


def test_a_consumer_used_after_close_raises_a_clear_error(tmp_path: Path) -> None:
    with SqliteEventLog(tmp_path / "events.db") as event_log:
        consumer = event_log.consumer("g", [FEEDBACK])
        consumer.close()
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            consumer.poll(timeout_s=0.0)
