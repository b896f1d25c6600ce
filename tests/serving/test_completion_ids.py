"""Signed completion ids: verifiable by any replica with the key, unforgeable without it."""

from __future__ import annotations

import pytest

from serving.completion_ids import (
    CompletionClaim,
    CompletionIdSigner,
    InvalidCompletionId,
    prompt_hash,
)
from streams.events import AdapterRef, ChatMessage

KEY = b"k" * 32
CLAIM = CompletionClaim("alice", "p" * 32, "req-1", 2, AdapterRef(scope="user:alice", version=4))


def test_another_replica_with_the_same_key_reads_the_claim_back() -> None:
    completion_id = CompletionIdSigner(KEY).sign(CLAIM)
    assert CompletionIdSigner(KEY).verify(completion_id) == CLAIM


@pytest.mark.parametrize(
    "tamper",
    [
        lambda cid: cid.replace("cmpl-", "cmpl-x", 1),
        lambda cid: cid[:-2] + ("AA" if not cid.endswith("AA") else "BB"),
        lambda cid: cid.split(".")[0],
        lambda cid: "chatcmpl-123",
        lambda cid: cid + ".extra",
        lambda cid: "cmpl-!!!.???",
    ],
)
def test_altered_or_made_up_ids_are_refused(tamper) -> None:  # noqa: ANN001
    completion_id = CompletionIdSigner(KEY).sign(CLAIM)
    with pytest.raises(InvalidCompletionId):
        CompletionIdSigner(KEY).verify(tamper(completion_id))


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.mark.parametrize(
    "respell",
    [
        lambda cid: cid + "==",  # padding
        lambda cid: cid + "=",
        lambda cid: cid[:-1] + _B64[_B64.index(cid[-1]) ^ 1],  # an unused low bit of the last digit
        lambda cid: cid + "\n",
    ],
    ids=["==", "=", "unused-bits", "newline"],
)
def test_only_the_canonical_spelling_of_an_id_is_accepted(respell) -> None:  # noqa: ANN001
    signer = CompletionIdSigner(KEY)
    completion_id = signer.sign(CLAIM)
    assert len(completion_id.split(".")[1]) == 22  # 16 bytes: the last digit carries 4 unused bits
    with pytest.raises(InvalidCompletionId, match="malformed"):
        signer.verify(respell(completion_id))


def test_an_id_signed_with_another_key_is_refused() -> None:
    foreign = CompletionIdSigner(b"z" * 32).sign(CLAIM)
    with pytest.raises(InvalidCompletionId, match="was not issued by this service"):
        CompletionIdSigner(KEY).verify(foreign)


def test_a_changed_claim_with_the_old_tag_is_refused() -> None:
    signer = CompletionIdSigner(KEY)
    genuine = signer.sign(CLAIM)
    other_user = signer.sign(CompletionClaim("mallory", *list(CLAIM.__dict__.values())[1:]))
    spliced = other_user.split(".")[0] + "." + genuine.split(".")[1]
    with pytest.raises(InvalidCompletionId):
        signer.verify(spliced)


def test_prompt_hash_depends_on_every_message_and_nothing_else() -> None:
    conversation = [ChatMessage(role="system", content="Be kind."), ChatMessage(role="user", content="Hi")]
    assert prompt_hash(conversation) == prompt_hash([m.model_copy() for m in conversation])
    assert prompt_hash(conversation) != prompt_hash(conversation[1:])
    assert prompt_hash(conversation) != prompt_hash(
        [conversation[0], ChatMessage(role="user", content="Hi!")]
    )
