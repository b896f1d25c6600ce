"""`to_thread_to_the_end`: a cancelled call returns only once its thread has."""

from __future__ import annotations

import asyncio
import threading

import pytest

from common.threads import to_thread_to_the_end


def test_a_cancelled_call_in_a_thread_returns_only_when_its_thread_has() -> None:
    release = threading.Event()
    returned = threading.Event()

    def blocking_poll() -> str:
        release.wait(10)
        returned.set()
        raise RuntimeError("the thread's own error after the cancellation is not raised")

    async def cancel_while_running() -> None:
        call = asyncio.create_task(to_thread_to_the_end(blocking_poll))
        await asyncio.sleep(0.05)
        call.cancel()
        await asyncio.sleep(0.2)
        assert not call.done(), "the cancelled call returned while its thread still ran"
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert returned.is_set()

    asyncio.run(cancel_while_running())


def test_an_uncancelled_call_in_a_thread_returns_its_value() -> None:
    assert asyncio.run(to_thread_to_the_end(lambda a, b: a + b, 2, 3)) == 5
