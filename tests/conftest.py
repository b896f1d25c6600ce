"""Shared fixtures: one Kafka-protocol broker and one vLLM engine per test session."""

pytest_plugins = [
    "tests.fixtures.kafka_broker",
    "tests.fixtures.event_logs",
    "tests.fixtures.vllm_engine",
    "tests.fixtures.gateway",
]
