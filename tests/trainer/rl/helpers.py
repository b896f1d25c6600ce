"""Shared by the PPO and DPO tests: a deployed adapter to start from, and synthetic rewards."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from trainer.demo_model.corpus import generate_dialogues, heldout_prompts
from trainer.config import PPOSettings
from trainer.rl.models import POLICY_ADAPTER, PolicyStack, load_frozen_base
from trainer.rl.ppo import PPOTrainer
from trainer.rl.rollout import Conversation, sample_rollout

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


def one_ppo_step(
    stack: PolicyStack, settings: PPOSettings
) -> tuple[list[torch.Tensor], PPOTrainer, dict[str, float]]:
    """The parameter change of one plain-SGD PPO step on a fixed rollout (SGD: the step is the
    gradient itself; Adam's first step would keep only its sign), from a policy whose LoRA B is
    non-zero, so every weight gets a gradient; with the trainer and the step's statistics."""
    with torch.no_grad():
        for name, param in stack.peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01, generator=torch.Generator().manual_seed(len(name)))
    trainer = PPOTrainer(stack, polite_reward, settings)
    trainer.optimizer = torch.optim.SGD(stack.trainable_parameters(), lr=1.0)
    before = [p.detach().clone() for p in stack.trainable_parameters()]
    torch.manual_seed(0)
    rollout = sample_rollout(stack, training_prompts(8), max_new_tokens=6, temperature=1.0, max_prompt_tokens=64)
    batch = trainer._score(rollout, polite_reward(rollout.prompts, rollout.responses) + 0.5)
    stats = trainer._step(batch, torch.arange(8))
    return [p.detach() - b for p, b in zip(stack.trainable_parameters(), before)], trainer, stats
