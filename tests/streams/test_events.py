"""Event schemas and the codec: what is refused, and with which reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streams.codec import (
    ADAPTERS,
    COMPLETIONS,
    DECODE_REASONS,
    FEEDBACK,
    TOPIC_SCHEMAS,
    DecodeError,
    EventError,
    decode,
    encode,
)
from streams.events import (
    AdapterPublishedEvent,
    AdapterRef,
    ChatMessage,
    CompletionEvent,
    RankingFeedback,
    SamplingParams,
    ThumbsFeedback,
)


def test_a_ranking_expresses_ties_and_unusable_completions() -> None:
    ranking = RankingFeedback(
        prompt_id="p", user_id="u", labeler_id="l", ranking=[["a"], ["b", "c"], ["d"]], unusable=["e"]
    )
    assert ranking.ranked_ids == ["a", "b", "c", "d"]
    assert decode(FEEDBACK, encode(FEEDBACK, ranking)) == ranking


@pytest.mark.parametrize(
    ("ranking", "unusable", "message"),
    [
        ([["a"], ["a", "b"]], [], r"appear more than once: \['a'\]"),
        ([["a"], ["b"]], ["b"], r"appear more than once: \['b'\]"),
        ([["a"], []], [], "tie group 1 is empty"),
        ([], [], "at least 1 item"),
    ],
)
def test_a_malformed_ranking_is_refused_with_the_reason(
    ranking: list[list[str]], unusable: list[str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RankingFeedback(prompt_id="p", user_id="u", labeler_id="l", ranking=ranking, unusable=unusable)


@pytest.mark.parametrize(
    ("scope", "version", "message"),
    [
        ("base", 1, "the base model has no version"),
        ("global", None, "needs a version"),
        ("team:x", 1, "is not 'base', 'global' or 'user:<id>'"),
        ("user:", 1, "a user id cannot be empty"),
        ("user:..", 1, "user id '..' is only dots"),
    ],
)
def test_adapter_references_must_be_consistent(scope: str, version: int | None, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AdapterRef(scope=scope, version=version)


def test_adapter_events_need_a_valid_scope_and_checksum() -> None:
    fields = dict(version=1, path="/a", base_model="demo")
    with pytest.raises(ValidationError, match="is not 'global' or 'user:<id>'"):
        AdapterPublishedEvent(scope="everyone", sha256="0" * 64, **fields)
    with pytest.raises(ValidationError, match="sha256"):
        AdapterPublishedEvent(scope="global", sha256="not-a-hash", **fields)
    event = AdapterPublishedEvent(scope="user:ann@example.com", sha256="f" * 64, **fields)
    assert decode(ADAPTERS, encode(ADAPTERS, event)) == event


def test_adapter_events_carry_finite_metrics_only() -> None:
    fields = dict(scope="global", version=1, path="/a", base_model="demo", sha256="0" * 64)
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="finite number"):
            AdapterPublishedEvent(metrics={"reward": value}, **fields)


def test_an_event_whose_text_utf8_cannot_encode_is_refused_with_a_reason() -> None:
    event = CompletionEvent(
        completion_id="c", request_id="r", prompt_id="p", user_id="u", completion="x", choice_index=0,
        messages=[ChatMessage(role="user", content="a\ud800")], adapter=AdapterRef(scope="base"),
        model="m", sampling=SamplingParams(), prompt_tokens=1, completion_tokens=1, latency_ms=1.0,
    )
    with pytest.raises(EventError, match="cannot be encoded") as refused:
        encode(COMPLETIONS, event)
    assert refused.value.reason == "unencodable"


def test_unknown_fields_are_refused_not_dropped() -> None:
    payload = encode(FEEDBACK, ThumbsFeedback(completion_id="c", user_id="u", vote="up"))
    tampered = payload.replace(b'"vote"', b'"extra":1,"vote"')
    with pytest.raises(DecodeError, match="extra: Extra inputs are not permitted") as refused:
        decode(FEEDBACK, tampered)
    assert refused.value.reason == "schema_mismatch"


def test_a_newer_schema_version_is_refused_not_guessed() -> None:
    payload = encode(FEEDBACK, ThumbsFeedback(completion_id="c", user_id="u", vote="up"))
    with pytest.raises(DecodeError, match="schema_version 2 is not 1") as refused:
        decode(FEEDBACK, payload.replace(b'"schema_version":1', b'"schema_version":2'))
    assert refused.value.reason == "unsupported_schema_version"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def feedback_like(value: object) -> bytes:
    """A thumbs event whose fields (or an extra one) hold ``value``."""
    document = {"schema_version": 1, "type": "thumbs", "completion_id": value, "user_id": "u",
                "vote": "up", "comment": value}
    return json.dumps(document).encode()


@settings(max_examples=300, deadline=None)
@given(
    topic=st.sampled_from(sorted(TOPIC_SCHEMAS)),
    payload=st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode())
    | JSON_VALUES.map(feedback_like),
)
def test_decode_raises_only_decode_errors_with_a_known_reason(topic: str, payload: bytes) -> None:
    try:
        decode(topic, payload)
    except DecodeError as error:
        assert error.reason in DECODE_REASONS and str(error)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "too_deep"),
        (b'{"schema_version": 1, "comment": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001, "too_deep"),
        (b'{"schema_version": ' + b"9" * 5000 + b"}", "undecodable"),  # int longer than Python parses
        (feedback_like("\ud800"), "schema_mismatch"),  # a string SQLite could not store
    ],
    ids=["array", "object", "huge-int", "lone-surrogate"],
)
def test_hostile_payloads_are_decode_errors_with_their_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as refused:
        decode(FEEDBACK, payload)
    assert refused.value.reason == reason
