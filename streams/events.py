"""Event contracts: one pydantic model per kind of event, one event type per topic.

Every event carries a unique ``event_id`` (consumers dedupe by it: delivery is at-least-once),
a ``schema_version`` (a consumer refuses a version it does not know rather than guessing) and
``created_at`` (UTC). Models are frozen and forbid unknown fields, so a typo in a producer is a
validation error, not silently dropped data.

Topic           event                       key
completions     CompletionEvent             prompt id (all choices of one prompt together)
feedback        ThumbsFeedback | Ranking    user id (a user's votes stay ordered)
adapters        AdapterPublishedEvent       scope (``global`` or ``user:<id>``)
dead-letters    DeadLetterEvent             source topic
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    field_validator,
    model_validator,
)

from common.errors import UserError
from streams.user_ids import UserId, check_user_id

SCHEMA_VERSION = 1
"""The schema version this build writes and reads."""

Id = Annotated[str, Field(min_length=1, max_length=256)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def check_scope(scope: str) -> str:
    """``scope`` if it is an adapter scope: ``global``, or ``user:<id>`` with a valid user id
    (`streams.user_ids`); a `UserError` that says what is wrong otherwise."""
    if scope != "global" and not scope.startswith("user:"):
        raise UserError(f"scope {scope[:80]!r} is not 'global' or 'user:<id>'")
    if scope != "global":
        check_user_id(scope.removeprefix("user:"))
    return scope


Scope = Annotated[str, AfterValidator(check_scope)]
"""An adapter scope: the global adapter, or one user's own adapter."""


def new_event_id() -> str:
    """A fresh, globally unique event id (UUID4, hex)."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class Event(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Id = Field(default_factory=new_event_id, description="Unique id; consumers dedupe by it.")
    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Version of this schema.")
    created_at: datetime = Field(default_factory=utc_now, description="When the event was made (UTC).")


class ChatMessage(BaseModel):
    """One message of a conversation, as in the OpenAI chat schema (text content only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class SamplingParams(BaseModel):
    """The sampling settings a completion was generated with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    n: int = 1
    seed: int | None = None
    stop: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class AdapterRef(BaseModel):
    """Which weights served a completion: the base model, or an adapter scope at a version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: str = Field(description="'base', 'global' or 'user:<id>'.")
    version: int | None = Field(default=None, ge=1, description="Adapter version; None for 'base'.")

    @model_validator(mode="after")
    def _scope_and_version_agree(self) -> AdapterRef:
        if self.scope == "base":
            if self.version is not None:
                raise ValueError(f"the base model has no version, got version={self.version}")
        elif self.scope != "global" and not self.scope.startswith("user:"):
            raise ValueError(f"scope {self.scope[:80]!r} is not 'base', 'global' or 'user:<id>'")
        else:
            check_scope(self.scope)
        if self.scope != "base" and self.version is None:
            raise ValueError(f"adapter scope {self.scope!r} needs a version")
        return self

    @property
    def label(self) -> str:
        """``base``, ``global@3`` or ``user:ann@2``: for headers and logs (metrics: `serving.metrics`)."""
        return self.scope if self.version is None else f"{self.scope}@{self.version}"


class CompletionEvent(Event):
    """One choice of one chat completion, as the caller received it."""

    type: Literal["completion"] = "completion"
    completion_id: Id = Field(description="The id the caller rates this choice by.")
    request_id: Id = Field(description="The chat request; shared by the n choices of one request.")
    prompt_id: Id = Field(description="Hash of the messages; equal prompts share it.")
    user_id: UserId
    messages: list[ChatMessage] = Field(min_length=1)
    completion: str
    choice_index: int = Field(ge=0)
    finish_reason: str | None = None
    truncated: bool = Field(default=False, description="The client left before the stream ended.")
    adapter: AdapterRef
    model: str
    sampling: SamplingParams
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    latency_ms: float = Field(ge=0)
    time_to_first_token_ms: float | None = Field(default=None, ge=0)


Criterion = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")]


class ThumbsFeedback(Event):
    """A thumbs up or down on one completion.

    One request, however often retried, is one ``event_id``; a changed vote is a new event, and
    the user's latest (``created_at``) per completion and criterion is the one that counts.
    """

    type: Literal["thumbs"] = "thumbs"
    completion_id: Id
    user_id: UserId
    vote: Literal["up", "down"]
    comment: str | None = Field(default=None, max_length=4000)
    criterion: Criterion = "helpfulness"


class RankingFeedback(Event):
    """A ranking of completions of one prompt, best first.

    ``ranking`` is a list of tie groups: ``[["a"], ["b", "c"], ["d"]]`` says a is best, b and c
    tie, d is worst. ``unusable`` lists completions flagged as unusable (not ranked at all).
    Identity as for thumbs: the labeler's latest ranking per prompt and criterion counts.
    """

    type: Literal["ranking"] = "ranking"
    prompt_id: Id
    user_id: UserId = Field(description="Who submitted the ranking.")
    labeler_id: UserId = Field(description="Whose judgement it is (the user, or a labeler).")
    criterion: Criterion = "helpfulness"
    ranking: list[list[Id]] = Field(min_length=1)
    unusable: list[Id] = Field(default_factory=list)

    @field_validator("ranking")
    @classmethod
    def _no_empty_group(cls, ranking: list[list[str]]) -> list[list[str]]:
        for position, group in enumerate(ranking):
            if not group:
                raise ValueError(f"tie group {position} is empty")
        return ranking

    @model_validator(mode="after")
    def _each_id_once(self) -> RankingFeedback:
        ids = [cid for group in self.ranking for cid in group] + list(self.unusable)
        repeated = sorted({cid for cid in ids if ids.count(cid) > 1})
        if repeated:
            raise ValueError(f"completion ids appear more than once: {repeated}")
        return self

    @property
    def ranked_ids(self) -> list[str]:
        """Every ranked (usable) completion id, best first."""
        return [cid for group in self.ranking for cid in group]


FeedbackEvent = Annotated[ThumbsFeedback | RankingFeedback, Field(discriminator="type")]


class AdapterPublishedEvent(Event):
    """A new adapter version is in the adapter store and may be served."""

    type: Literal["adapter"] = "adapter"
    scope: Scope
    version: int = Field(ge=1)
    path: str = Field(min_length=1, description="Folder of the adapter in the adapter store.")
    sha256: Sha256 = Field(description="Checksum of the adapter's manifest.")
    parent_version: int | None = Field(default=None, ge=1)
    base_model: str = Field(min_length=1)
    metrics: dict[str, FiniteFloat] = Field(default_factory=dict)


class DeadLetterEvent(Event):
    """A message that could not be decoded or handled, kept with the reason."""

    type: Literal["dead_letter"] = "dead_letter"
    source_topic: str
    source_partition: int | None = None
    source_offset: int | None = None
    key: str | None = None
    payload: str = Field(description="The original bytes, as text or base64 (see encoding).")
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    payload_size: int | None = Field(default=None, ge=0, description="Bytes of the original.")
    payload_sha256: Sha256 | None = Field(default=None, description="Checksum of the original.")
    payload_truncated: bool = Field(
        default=False, description="``payload`` keeps only the start of an oversized original."
    )
    reason: str
    detail: dict[str, Any] = Field(default_factory=dict)
