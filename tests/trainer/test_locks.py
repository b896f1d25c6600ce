"""Scope locks: exclusive across processes, released when the holder dies."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from trainer.locks import ScopeBusy, scope_lock


def hold_forever(lock_dir: Path, scope: str, ready: multiprocessing.synchronize.Event) -> None:
    with scope_lock(lock_dir, scope):
        ready.set()
        signal.pause()


def test_a_scope_is_held_by_one_process_and_freed_when_it_dies(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=hold_forever, args=(tmp_path, "user:ann", ready))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(ScopeBusy, match="another trainer is training scope 'user:ann'"):
            with scope_lock(tmp_path, "user:ann"):
                pass
        with scope_lock(tmp_path, "global"):  # other scopes are free
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    with scope_lock(tmp_path, "user:ann"):  # the kernel released the dead holder's lock
        pass


def test_scopes_that_look_alike_get_different_locks(tmp_path: Path) -> None:
    with scope_lock(tmp_path, "user:a/b"), scope_lock(tmp_path, "user:a_b"):
        assert len(list(tmp_path.iterdir())) == 2
