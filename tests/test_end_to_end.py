"""The whole loop on the real parts: users' feedback through the Kafka-protocol broker → the
trainer's round (reward model, PPO against the deployed adapter, gate, publish) → a gateway
replica in front of the vLLM engine swaps the new version in and serves it to the `openai`
client."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI

from tests.serving.adapters.test_controller import Rig, rig, served_by, wait_served  # noqa: F401 (fixture)
from tests.trainer.test_daemon import LENIENT_GATE, daemon_for
from trainer.demo_model.feedback import politeness_events, publish_all

pytestmark = [pytest.mark.vllm, pytest.mark.kafka]


def test_feedback_becomes_an_adapter_that_the_gateway_serves(
    rig: Rig, tiny_model_dir: Path, tmp_path: Path
) -> None:
    gateway = rig.start("loop")
    assert served_by(gateway.url, "ann") == "base"
    publish_all(rig.event_log, politeness_events(range(0, 120)))

    report = daemon_for(tmp_path, tiny_model_dir, rig.event_log, rig.store, **LENIENT_GATE).run_round()

    assert report.published == ["global@1"], report.steps
    wait_served(gateway.url, "ann", "global@1")
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="hhh", messages=[{"role": "user", "content": "How do I boil an egg?"}], max_tokens=8, user="bob",
    )
    assert reply.hhh_adapter == {"scope": "global", "version": 1}
    assert reply.choices[0].message.content
