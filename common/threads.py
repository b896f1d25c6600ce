"""Blocking calls run from asyncio in a worker thread, waited for to the end.

A cancelled ``asyncio.to_thread`` returns at once while its thread runs on. Whatever that
thread uses is then typically closed by the caller's cleanup, under the running call: CPython's
sqlite3 crashed the whole gateway (a segmentation fault) when a stop closed the embedded log's
connection during an adapters poll. `to_thread_to_the_end` waits for the thread before the
cancellation goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


async def to_thread_to_the_end(function: Callable[..., _T], *args: object) -> _T:
    """``await asyncio.to_thread(function, *args)``; when cancelled, it still waits for the thread
    to return before it raises ``CancelledError``. The thread's own error after the cancellation
    is dropped: the caller is stopping."""
    running = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait([running])
        raise
