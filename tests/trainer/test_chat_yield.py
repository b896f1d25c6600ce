"""The trainer yields to chat: it waits while a real gateway has chats in flight, at most the
maximum, and never for a gateway that does not answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from common.errors import UserError
from common.processes import free_port
from tests.fixtures.fake_engine import fake_engine
from tests.fixtures.gateway import RunningGateway, start_gateway
from trainer.chat_yield import ChatYield
from trainer.config import TrainerSettings
from tests.fixtures.waiting import wait_for

STREAM = {"model": "hhh", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}


@pytest.fixture
def hold() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def gateway(tmp_path: Path, hold: threading.Event) -> Iterator[RunningGateway]:
    """A gateway whose engine holds every stream open until ``hold`` is set."""
    with fake_engine(hold=hold) as engine:
        running = start_gateway(engine.url, tmp_path)
        try:
            yield running
        finally:
            hold.set()
            running.stop()


def chat_in_background(gateway: RunningGateway, count: int) -> list[threading.Thread]:
    def stream() -> None:
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=STREAM, timeout=60) as response:
            response.read()

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads




def yielded_seconds() -> float:
    return REGISTRY.get_sample_value("hhh_trainer_yield_seconds_total") or 0.0


def test_the_trainer_waits_while_the_gateway_has_more_chats_in_flight_than_the_threshold(
    gateway: RunningGateway, hold: threading.Event
) -> None:
    chat_yield = ChatYield(gateway.url, above=1, max_pause_s=30, poll_interval_s=0.05)
    assert chat_yield.chats_in_flight() == 0
    assert chat_yield.pause_while_busy("PPO iteration 1") == 0.0  # idle: no pause
    streams = chat_in_background(gateway, 2)
    wait_for(lambda: chat_yield.chats_in_flight() == 2, 30, "two chats in flight", interval_s=0.02)
    before = yielded_seconds()
    threading.Timer(0.5, hold.set).start()
    waited = chat_yield.pause_while_busy("PPO iteration 2")
    assert 0.4 <= waited < 25
    assert yielded_seconds() - before == pytest.approx(waited)
    for thread in streams:
        thread.join(10)
    assert chat_yield.chats_in_flight() == 0


def test_under_steady_chat_the_pause_ends_after_the_maximum(gateway: RunningGateway) -> None:
    chat_yield = ChatYield(gateway.url, above=0, max_pause_s=0.5, poll_interval_s=0.05)
    chat_in_background(gateway, 1)  # held open until the test ends
    wait_for(lambda: chat_yield.chats_in_flight() == 1, 30, "one chat in flight", interval_s=0.02)
    waited = chat_yield.pause_while_busy("DPO epoch 1")
    assert 0.5 <= waited < 15  # a poll may take a while on a busy machine
    assert chat_yield.chats_in_flight() == 1


def test_a_gateway_that_does_not_answer_is_not_waited_for() -> None:
    chat_yield = ChatYield(f"http://127.0.0.1:{free_port()}", above=0, max_pause_s=30)
    assert chat_yield.chats_in_flight() is None
    assert chat_yield.pause_while_busy("PPO iteration 1") == 0.0


def test_yielding_is_off_unless_a_threshold_is_set_and_a_threshold_needs_a_gateway() -> None:
    assert ChatYield.from_settings(TrainerSettings()) is None
    with pytest.raises(UserError, match="set HHH_TRAINER_YIELD_TO"):
        ChatYield.from_settings(TrainerSettings(yield_above_chats=2))
    configured = ChatYield.from_settings(TrainerSettings(yield_above_chats=2, yield_to="http://gw:8000/",
                                                         yield_max_pause_s=5))
    assert (configured.gateway_url, configured.above, configured.max_pause_s) == ("http://gw:8000", 2, 5)
