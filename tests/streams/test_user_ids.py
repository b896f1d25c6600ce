"""One rule for user ids, shared by the API, the API-key settings, the adapter store and the events."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from serving.adapters.store import scope_dir_parts
from serving.config import ApiKey
from serving.protocol import ChatCompletionRequest, RankingRequest, ThumbsRequest
from streams.codec import FEEDBACK, DecodeError, decode
from streams.events import AdapterPublishedEvent, AdapterRef, RankingFeedback, ThumbsFeedback
from streams.user_ids import USER_ID_MAX_LENGTH, InvalidUserId, check_user_id


@pytest.mark.parametrize("user_id", ["ann", "ann@example.com", "a.b_c-D9", "x" * USER_ID_MAX_LENGTH, ".a", "a.."])
def test_ids_of_the_documented_alphabet_and_length_are_accepted(user_id: str) -> None:
    assert check_user_id(user_id) == user_id


@pytest.mark.parametrize(
    ("user_id", "message"),
    [
        (".", "'.' is only dots"),
        ("..", "'..' is only dots"),
        ("...", "is only dots"),
        ("", "cannot be empty"),
        ("a/b", "contains '/'"),
        ("../etc", "contains '/'"),
        ("ann:2", "contains ':'"),
        ("an n", "contains ' '"),
        ("zoë", "contains 'ë'"),
        ("x" * (USER_ID_MAX_LENGTH + 1), f"has {USER_ID_MAX_LENGTH + 1} characters; at most {USER_ID_MAX_LENGTH}"),
    ],
)
def test_other_ids_are_refused_saying_what_is_wrong(user_id: str, message: str) -> None:
    with pytest.raises(InvalidUserId, match=message):
        check_user_id(user_id)


ENTRY_POINTS: dict[str, Callable[[str], object]] = {
    "chat request user": lambda uid: ChatCompletionRequest(model="hhh", messages=[{"role": "user", "content": "hi"}],
                                                           user=uid),
    "thumbs request user": lambda uid: ThumbsRequest(completion_id="c", vote="up", user=uid),
    "ranking labeler_id": lambda uid: RankingRequest(ranking=["a", "b"], labeler_id=uid),
    "API key user": lambda uid: ApiKey(user=uid),
    "API key labeler_ids": lambda uid: ApiKey(user="lena", roles={"labeler"}, labeler_ids={uid}),
    "adapter store scope": lambda uid: scope_dir_parts(f"user:{uid}"),
    "thumbs event": lambda uid: ThumbsFeedback(completion_id="c", user_id=uid, vote="up"),
    "ranking event": lambda uid: RankingFeedback(prompt_id="p", user_id="u", labeler_id=uid, ranking=[["a"]]),
    "adapter reference": lambda uid: AdapterRef(scope=f"user:{uid}", version=1),
    "adapter event": lambda uid: AdapterPublishedEvent(scope=f"user:{uid}", version=1, path="/a",
                                                       sha256="0" * 64, base_model="demo"),
}


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("user_id", [".", "..", "a/b"])
def test_every_entry_point_refuses_a_bad_id_with_the_same_reason(entry_point: str, user_id: str) -> None:
    with pytest.raises(ValueError) as refused:
        ENTRY_POINTS[entry_point](user_id)
    with pytest.raises(InvalidUserId) as expected:
        check_user_id(user_id)
    assert str(expected.value) in str(refused.value)


def test_an_event_with_a_bad_user_id_is_a_dead_letter_not_a_crash() -> None:
    document = {"schema_version": 1, "type": "thumbs", "completion_id": "c", "user_id": "..", "vote": "up"}
    with pytest.raises(DecodeError, match="user_id: user id '..' is only dots") as refused:
        decode(FEEDBACK, json.dumps(document).encode())
    assert refused.value.reason == "schema_mismatch"
