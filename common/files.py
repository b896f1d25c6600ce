"""Files that other processes may read or write at the same time.

- `sha256_file`: the checksum that adapter and reward-model manifests record per file;
- `write_atomically`: readers see the old content or the new, never a torn file (the new
  content is written to a sibling and renamed over the old, which POSIX makes atomic);
  With ``exclusive=True`` it creates the file only where none exists (a key two processes may
  generate at once: the first one written wins, and a crash leaves no file rather than an
  empty one);
- `private_file`: a file (a database, say) only its owner may read or write (0600), in a folder
  created 0700 where it is missing;
- `exclusive_lock`: an advisory ``flock`` on a lock file for the block. The kernel releases it
  when the holder's process dies, so a killed writer never leaves a lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def write_atomically(
    path: Path, content: str | bytes, *, mode: int = 0o644, exclusive: bool = False
) -> None:
    """Replace ``path`` with ``content`` in one rename; the file gets permission bits ``mode``.

    ``exclusive``: create ``path`` only if it does not exist (a hard link instead of a rename);
    `FileExistsError` if it does, and ``path`` keeps its content.
    """
    path = Path(path)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if exclusive:
            os.link(staging, path)
            staging.unlink()
        else:
            os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def private_file(path: Path) -> Path:
    """Create ``path`` if missing so that only its owner may read or write it (0600), in a folder
    made 0700 where it is missing; tighten an existing one (and SQLite's ``-wal``, ``-shm`` and
    ``-journal`` files beside it, which SQLite creates with the database's mode). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        # Never open (and close) an existing file: closing any descriptor of a file drops every
        # POSIX lock this process holds on it, SQLite's included. A process opening a second
        # connection to a database would strip its open connections of their shared locks, and
        # another process's last close would then take itself for the last one and delete the
        # WAL and its index under them ("database disk image is malformed"; seen with gateway
        # workers, several processes each with several connections to the event log).
        pass
    for each in (path, *(path.with_name(path.name + suffix) for suffix in _SQLITE_SIDE_FILES)):
        try:
            if each.stat().st_mode & 0o077:
                each.chmod(PRIVATE_FILE_MODE)
        except FileNotFoundError:
            continue
    return path


@contextmanager
def exclusive_lock(path: Path, *, blocking: bool = True) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Yields the lock file's descriptor (a holder may write its pid there). With
    ``blocking=False`` raises `BlockingIOError` at once when another process holds the lock.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock
