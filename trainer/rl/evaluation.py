"""Sample a policy on prompts and measure it: the one evaluation PPO's tests and the gate share.

For prompts x_1..x_N (repeat a prompt to sample it several times), `evaluate_policy` samples
one response y_i ~ π_θ(·|x_i) per prompt and returns

- the reward r(x_i, y_i) of each response, (N,);
- the exact KL of each response to the reference, (N,):
  KL_i = Σ_t Σ_v π_θ(v | x_i, y_<t) · (log π_θ(v | ·) − log π_ref(v | ·)) over the response's
  tokens t (`exact_token_kl`), both at the sampling temperature: no estimator noise beyond the
  sampling of the responses.

`reference_rewards` samples the reference (the deployed adapter, or the base) on the same
prompts through its own adapter and scores those responses: the other side of a comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from trainer.rl.kl import exact_token_kl
from trainer.rl.models import PolicyStack
from trainer.rl.rollout import Conversation, sample_rollout


class RewardFn(Protocol):
    """Scores responses: (B,) float tensor, higher is better, one per (prompt, response)."""

    def __call__(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplingSpec:
    """How responses are sampled for an evaluation."""

    max_new_tokens: int
    temperature: float
    max_prompt_tokens: int
    batch_size: int
    """Prompts per `generate` call."""


@dataclass(frozen=True)
class PolicyEvaluation:
    """What `evaluate_policy` measured, per sampled response."""

    rewards: torch.Tensor
    """(N,) r(x_i, y_i)."""
    kl_to_reference: torch.Tensor
    """(N,) Σ_t exact KL(π_θ ‖ π_ref) over response i's tokens, nats."""

    @property
    def reward_mean(self) -> float:
        return self.rewards.mean().item()

    @property
    def kl_mean(self) -> float:
        return self.kl_to_reference.mean().item()


@torch.no_grad()
def evaluate_policy(
    stack: PolicyStack, reward_fn: RewardFn, prompts: Sequence[Conversation], spec: SamplingSpec,
    *, merged: bool = True,
) -> PolicyEvaluation:
    """Sample `stack`'s policy once per prompt; rewards and exact KL to its reference."""
    stack.peft_model.eval()
    rewards, kls = [], []
    for start in range(0, len(prompts), spec.batch_size):
        rollout = sample_rollout(stack, prompts[start : start + spec.batch_size],
                                 max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                                 max_prompt_tokens=spec.max_prompt_tokens, merged=merged)
        rewards.append(reward_fn(rollout.prompts, rollout.responses).float())
        logits, _ = stack.policy_outputs(rollout.input_ids, rollout.attention_mask, rollout.prompt_width)
        reference = stack.reference_logits(rollout.input_ids, rollout.attention_mask, rollout.prompt_width)
        token_kl = exact_token_kl(logits / spec.temperature, reference / spec.temperature)
        kls.append((token_kl * rollout.response_mask).sum(1))
    return PolicyEvaluation(torch.cat(rewards), torch.cat(kls))


@torch.no_grad()
def reference_rewards(
    stack: PolicyStack, reward_fn: RewardFn, prompts: Sequence[Conversation], spec: SamplingSpec
) -> torch.Tensor:
    """(N,) rewards of one response per prompt sampled from `stack`'s reference."""
    stack.peft_model.eval()
    rewards = []
    for start in range(0, len(prompts), spec.batch_size):
        # Through the reference's adapter: the merged fast path is for the policy only.
        with stack.reference_active():
            rollout = sample_rollout(stack, prompts[start : start + spec.batch_size],
                                     max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                                     max_prompt_tokens=spec.max_prompt_tokens, merged=False)
        rewards.append(reward_fn(rollout.prompts, rollout.responses).float())
    return torch.cat(rewards)
