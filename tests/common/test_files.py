"""`common.files`: private files that SQLite databases can share between processes."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

from common.files import PRIVATE_FILE_MODE, private_file


def test_tightening_an_existing_file_keeps_this_processs_locks_on_it(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops every POSIX lock the process holds on it: had
    `private_file` opened the file, SQLite's shared locks of the connections open in this
    process would be gone, and another process could delete the WAL under them."""
    path = private_file(tmp_path / "events.db")
    path.chmod(0o644)
    with path.open("r+") as held:
        fcntl.lockf(held, fcntl.LOCK_SH)
        private_file(path)
        grab = (f"import fcntl; fcntl.lockf(open({str(path)!r}, 'r+'), "
                "fcntl.LOCK_EX | fcntl.LOCK_NB)")
        other_process = subprocess.run([sys.executable, "-c", grab], capture_output=True, text=True)
    assert other_process.returncode != 0, "the shared lock was dropped"
    assert path.stat().st_mode & 0o777 == PRIVATE_FILE_MODE
