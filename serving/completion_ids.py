"""Completion ids that any gateway replica can validate without shared state.

An id is ``cmpl-<payload>.<tag>``: the payload (URL-safe base64 of compact JSON) names the
user who received the completion, the prompt hash, the request, the choice index and the
adapter that generated it; the tag is HMAC-SHA256 over the payload with the replicas' shared
signing key, truncated to 128 bits. A forged or altered id fails the tag check; a valid id
proves who received which completion of which prompt, so feedback is validated locally.

Decoding is canonical: base64 that is not exactly what ``sign`` writes (padding, other unused
bits, the standard alphabet) is refused, so each completion has one id, never several spellings
that would count as different completions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

from streams.events import AdapterRef, ChatMessage

PREFIX = "cmpl-"
_TAG_BYTES = 16


def prompt_hash(messages: list[ChatMessage]) -> str:
    """A stable id of a conversation: SHA-256 of its canonical JSON, first 128 bits in hex."""
    canonical = json.dumps(
        [message.model_dump() for message in messages], separators=(",", ":"), sort_keys=True
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class CompletionClaim:
    """What a completion id asserts."""

    user_id: str
    prompt_id: str
    request_id: str
    choice_index: int
    adapter: AdapterRef


class InvalidCompletionId(ValueError):
    """An id that is malformed or whose tag does not verify (forged, altered, other key)."""


class CompletionIdSigner:
    """Makes and verifies completion ids with one HMAC key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError(f"the signing key needs at least 16 bytes, got {len(key)}")
        self._key = key

    def sign(self, claim: CompletionClaim) -> str:
        """The id carrying ``claim``."""
        document = [
            claim.user_id, claim.prompt_id, claim.request_id, claim.choice_index,
            claim.adapter.scope, claim.adapter.version,
        ]
        payload = _b64(json.dumps(document, separators=(",", ":")).encode("utf-8"))
        return f"{PREFIX}{payload}.{_b64(self._tag(payload))}"

    def verify(self, completion_id: str) -> CompletionClaim:
        """The claim of a genuine id; ``InvalidCompletionId`` otherwise."""
        if not completion_id.startswith(PREFIX) or completion_id.count(".") != 1:
            raise InvalidCompletionId(f"{completion_id[:80]!r} is not a completion id of this service")
        payload, tag = completion_id[len(PREFIX):].split(".")
        try:
            genuine = hmac.compare_digest(_unb64(tag), self._tag(payload))
        except ValueError as error:
            raise InvalidCompletionId(f"{completion_id[:80]!r} is malformed") from error
        if not genuine:
            raise InvalidCompletionId(f"{completion_id[:80]!r} was not issued by this service")
        user_id, prompt_id, request_id, choice_index, scope, version = json.loads(_unb64(payload))
        return CompletionClaim(
            user_id, prompt_id, request_id, choice_index, AdapterRef(scope=scope, version=version)
        )

    def _tag(self, payload: str) -> bytes:
        return hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest()[:_TAG_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """The bytes of unpadded URL-safe base64 ``text``; `ValueError` unless it is the canonical
    spelling (the one `_b64` writes) of those bytes."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as error:
        raise ValueError(f"not base64: {error}") from error
    if _b64(data) != text:
        raise ValueError("not the canonical base64 of its bytes")
    return data
