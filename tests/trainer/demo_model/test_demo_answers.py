"""The demo model answers held-out prompts on topic, sampled at temperature 1, in every style.

This is what RLHF starts from: answers worth ranking (the requested intent's content), in a
broad mix of styles (polite, curt, rude, rambling, caveat, refusal) for the feedback to shift.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.demo_model.corpus import STYLES, heldout_prompts
from trainer.demo_model.on_topic import answer_style

SAMPLES_PER_PROMPT = 3
MIN_ON_TOPIC = 0.8
"""Least share of sampled answers that carry the requested intent's content (issue 9)."""
MIN_STYLE_SHARE = 0.03
"""Least share of sampled answers in each style: the mix stays broad."""
MAX_NEW_TOKENS = 112
"""Room for the longest corpus reply (100 tokens, rambling) and its end-of-sequence token."""
BATCH_PROMPTS = 34


def sample_answers(model_dir: Path, users: list[str], n: int, seed: int) -> list[str]:
    """`n` answers per user message, sampled at temperature 1 with no top-k or top-p cut."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(seed)
    answers = []
    for start in range(0, len(users), BATCH_PROMPTS):
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                                 tokenize=False, add_generation_prompt=True)
                   for user in users[start : start + BATCH_PROMPTS]]
        batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 num_return_sequences=n, max_new_tokens=MAX_NEW_TOKENS,
                                 pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :],
                                          skip_special_tokens=True)
    return answers


@pytest.mark.xfail(strict=True, reason=(
    "issue 9 item 11 is not reached yet: the demo variant answers about 40 % of held-out prompts "
    "on topic at temperature 1 (39 % of 204 samples; rambling, 2.5 %, is the rarest style)"))
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
