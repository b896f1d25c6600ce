"""The demo model answers held-out prompts on topic, sampled at temperature 1, in every style.

This is what RLHF starts from: answers worth ranking (the requested intent's content), in a
broad mix of styles (polite, curt, rude, rambling, caveat, refusal) for the feedback to shift.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.demo_model import sample_answers
from trainer.demo_model.corpus import STYLES, heldout_prompts
from trainer.demo_model.on_topic import answer_style

SAMPLES_PER_PROMPT = 3
MIN_ON_TOPIC = 0.8
"""Least share of sampled answers that carry the requested intent's content (issue 9)."""
MIN_STYLE_SHARE = 0.03
"""Least share of sampled answers in each style: the mix stays broad."""


@pytest.mark.xfail(strict=True, reason=(
    "issue 9 item 11 is not reached yet: the demo variant answers about half of held-out prompts "
    "on topic at temperature 1 (48 % of these 204 samples, 51 % of 544 in BENCHMARKS.md)"))
def test_demo_model_answers_heldout_prompts_on_topic_in_every_style(demo_model_dir: Path) -> None:
    prompts = heldout_prompts()
    answers = sample_answers(demo_model_dir, [p.user for p in prompts], SAMPLES_PER_PROMPT, seed=0)
    intents = [p.intent for p in prompts for _ in range(SAMPLES_PER_PROMPT)]
    matched = [answer_style(intent, answer) for intent, answer in zip(intents, answers)]
    styles = Counter(matched)
    off_topic = [(i, a) for i, a, style in zip(intents, answers, matched) if style is None]

    share = 1 - styles[None] / len(answers)
    assert share >= MIN_ON_TOPIC, (f"{share:.0%} on topic", off_topic[:10])
    rare = {s: styles[s] for s in STYLES if styles[s] < MIN_STYLE_SHARE * len(answers)}
    assert not rare, (rare, styles)
