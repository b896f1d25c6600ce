"""The gateway's wire protocol: OpenAI chat requests, feedback and rankings (pydantic).

Requests forbid unknown fields (a misspelt parameter is an error, not silently ignored), the
way OpenAI's API does. Responses are vLLM's, passed through with hhh's additions:
``choices[i].completion_id`` (the id to rate), ``hhh_adapter`` (what served it), and the
headers ``x-hhh-completion-ids`` and ``x-hhh-adapter``. The official ``openai`` client keeps
unknown response fields, so ``choice.completion_id`` works unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.encodable import EncodableRequest
from streams.events import ChatMessage, Criterion
from streams.user_ids import UserId


class TextPart(BaseModel):
    """A text part of a message's content (the only part type a text model takes)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class RequestMessage(BaseModel):
    """A chat message as OpenAI's API takes it (text content)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=64)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def as_event_message(self) -> ChatMessage:
        """The message as the event log records it (content flattened to text)."""
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        return ChatMessage(role=self.role, content=text)


class StreamOptions(BaseModel):
    """OpenAI ``stream_options``."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ChatCompletionRequest(EncodableRequest):
    """``POST /v1/chat/completions``: the OpenAI fields that a vLLM text model serves."""

    model_config = ConfigDict(extra="forbid")

    messages: list[RequestMessage] = Field(min_length=1)
    model: str
    n: int = Field(default=1, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: UserField
    metadata: dict[str, str] | None = None
    store: bool | None = None

    @model_validator(mode="after")
    def _one_token_limit(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            if self.max_tokens != self.max_completion_tokens:
                raise ValueError(
                    f"max_tokens={self.max_tokens} and max_completion_tokens="
                    f"{self.max_completion_tokens} disagree; send one of them"
                )
        return self

    @property
    def token_limit(self) -> int | None:
        """The requested completion-token limit, whichever field carried it."""
        return self.max_completion_tokens or self.max_tokens

    def stop_list(self) -> list[str] | None:
        """``stop`` as a list."""
        return [self.stop] if isinstance(self.stop, str) else self.stop


CompletionId = Annotated[str, Field(min_length=1, max_length=1024)]
UserField = Annotated[
    UserId | None,
    Field(default=None,
          description="The caller when auth is off; ignored when an API key names the caller."),
]


class ThumbsRequest(EncodableRequest):
    """``POST /v1/feedback``: a thumbs up or down on one completion."""

    model_config = ConfigDict(extra="forbid")

    completion_id: CompletionId
    vote: Literal["up", "down"]
    comment: str | None = Field(default=None, max_length=4000)
    criterion: Criterion = "helpfulness"
    user: UserField


class RankingRequest(EncodableRequest):
    """``POST /v1/rankings``: completions of one prompt, best first, ties as groups.

    ``ranking`` items are ids or lists of ids (a tie group): ``["a", ["b", "c"], "d"]``.
    """

    model_config = ConfigDict(extra="forbid")

    ranking: list[CompletionId | list[CompletionId]] = Field(min_length=1, max_length=128)
    unusable: list[CompletionId] = Field(default_factory=list, max_length=128)
    criterion: Criterion = "helpfulness"
    labeler_id: UserId | None = Field(
        default=None,
        description="Whose judgement (labelers only: one of the key's labeler_ids); default: caller.",
    )
    user: UserField

    def groups(self) -> list[list[str]]:
        """The ranking as tie groups."""
        return [[item] if isinstance(item, str) else list(item) for item in self.ranking]


class FeedbackAccepted(BaseModel):
    """The answer to accepted feedback: durable, with its event id."""

    event_id: str
    status: Literal["accepted"] = "accepted"
