"""One trainer per scope at a time: an exclusive advisory lock file per scope.

Trainer processes on one machine, or on several sharing the adapter store's filesystem (where
it supports POSIX locks), take ``<lock_dir>/<scope>.lock`` with ``flock`` before a round on that
scope and release it after. The kernel drops the lock when the process dies, so a killed
trainer never leaves a scope locked. A lock file rather than consumer-group partition
ownership, because a round also touches the global scope, which no partition owns, and
because the embedded event log has no group rebalancing to lean on.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from common.files import exclusive_lock


class ScopeBusy(RuntimeError):
    """Another trainer holds the scope's lock."""


@contextmanager
def scope_lock(lock_dir: Path, scope: str) -> Iterator[None]:
    """Hold the scope's lock for the block; raise `ScopeBusy` at once if someone else has it."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", scope)[:64]
    path = lock_dir / f"{readable}-{hashlib.sha256(scope.encode()).hexdigest()[:8]}.lock"
    with ExitStack() as held:
        try:
            fd = held.enter_context(exclusive_lock(path, blocking=False))
        except BlockingIOError:
            raise ScopeBusy(f"another trainer is training scope {scope!r} (lock {path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
