"""The gateway over real HTTP, with the official openai client, in front of the real vLLM engine."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from streams.codec import COMPLETIONS, FEEDBACK
from streams.events import CompletionEvent, Event, RankingFeedback, ThumbsFeedback
from streams.sqlite_log import SqliteEventLog
from tests.fixtures.gateway import RunningGateway

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": "How do I make pancakes?"}]


def client(running: RunningGateway, key: str = "sk-alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0)


def logged(running: RunningGateway, topic: str, match: Callable[[Event], bool], count: int = 1) -> list:
    """Wait until ``count`` events matching ``match`` reached the event log (via the outbox)."""
    deadline = time.monotonic() + 20
    found: dict[str, Event] = {}
    with SqliteEventLog(running.event_log_path) as event_log, event_log.consumer(None, [topic]) as reader:
        while len(found) < count:
            assert time.monotonic() < deadline, f"{len(found)} of {count} {topic} events logged"
            found |= {r.event.event_id: r.event for r in reader.poll(timeout_s=0.2) if match(r.event)}
    return list(found.values())


def post(running: RunningGateway, path: str, body: object, key: str | None = "sk-alice") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{running.url}{path}", json=body, headers=headers, timeout=60)


def chat_ids(running: RunningGateway, n: int, key: str = "sk-alice", content: str = "Hello!") -> list[str]:
    response = client(running, key).chat.completions.create(
        model="hhh", messages=[{"role": "user", "content": content}], n=n, max_tokens=8, temperature=1.0
    )
    return [choice.completion_id for choice in response.choices]


def test_a_chat_completion_is_answered_signed_and_logged(gateway: RunningGateway) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="hhh", messages=QUESTION, max_tokens=16, temperature=0
    )
    response = raw.parse()
    (choice,) = response.choices
    assert choice.message.content.strip()
    assert response.model == "hhh" and response.id == choice.completion_id
    assert raw.headers["x-hhh-adapter"] == "base"
    assert raw.headers["x-hhh-completion-ids"] == choice.completion_id
    assert response.hhh_adapter == {"scope": "base", "version": None}
    assert not hasattr(choice, "token_ids") or choice.token_ids is None

    (event,) = logged(gateway, COMPLETIONS, lambda e: e.completion_id == choice.completion_id)
    assert isinstance(event, CompletionEvent)
    assert (event.user_id, event.completion, event.truncated) == ("alice", choice.message.content, False)
    assert event.completion_tokens == response.usage.completion_tokens
    assert event.prompt_tokens == response.usage.prompt_tokens
    assert event.messages[0].content == QUESTION[0]["content"] and event.sampling.temperature == 0


def test_a_stream_carries_ids_and_is_logged_with_its_text(gateway: RunningGateway) -> None:
    stream = client(gateway).chat.completions.create(
        model="hhh", messages=QUESTION, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    completion_id = chunks[0].choices[0].completion_id
    assert text.strip()
    assert {c.choices[0].completion_id for c in chunks if c.choices} == {completion_id}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    (event,) = logged(gateway, COMPLETIONS, lambda e: e.completion_id == completion_id)
    assert event.completion == text and not event.truncated
    assert event.completion_tokens == chunks[-1].usage.completion_tokens
    assert event.time_to_first_token_ms is not None and event.time_to_first_token_ms <= event.latency_ms


def test_a_stream_without_include_usage_gets_no_usage_chunk(gateway: RunningGateway) -> None:
    chunks = list(client(gateway).chat.completions.create(
        model="hhh", messages=QUESTION, max_tokens=4, stream=True
    ))
    assert chunks and chunks[-1].choices[0].finish_reason is not None, "the stream did not finish"
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)


def test_n_completions_ranked_by_their_receiver(gateway: RunningGateway) -> None:
    best, tied, worst = chat_ids(gateway, 3)
    response = post(gateway, "/v1/rankings", {"ranking": [best, [tied], worst], "criterion": "harmlessness"})
    assert response.status_code == 200, response.text

    (event,) = logged(gateway, FEEDBACK, lambda e: e.event_id == response.json()["event_id"])
    assert isinstance(event, RankingFeedback)
    assert event.ranking == [[best], [tied], [worst]] and event.criterion == "harmlessness"
    assert (event.user_id, event.labeler_id) == ("alice", "alice")


def test_a_thumbs_vote_is_durable_and_a_retry_is_the_same_event(gateway: RunningGateway) -> None:
    (completion_id,) = chat_ids(gateway, 1)
    vote = {"completion_id": completion_id, "vote": "down", "comment": "rude"}
    first, retry = post(gateway, "/v1/feedback", vote), post(gateway, "/v1/feedback", vote)
    changed = post(gateway, "/v1/feedback", {**vote, "vote": "up"})
    assert first.status_code == retry.status_code == changed.status_code == 200
    assert first.json()["event_id"] == retry.json()["event_id"] != changed.json()["event_id"]
    events = logged(gateway, FEEDBACK, lambda e: getattr(e, "completion_id", None) == completion_id, 2)
    assert sorted(e.vote for e in events if isinstance(e, ThumbsFeedback)) == ["down", "up"]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"completion_id": "cmpl-forged.AAAAAAAAAAAAAAAAAAAAAA", "vote": "up"}, 404, "not issued by this service"),
        ({"completion_id": "chatcmpl-123", "vote": "up"}, 404, "is not a completion id of this service"),
        ({"completion_id": "{id}", "vote": "sideways"}, 400, "vote: Input should be 'up' or 'down'"),
        ({"completion_id": "{id}", "vote": "up", "stars": 5}, 400, "stars: unknown field"),
        ({"vote": "up"}, 400, "completion_id: required field is missing"),
    ],
)
def test_bad_thumbs_are_refused_with_what_to_fix(
    gateway: RunningGateway, body: dict, status: int, detail: str
) -> None:
    if body.get("completion_id") == "{id}":
        body = {**body, "completion_id": chat_ids(gateway, 1)[0]}
    response = post(gateway, "/v1/feedback", body)
    assert response.status_code == status and detail in response.json()["detail"], response.text


def test_bad_rankings_are_refused_with_what_to_fix(gateway: RunningGateway) -> None:
    a, b = chat_ids(gateway, 2)
    (other_prompt,) = chat_ids(gateway, 1, content="What is the capital of France?")
    cases = [
        ({"ranking": [a, [b, a]]}, 400, "appear more than once"),
        ({"ranking": [a, other_prompt]}, 400, "must answer the same prompt"),
        ({"ranking": [a], "unusable": [b]}, 400, "at least two usable completions, got 1"),
        ({"ranking": [a, []]}, 400, "empty"),
        ({"ranking": [a, b], "labeler_id": "someone-else"}, 403, "only labelers"),
    ]
    for body, status, detail in cases:
        response = post(gateway, "/v1/rankings", body)
        assert response.status_code == status and detail in response.json()["detail"], (body, response.text)


def test_only_labelers_rate_completions_served_to_others(gateway: RunningGateway) -> None:
    a, b = chat_ids(gateway, 2, key="sk-alice")
    refused = post(gateway, "/v1/rankings", {"ranking": [a, b]}, key="sk-bob")
    assert refused.status_code == 403 and "served to another user" in refused.json()["detail"]
    thumbs = post(gateway, "/v1/feedback", {"completion_id": a, "vote": "up"}, key="sk-bob")
    assert thumbs.status_code == 403

    accepted = post(gateway, "/v1/rankings", {"ranking": [b, a], "labeler_id": "panel-7"}, key="sk-labeler")
    assert accepted.status_code == 200, accepted.text
    (event,) = logged(gateway, FEEDBACK, lambda e: e.event_id == accepted.json()["event_id"])
    assert (event.user_id, event.labeler_id) == ("lena", "panel-7")


@pytest.mark.parametrize(
    ("headers", "detail"),
    [({}, "Authorization: Bearer"), ({"authorization": "Bearer sk-wrong"}, "not valid"),
     ({"authorization": "Basic abc"}, "Authorization: Bearer")],
)
def test_auth_refuses_missing_and_wrong_keys(gateway: RunningGateway, headers: dict, detail: str) -> None:
    body = {"model": "hhh", "messages": QUESTION}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 401 and detail in response.json()["detail"]
    with pytest.raises(openai.AuthenticationError):
        client(gateway, "sk-wrong").models.list()


def test_with_auth_off_the_user_field_names_the_caller(open_gateway: RunningGateway) -> None:
    response = client(open_gateway, "unused").chat.completions.create(
        model="hhh", messages=QUESTION, max_tokens=4, user="zoe", n=2
    )
    a, b = (choice.completion_id for choice in response.choices)
    (event,) = logged(open_gateway, COMPLETIONS, lambda e: e.completion_id == a)
    assert event.user_id == "zoe"
    assert post(open_gateway, "/v1/rankings", {"ranking": [a, b], "user": "zoe"}, key=None).status_code == 200
    refused = post(open_gateway, "/v1/rankings", {"ranking": [a, b]}, key=None)  # anonymous
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"model": "gpt-4", "messages": QUESTION}, 404, "model 'gpt-4' does not exist; this service serves 'hhh'"),
        ({"model": "hhh", "messages": QUESTION, "n": 99}, 400, "n=99 exceeds the limit of 8"),
        ({"model": "hhh", "messages": QUESTION, "max_tokens": 10**6}, 400, "exceeds the limit of 512"),
        ({"model": "hhh", "messages": QUESTION, "temperature": "hot"}, 400, "temperature: Input should be a valid number"),
        ({"model": "hhh", "messages": QUESTION, "frobnicate": 1}, 400, "frobnicate: unknown field"),
        ({"model": "hhh", "messages": []}, 400, "messages: List should have at least 1 item"),
        ({"model": "hhh", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
        ({"model": "hhh", "messages": QUESTION, "user": ".."}, 400, "user: user id '..' is only dots"),
        ({"model": "hhh", "messages": QUESTION, "user": "../etc"}, 400, "user: user id '../etc' contains '/'"),
    ],
)
def test_bad_chat_requests_get_a_4xx_that_says_what_to_fix(
    gateway: RunningGateway, body: dict, status: int, detail: str
) -> None:
    response = post(gateway, "/v1/chat/completions", body)
    assert response.status_code == status and detail in response.json()["detail"], response.text
    assert response.json()["error"]["message"] == response.json()["detail"]


def test_malformed_and_oversized_bodies_are_refused(gateway: RunningGateway) -> None:
    headers = {"authorization": "Bearer sk-alice", "content-type": "application/json"}
    malformed = httpx.post(f"{gateway.url}/v1/chat/completions", content=b'{"model": "hhh",', headers=headers)
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["detail"]
    huge = {"model": "hhh", "messages": [{"role": "user", "content": "x" * 1_100_000}]}
    oversized = post(gateway, "/v1/chat/completions", huge)
    assert oversized.status_code == 413 and "exceeds the limit of 1,000,000 bytes" in oversized.json()["detail"]


def test_json_nested_too_deeply_and_unknown_routes_are_refused_in_the_api_shape_and_counted(
    gateway: RunningGateway,
) -> None:
    headers = {"authorization": "Bearer sk-alice", "content-type": "application/json"}
    counted = 'hhh_rejected_requests_total{reason="invalid_request",route="/v1/feedback"} '

    def refusals() -> float:
        text = httpx.get(f"{gateway.url}/metrics").text
        return next((float(row.removeprefix(counted)) for row in text.splitlines() if row.startswith(counted)), 0.0)

    before = refusals()
    deep = httpx.post(f"{gateway.url}/v1/feedback", content=b"[" * 100_000 + b"]" * 100_000, headers=headers)
    assert deep.status_code == 400, deep.text
    assert deep.json()["detail"] == "malformed JSON: nested too deeply to parse; send plain objects and arrays"
    assert deep.json()["error"]["code"] == "invalid_request"
    assert refusals() == before + 1
    unknown = httpx.get(f"{gateway.url}/v1/nowhere", headers=headers)
    assert unknown.status_code == 404 and unknown.json()["error"] == {
        "message": "Not Found", "type": "invalid_request_error", "code": "not_found"}
    assert httpx.get(f"{gateway.url}/v1/feedback", headers=headers).status_code == 405


def test_text_utf8_cannot_encode_is_refused_before_any_id_is_issued(open_gateway: RunningGateway) -> None:
    headers = {"content-type": "application/json"}
    before = completions_logged_for(open_gateway, "surrogate-sender")
    chat = b'{"model": "hhh", "user": "surrogate-sender", "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    refused = httpx.post(f"{open_gateway.url}/v1/chat/completions", content=chat, headers=headers)
    assert refused.status_code == 400, refused.text
    assert "messages.0.content: character 3 is a lone surrogate (U+D800)" in refused.json()["detail"]
    assert "x-hhh-completion-ids" not in refused.headers

    (completion_id,) = chat_ids(open_gateway, 1)
    thumbs = b'{"completion_id": "%s", "vote": "up", "comment": "\\udfff"}' % completion_id.encode()
    refused = httpx.post(f"{open_gateway.url}/v1/feedback", content=thumbs, headers=headers)
    assert refused.status_code == 400 and "comment: character 0 is a lone surrogate" in refused.json()["detail"]
    pair = b'{"model": "hhh", "user": "surrogate-sender", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert httpx.post(f"{open_gateway.url}/v1/chat/completions", content=pair, headers=headers).status_code == 200
    assert completions_logged_for(open_gateway, "surrogate-sender", before + 1) == before + 1
    assert 'hhh_rejected_requests_total{reason="invalid_request",route="/v1/chat/completions"}' in httpx.get(
        f"{open_gateway.url}/metrics").text


def completions_logged_for(running: RunningGateway, user: str, expected: int = 0) -> int:
    """How many completion events of ``user`` are in the log (waiting up to 10 s for ``expected``)."""
    deadline = time.monotonic() + 10
    while True:
        with SqliteEventLog(running.event_log_path) as event_log, event_log.consumer(None, [COMPLETIONS]) as reader:
            count = len([r for r in reader.poll(max_records=100_000, timeout_s=0.2) if r.event.user_id == user])
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def test_a_completion_event_that_cannot_be_logged_is_counted(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    def rejected() -> float:
        line = 'hhh_events_rejected_total{reason="too_large",topic="completions"} '
        text = httpx.get(f"{gateway.url}/metrics").text
        return next((float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)), 0.0)

    before = rejected()
    monkeypatch.setattr("streams.codec.MAX_EVENT_BYTES", 300)  # smaller than any completion event
    response = client(gateway).chat.completions.create(model="hhh", messages=QUESTION, n=2, max_tokens=2)
    assert len(response.choices) == 2  # served: the caller has the answers and their ids
    deadline = time.monotonic() + 10
    while rejected() < before + 2:
        assert time.monotonic() < deadline, "the unlogged completions were not counted"
        time.sleep(0.05)


def test_openai_client_sees_the_reason_of_a_refusal(gateway: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(gateway).chat.completions.create(model="nope", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="exceeds the limit"):
        client(gateway).chat.completions.create(model="hhh", messages=QUESTION, n=50)
    assert [m.id for m in client(gateway).models.list()] == ["hhh"]


def test_a_client_leaving_mid_stream_is_logged_as_truncated(gateway: RunningGateway, tiny_model_dir) -> None:  # noqa: ANN001
    from transformers import AutoTokenizer

    # The end-of-sequence token is banned, so the answer runs to max_tokens: it cannot finish
    # before the client leaves, however the engine batches its output.
    eos = AutoTokenizer.from_pretrained(tiny_model_dir).eos_token_id
    body = {"model": "hhh", "messages": QUESTION, "max_tokens": 500, "stream": True,
            "temperature": 1.0, "logit_bias": {str(eos): -100}}
    headers = {"authorization": "Bearer sk-alice"}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers) as response:
        completion_id = response.headers["x-hhh-completion-ids"]
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        received = json.loads(first.removeprefix("data: "))["choices"][0]["delta"].get("content") or ""
    (event,) = logged(gateway, COMPLETIONS, lambda e: e.completion_id == completion_id)
    assert event.truncated and event.finish_reason is None
    assert event.completion.startswith(received)


def test_metrics_carry_the_labels_operators_query(gateway: RunningGateway) -> None:
    (completion_id,) = chat_ids(gateway, 1)
    post(gateway, "/v1/feedback", {"completion_id": completion_id, "vote": "up", "criterion": "honesty"})
    post(gateway, "/v1/chat/completions", {"model": "hhh", "messages": QUESTION, "n": 99})
    text = httpx.get(f"{gateway.url}/metrics").text
    for expected in [
        'hhh_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}',
        'hhh_http_requests_total{method="POST",route="/v1/chat/completions",status="400"}',
        'hhh_rejected_requests_total{reason="n_too_large",route="/v1/chat/completions"}',
        'hhh_feedback_total{adapter="base",criterion="honesty",kind="thumbs",vote="up"}',
        "hhh_chat_time_to_first_token_seconds_bucket",
        'hhh_chat_latency_seconds_count{adapter_scope="base"}',
        'hhh_chat_tokens_total{direction="out"}',
        "hhh_outbox_depth{outbox=",
        f'hhh_engine_up{{engine="{gateway.gateway.pool.engines[0].url}"}} 1.0',
    ]:
        assert expected in text, expected


def test_a_dead_engine_in_the_list_is_skipped(vllm_engine, tmp_path) -> None:  # noqa: ANN001
    from common.processes import free_port
    from tests.fixtures.gateway import start_gateway

    dead = f"http://127.0.0.1:{free_port()}"
    running = start_gateway(vllm_engine.url, tmp_path, engine_urls=[dead, vllm_engine.url])
    try:
        for _ in range(4):
            response = client(running).chat.completions.create(model="hhh", messages=QUESTION, max_tokens=2)
            assert response.choices
        states = {e["url"]: e["up"] for e in httpx.get(f"{running.url}/readyz").json()["engines"]}
        assert states == {dead: False, vllm_engine.url: True}
    finally:
        running.stop()
