"""Shared by the PPO and DPO tests: a deployed adapter to start from, and synthetic rewards."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from trainer.demo_model.corpus import generate_dialogues, heldout_prompts
from trainer.rl.models import POLICY_ADAPTER, PolicyStack, load_frozen_base
from trainer.rl.rollout import Conversation

POLITE_OPENINGS = ("Happy to help", "Great question", "Sure, glad you asked", "Of course")
"""How replies in the corpus's polite (and caveat) style begin (trainer.demo_model.corpus)."""


def polite_reward(prompts: Sequence[Conversation], responses: Sequence[str]) -> torch.Tensor:
    """+1 for a reply that opens like the corpus's polite style, else 0."""
    return torch.tensor([float(any(o in r for o in POLITE_OPENINGS)) for r in responses])


def training_prompts(n: int, seed: int = 7) -> list[Conversation]:
    """User turns of corpus dialogues (never held-out phrasings)."""
    return [[{"role": "user", "content": d.messages[-1]["content"]}]
            for d in generate_dialogues(n, seed=seed)]


def heldout_conversations() -> list[Conversation]:
    return [[{"role": "user", "content": p.user}] for p in heldout_prompts()]


def write_deployed_adapter(model_dir: Path, out_dir: Path, seed: int = 1) -> Path:
    """A LoRA adapter with random (non-zero) A and B, so that it differs from the base."""
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(load_frozen_base(model_dir), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)  # a mild change: a deployed adapter, not noise
    model.save_pretrained(out_dir)
    return out_dir


def move_policy(stack: PolicyStack, scale: float, seed: int) -> None:
    """Add Gaussian noise (std ``scale``) to the policy adapter's B: a candidate that moved."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in stack.peft_model.named_parameters():
            if f"lora_B.{POLICY_ADAPTER}" in name:
                param.add_(torch.randn_like(param) * scale)
