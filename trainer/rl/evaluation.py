"""Sample a policy on prompts and measure it: the one evaluation PPO's tests and the gate share.

For prompts x_1..x_N (repeat a prompt to sample it several times), `evaluate_policy` samples
one response y_i ~ π_θ(·|x_i) per prompt and returns, per response,

- the reward r(x_i, y_i), less ``missing_eos_penalty`` when the response was cut by the token
  limit (`penalise_truncated`: a response that never ended would otherwise be scored as if it
  had, and a policy could gain by rambling into the limit);
- the exact KL to the reference and to the base model (the anchor that bounds the drift over
  rounds): KL_i = Σ_t Σ_v π_θ(v | x_i, y_<t) · (log π_θ(v | ·) − log π(v | ·)) over the
  response's tokens t (`exact_token_kl`), at the sampling temperature: no estimator noise
  beyond the sampling of the responses.

`reference_rewards` samples the reference (the deployed adapter, or the base) on the same
prompts through its own adapter and scores those responses the same way: the other side of a
paired comparison.

The figures come back on the CPU in float32 (logits are cast before the temperature and the
log-softmax), whatever device and dtype the stack computes in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from trainer.rl.kl import exact_token_kl
from trainer.rl.models import PolicyStack
from trainer.rl.rollout import Conversation, Rollout, sample_rollout


class RewardFn(Protocol):
    """Scores responses: (B,) float tensor, higher is better, one per (prompt, response)."""

    def __call__(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplingSpec:
    """How responses are sampled and scored for an evaluation."""

    max_new_tokens: int
    temperature: float
    max_prompt_tokens: int
    batch_size: int
    """Prompts per `generate` call."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the reward of a response cut by ``max_new_tokens``."""


@dataclass(frozen=True)
class PolicyEvaluation:
    """What `evaluate_policy` measured, per sampled response."""

    rewards: torch.Tensor
    """(N,) r(x_i, y_i), truncated responses penalised."""
    kl_to_reference: torch.Tensor
    """(N,) Σ_t exact KL(π_θ ‖ π_ref) over response i's tokens, nats."""
    kl_to_base: torch.Tensor
    """(N,) Σ_t exact KL(π_θ ‖ π_base), nats: the drift from the base over every round."""
    responses: tuple[str, ...]
    """The N sampled responses, in the order of the prompts."""
    ended: torch.Tensor
    """(N,) bool: did response i end (EOS) before the token limit?"""

    @property
    def reward_mean(self) -> float:
        return self.rewards.mean().item()

    @property
    def kl_mean(self) -> float:
        return self.kl_to_reference.mean().item()


def penalise_truncated(scores: torch.Tensor, ended: torch.Tensor, penalty: float) -> torch.Tensor:
    """(B,) scores less ``penalty`` where the (B,) bool ``ended`` is False."""
    return scores - penalty * (~ended).to(scores.dtype)


def _scored(rollout: Rollout, reward_fn: RewardFn, spec: SamplingSpec) -> torch.Tensor:
    scores = reward_fn(rollout.prompts, rollout.responses).float().cpu()
    return penalise_truncated(scores, rollout.ended.cpu(), spec.missing_eos_penalty)


@torch.no_grad()
def evaluate_policy(
    stack: PolicyStack, reward_fn: RewardFn, prompts: Sequence[Conversation], spec: SamplingSpec,
    *, merged: bool = True,
) -> PolicyEvaluation:
    """Sample `stack`'s policy once per prompt; rewards and exact KL to reference and base."""
    stack.peft_model.eval()
    rewards, to_reference, to_base, responses, ended = [], [], [], [], []
    for start in range(0, len(prompts), spec.batch_size):
        rollout = sample_rollout(stack, prompts[start : start + spec.batch_size],
                                 max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                                 max_prompt_tokens=spec.max_prompt_tokens, merged=merged)
        rewards.append(_scored(rollout, reward_fn, spec))
        responses += rollout.responses
        ended.append(rollout.ended.cpu())
        layout = (rollout.input_ids, rollout.attention_mask, rollout.prompt_width)
        logits = stack.policy_outputs(*layout)[0].float() / spec.temperature
        reference = stack.reference_logits(*layout).float() / spec.temperature
        to_reference.append((exact_token_kl(logits, reference) * rollout.response_mask).sum(1).cpu())
        if stack.reference_adapter is None:  # the reference is the base itself
            to_base.append(to_reference[-1])
        else:
            base = stack.base_logits(*layout).float() / spec.temperature
            to_base.append((exact_token_kl(logits, base) * rollout.response_mask).sum(1).cpu())
    return PolicyEvaluation(torch.cat(rewards), torch.cat(to_reference), torch.cat(to_base),
                            tuple(responses), torch.cat(ended))


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
        rewards.append(_scored(rollout, reward_fn, spec))
    return torch.cat(rewards)
