"""Schemathesis against the gateway's own OpenAPI document: no input gives a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.fixtures.gateway import API_KEYS, start_gateway

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def fuzzed_gateway_schema(vllm_engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator:  # noqa: ANN001
    """The OpenAPI schema of a gateway whose limits keep generated chats short."""
    home: Path = tmp_path_factory.mktemp("fuzz")
    running = start_gateway(
        vllm_engine.url, home, auth=True, api_keys=API_KEYS, max_tokens=4, max_n=2,
    )
    yield schemathesis.openapi.from_url(f"{running.url}/openapi.json")
    running.stop()


def test_no_generated_request_gets_a_server_error(fuzzed_gateway_schema) -> None:  # noqa: ANN001
    operations = [result.ok() for result in fuzzed_gateway_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/chat/completions", "POST /v1/feedback",
                                                "POST /v1/rankings", "GET /v1/models"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"authorization": "Bearer sk-alice"}, checks=[not_a_server_error]
            )

        call()
