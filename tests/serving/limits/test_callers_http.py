"""Per-caller limits over real HTTP: a gateway (uvicorn) in front of a fake engine."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from serving.limits.config import LimitSettings
from tests.fixtures.fake_engine import fake_engine
from tests.fixtures.gateway import API_KEYS, RunningGateway, start_gateway

CHAT = {"model": "hhh", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def hold() -> threading.Event:
    return threading.Event()


@pytest.fixture
def limited(tmp_path: Path, hold: threading.Event, request: pytest.FixtureRequest) -> Iterator[RunningGateway]:
    """A gateway with auth on and the limits ``request.param``, its engine's streams held
    until ``hold`` is set."""
    with fake_engine(hold=hold) as engine:
        running = start_gateway(engine.url, tmp_path, auth=True, api_keys=API_KEYS,
                                limits=LimitSettings(**request.param))
        try:
            yield running
        finally:
            hold.set()
            running.stop()


def call(running: RunningGateway, key: str | None, path: str = "/v1/models") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{running.url}{path}", headers=headers)


def rejected(running: RunningGateway, reason: str, route: str) -> float:
    text = httpx.get(f"{running.url}/metrics").text
    line = f'hhh_rejected_requests_total{{reason="{reason}",route="{route}"}} '
    return next((float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)), 0.0)





@pytest.mark.parametrize("limited", [{"rate_per_s": 0.001, "burst": 2}], indirect=True)
def test_a_caller_over_its_rate_gets_429_with_retry_after_and_others_do_not(limited: RunningGateway) -> None:
    assert [call(limited, "sk-alice").status_code for _ in range(2)] == [200, 200]
    refused = call(limited, "sk-alice")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1000"
    assert refused.json()["detail"] == (
        "rate limit exceeded: at most 0.001 requests/s per caller (bursts of 2); retry in 1000 s")
    assert refused.json()["error"]["code"] == "rate_limited"
    assert rejected(limited, "rate_limited", "/v1/models") == 1
    client = openai.OpenAI(base_url=f"{limited.url}/v1", api_key="sk-alice", max_retries=0)
    with pytest.raises(openai.RateLimitError, match="rate limit exceeded"):
        client.models.list()

    assert call(limited, "sk-bob").status_code == 200, "bob has a bucket of his own"
    for _ in range(5):  # health checks, metrics and pages are not limited
        assert call(limited, None, "/healthz").status_code == 200
        assert call(limited, None, "/").status_code == 200


@pytest.mark.parametrize("limited", [{"rate_per_s": 0.001, "burst": 2}], indirect=True)
def test_without_a_valid_key_the_client_address_is_the_caller(limited: RunningGateway) -> None:
    assert [call(limited, f"sk-wrong-{i}").status_code for i in range(3)] == [401, 401, 429]
    assert call(limited, None).status_code == 429, "no key: the same address, the same bucket"
    assert call(limited, "sk-alice").status_code == 200


@pytest.mark.parametrize("limited", [{"concurrent_per_caller": 1, "rate_per_s": 0}], indirect=True)
def test_requests_beyond_a_callers_concurrency_get_429_until_one_ends(
    limited: RunningGateway, hold: threading.Event
) -> None:
    headers = {"authorization": "Bearer sk-alice"}
    with httpx.stream("POST", f"{limited.url}/v1/chat/completions", json={**CHAT, "stream": True},
                      headers=headers) as held:
        lines = held.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # in flight, held
        refused = httpx.post(f"{limited.url}/v1/chat/completions", json=CHAT, headers=headers)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "too many concurrent requests: at most 1 at once per caller" in refused.json()["detail"]
        other = httpx.post(f"{limited.url}/v1/chat/completions", json=CHAT,
                           headers={"authorization": "Bearer sk-bob"})
        assert other.status_code == 200, other.text
        hold.set()
        assert [line for line in lines if line.startswith("data: ")][-1] == "data: [DONE]"
    assert rejected(limited, "too_many_concurrent_requests", "/v1/chat/completions") == 1
    after = httpx.post(f"{limited.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert after.status_code == 200, "the stream's slot was freed when it ended"


def test_with_auth_off_the_user_field_does_not_make_a_new_caller(tmp_path: Path) -> None:
    with fake_engine() as engine:
        running = start_gateway(engine.url, tmp_path, limits=LimitSettings(rate_per_s=0.001, burst=2))
        try:
            statuses = [httpx.post(f"{running.url}/v1/chat/completions",
                                   json={**CHAT, "user": f"user-{i}"}).status_code for i in range(3)]
        finally:
            running.stop()
    assert statuses == [200, 200, 429]


def test_a_client_reading_a_stream_slowly_never_marks_a_healthy_engine_down(tmp_path: Path) -> None:
    # The engine answers a token every 20 ms, well within its timeout (0.5 s), for about a
    # second; the client stops reading for three times the timeout. Neither the stream's
    # length nor the client's pace is the engine's failure: only the engine's silence is.
    with fake_engine(chunks=50, interval_s=0.02) as engine:
        running = start_gateway(engine.url, tmp_path, request_timeout_s=0.5, health_interval_s=3600)
        try:
            with httpx.stream("POST", f"{running.url}/v1/chat/completions",
                              json={**CHAT, "stream": True}) as response:
                lines = response.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))
                time.sleep(1.5)  # the slow reader
                rest = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
            (engine_state,) = running.gateway.pool.engines
        finally:
            running.stop()
    assert rest[-1] == "[DONE]" and len(rest) == 50
    assert not any("error" in json.loads(data) for data in rest[:-1]), rest
    assert engine_state.up and engine_state.last_error is None


def test_an_engine_silent_mid_stream_for_its_timeout_ends_the_stream_and_is_marked_down(
    tmp_path: Path,
) -> None:
    hold = threading.Event()
    with fake_engine(hold=hold) as engine:
        running = start_gateway(engine.url, tmp_path, request_timeout_s=0.5, health_interval_s=3600)
        try:
            with httpx.stream("POST", f"{running.url}/v1/chat/completions",
                              json={**CHAT, "stream": True}) as response:
                data = [line.removeprefix("data: ") for line in response.iter_lines()
                        if line.startswith("data: ")]
            (engine_state,) = running.gateway.pool.engines
        finally:
            running.stop()
    assert "the model engine failed mid-stream" in json.loads(data[-1])["error"]["message"]
    assert not engine_state.up and "Timeout" in engine_state.last_error
