"""Caps on what one chat request may ask the engine to do, beyond what its schema bounds.

The protocol bounds each value (seed, logit_bias, top_k, ...); these are the configurable
caps on how much of it there is: ``stop`` strings, ``logit_bias`` entries, the size and
nesting of JSON schemas (``response_format``, ``tools``, ``structured_outputs.json``) and the
length of every regular expression the engine would compile (``structured_outputs.regex``,
and each ``pattern`` or ``patternProperties`` key inside a schema). An engine compiles a schema
or a pattern before it generates a token, so an unbounded one costs the engine, not the
caller. Each refusal is a ``GatewayError`` 400 whose reason is a fixed label.
"""

from __future__ import annotations

import json
from typing import Any

from serving.errors import GatewayError
from serving.limits.config import LimitSettings
from serving.protocol import ChatCompletionRequest


def check_caps(request: ChatCompletionRequest, limits: LimitSettings, *, max_tokens: int) -> None:
    """Refuse ``request`` if it exceeds a cap; ``max_tokens`` is the token limit it runs with."""
    stops = request.stop_list() or []
    if len(stops) > limits.max_stop:
        raise GatewayError(
            400, "too_many_stop",
            f"stop has {len(stops)} entries; at most {limits.max_stop} are allowed",
        )
    longest = max(stops, key=len, default="")
    if len(longest) > limits.max_stop_chars:
        raise GatewayError(
            400, "stop_too_long",
            f"a stop string has {len(longest)} characters; at most {limits.max_stop_chars} are allowed",
        )
    if request.logit_bias and len(request.logit_bias) > limits.max_logit_bias:
        raise GatewayError(
            400, "too_many_logit_bias",
            f"logit_bias has {len(request.logit_bias)} entries; at most {limits.max_logit_bias} "
            "are allowed",
        )
    if request.min_tokens is not None and request.min_tokens > max_tokens:
        raise GatewayError(
            400, "min_tokens_too_large",
            f"min_tokens={request.min_tokens} exceeds max_tokens={max_tokens}; lower it",
        )
    if request.response_format is not None:
        check_schema("response_format", request.response_format, limits)
    if request.tools is not None:
        check_schema("tools", request.tools, limits)
    structured = request.structured_outputs
    if structured is None:
        return
    if structured.json_schema is not None:
        check_schema("structured_outputs.json", _parsed(structured.json_schema, limits), limits)
    if structured.regex is not None:
        _check_regex("structured_outputs.regex", structured.regex, limits)
    if structured.choice is not None:
        if len(structured.choice) > limits.max_choices:
            raise GatewayError(
                400, "too_many_choices",
                f"structured_outputs.choice has {len(structured.choice)} options; at most "
                f"{limits.max_choices} are allowed",
            )
        check_schema("structured_outputs.choice", structured.choice, limits)


def check_schema(name: str, value: Any, limits: LimitSettings) -> None:
    """Refuse a JSON value nested deeper than ``max_schema_depth``, larger than
    ``max_schema_bytes`` as JSON, or holding a ``pattern`` longer than ``max_regex_chars``.

    The walk is iterative, so a deeply nested value cannot exhaust the stack here.
    """
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > limits.max_schema_depth:
            raise GatewayError(
                400, "schema_too_deep",
                f"{name} is nested more than {limits.max_schema_depth} levels deep; flatten it",
            )
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                _check_regex(f"a pattern in {name}", node["pattern"], limits)
            if isinstance(node.get("patternProperties"), dict):
                for pattern in node["patternProperties"]:
                    _check_regex(f"a patternProperties key in {name}", pattern, limits)
            pending.extend((child, depth + 1) for child in node.values())
        else:
            pending.extend((child, depth + 1) for child in node)
    size = len(json.dumps(value, separators=(",", ":")).encode("utf-8"))
    if size > limits.max_schema_bytes:
        raise GatewayError(
            400, "schema_too_large",
            f"{name} is {size:,} bytes as JSON; at most {limits.max_schema_bytes:,} are allowed",
        )


def _check_regex(where: str, pattern: str, limits: LimitSettings) -> None:
    if len(pattern) > limits.max_regex_chars:
        raise GatewayError(
            400, "regex_too_long",
            f"{where} has {len(pattern):,} characters; at most {limits.max_regex_chars:,} are allowed",
        )


def _parsed(schema: dict[str, Any] | str, limits: LimitSettings) -> Any:
    """A schema given as JSON text, parsed (after a size check, so parsing is bounded)."""
    if isinstance(schema, dict):
        return schema
    if len(schema.encode("utf-8")) > limits.max_schema_bytes:
        raise GatewayError(
            400, "schema_too_large",
            f"structured_outputs.json is {len(schema.encode('utf-8')):,} bytes; at most "
            f"{limits.max_schema_bytes:,} are allowed",
        )
    try:
        return json.loads(schema)
    except RecursionError:
        raise GatewayError(
            400, "schema_too_deep",
            f"structured_outputs.json is nested more than {limits.max_schema_depth} levels deep; "
            "flatten it",
        ) from None
    except ValueError as error:
        raise GatewayError(
            400, "invalid_schema", f"structured_outputs.json is not valid JSON: {error}"
        ) from None
