"""PPO on the policy adapter with a KL penalty against the deployed adapter.

One iteration (`PPOTrainer.iteration`), after Ziegler et al. (2019) and CleanRL's `ppo.py`:

1. rollout: one sampled response per prompt from the policy, by transformers `generate`
   (`trainer.rl.rollout`) or by a vLLM engine (`trainer.rl.vllm_rollout`, `rollout_engine_url`);
2. score: the trainer's own forward passes give log π_old and V_old (policy) and log π_ref
   (reference); the reward callable scores each (prompt, response);
3. shape: r_t = −β·KL_t + score at the last token (less ``missing_eos_penalty`` for a response
   cut by the token limit); GAE(γ, λ) advantages, whitened; returns;
4. update: `ppo_epochs` passes over shuffled mini-batches minimising
   L = L_policy + c1·L_VF − c2·H (`trainer.rl.losses`), gradients clipped, stopping early once a
   mini-batch's approximate KL to the rollout policy exceeds `target_approx_kl`;
5. β follows the adaptive controller (or stays fixed); metrics go to the run record.

The reward is any `RewardFn`: the reward model plugs in as one; tests use synthetic rewards.

The batches live on the stack's device (`trainer.devices`); logits are cast to float32 before
the temperature and every log-softmax, so log-probabilities, KL, GAE and the losses are float32
whatever the base dtype. A mini-batch runs in micro-batches (``micro_batch_size``) that halve
on a GPU out-of-memory error (`trainer.devices.ShrinkingMicroBatch`): the same update.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch

from trainer.config import PPOSettings
from trainer.devices import ShrinkingMicroBatch, checkpointing_active
from trainer.rl.advantages import gae
from trainer.rl.evaluation import RewardFn, penalise_truncated
from trainer.rl.kl import AdaptiveKLController, FixedKLController, kl_estimate, shaped_rewards
from trainer.rl.losses import explained_variance, ppo_loss
from trainer.rl.masked import masked_whiten
from trainer.rl.models import PolicyStack, token_logprobs
from trainer.rl.record import RunRecord
from trainer.rl.rollout import Conversation, Rollout, sample_rollout
from trainer.rl.vllm_rollout import VLLMRolloutSampler


@dataclass(frozen=True)
class ScoredBatch:
    """A rollout scored for the update: what PPO's epochs read, B responses of T tokens.

    Everything is fixed before the first gradient step: log π_old, V_old and the advantages
    are the rollout policy's, not the one being updated.
    """

    input_ids: torch.Tensor
    """(B, P + T) prompt block (left-padded) then response block (right-padded)."""
    attention_mask: torch.Tensor
    """(B, P + T) 1 on real tokens."""
    prompt_width: int
    """P."""
    response_ids: torch.Tensor
    """(B, T) a_t, the sampled tokens."""
    mask: torch.Tensor
    """(B, T) float, 1 on response tokens up to and including EOS."""
    logprobs: torch.Tensor
    """(B, T) log π_old(a_t | s_t), at the sampling temperature."""
    values: torch.Tensor
    """(B, T) V_old(s_t), 0 outside the mask."""
    advantages: torch.Tensor
    """(B, T) GAE Â_t (whitened over the mask when configured)."""
    returns: torch.Tensor
    """(B, T) Â_t + V_old(s_t), the value target."""
    kl_sum: torch.Tensor
    """(B,) Σ_t KL_t estimate to the reference per response (the penalty's KL)."""


class RolloutSampler(Protocol):
    """Samples one response per prompt from `stack`'s policy: `sample_rollout` (transformers)
    or `VLLMRolloutSampler` (a vLLM engine)."""

    def __call__(self, stack: PolicyStack, prompts: Sequence[Conversation], *, max_new_tokens: int,
                 temperature: float, max_prompt_tokens: int) -> Rollout: ...


class PPOTrainer:
    """Runs PPO iterations on `stack`'s policy adapter and value head."""

    def __init__(
        self, stack: PolicyStack, reward_fn: RewardFn, settings: PPOSettings,
        record: RunRecord | None = None, *, initial_beta: float | None = None,
    ) -> None:
        """``initial_beta``: where the adaptive controller starts (the β the deployed adapter's
        round ended with); default ``settings.kl_coef``. A fixed β is always ``kl_coef``."""
        self.stack = stack
        self.reward_fn = reward_fn
        self.settings = settings
        self.record = record or RunRecord(None, "ppo")
        self.kl_controller: FixedKLController | AdaptiveKLController = (
            FixedKLController(settings.kl_coef) if settings.kl_target is None
            else AdaptiveKLController(initial_beta if initial_beta is not None else settings.kl_coef,
                                      settings.kl_target, settings.kl_horizon)
        )
        self.optimizer = torch.optim.AdamW(stack.trainable_parameters(), lr=settings.learning_rate,
                                           weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.micro_batch = ShrinkingMicroBatch(
            settings.micro_batch_size or settings.rollout_batch_size, minimum=1, unit="responses",
            advice="shorten HHH_PPO_MAX_NEW_TOKENS or HHH_PPO_MAX_PROMPT_TOKENS, set "
            "HHH_TRAINER_GRADIENT_CHECKPOINTING=true, or use a GPU with more memory")
        self.iterations_done = 0
        self.sample: RolloutSampler = (
            VLLMRolloutSampler(settings.rollout_engine_url) if settings.rollout_engine_url
            else partial(sample_rollout, merged=settings.merge_for_rollout)
        )

    def train(self, prompts: Sequence[Conversation], iterations: int, *,
              pause: Callable[[str], object] | None = None) -> list[dict[str, Any]]:
        """Run `iterations` iterations on batches drawn without replacement (reshuffled per pass).

        ``pause``: called before each iteration with its name (`trainer.chat_yield`: wait while
        chat traffic is high).
        """
        size = self.settings.rollout_batch_size
        if len(prompts) < size:
            raise ValueError(f"{len(prompts)} prompts are fewer than rollout_batch_size={size}")
        order: list[int] = []
        history = []
        for number in range(1, iterations + 1):
            if pause is not None:
                pause(f"PPO iteration {number}")
            if len(order) < size:
                order += torch.randperm(len(prompts), generator=self.generator).tolist()
            batch, order = order[:size], order[size:]
            history.append(self.iteration([prompts[i] for i in batch]))
        return history

    def iteration(self, prompts: Sequence[Conversation]) -> dict[str, Any]:
        """One PPO iteration on `prompts` (one response each); returns and records its metrics."""
        s = self.settings
        started = time.perf_counter()
        self.stack.peft_model.eval()
        rollout = self.sample(self.stack, prompts, max_new_tokens=s.max_new_tokens,
                              temperature=s.temperature, max_prompt_tokens=s.max_prompt_tokens
                              ).to(self.stack.device)
        scores = self.reward_fn(rollout.prompts, rollout.responses).detach().float().to(self.stack.device)
        if scores.shape != (len(prompts),):
            raise ValueError(f"the reward function returned shape {tuple(scores.shape)}; "
                             f"expected ({len(prompts)},), one score per response")
        scores = penalise_truncated(scores, rollout.ended, s.missing_eos_penalty)
        batch = self._score(rollout, scores)
        rollout_s = time.perf_counter() - started
        update = self._update(batch)
        beta = self.kl_controller.beta
        kl_per_response = batch.kl_sum.mean().item()
        self.kl_controller.update(kl_per_response, len(prompts))
        self.iterations_done += 1
        elapsed = time.perf_counter() - started
        metrics = {
            "iteration": self.iterations_done,
            "reward_mean": scores.mean().item(),
            "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
            "kl": kl_per_response,
            "beta": beta,
            "response_length": rollout.response_mask.sum(1).mean().item(),
            "truncated_share": (~rollout.ended).float().mean().item(),
            "explained_variance": explained_variance(batch.values, batch.returns, batch.mask),
            **update,
            "micro_batch_size": self.micro_batch.size,
            "rollout_s": rollout_s,
            "samples_per_s": len(prompts) / elapsed,
        }
        self.record.write(metrics)
        return metrics

    @torch.no_grad()
    def _score(self, rollout: Rollout, scores: torch.Tensor) -> ScoredBatch:
        """Old log-probs, values, reference log-probs, shaped rewards, advantages and returns."""
        s = self.settings
        logprobs, values, ref_logprobs = [], [], []
        for rows in self._minibatches(len(rollout.prompts), shuffle=False):
            ids, attn = rollout.input_ids[rows], rollout.attention_mask[rows]
            logits, vals = self.stack.policy_outputs(ids, attn, rollout.prompt_width)
            logprobs.append(token_logprobs(logits.float() / s.temperature, rollout.response_ids[rows]))
            values.append(vals)
            ref_logits = self.stack.reference_logits(ids, attn, rollout.prompt_width)
            ref_logprobs.append(token_logprobs(ref_logits.float() / s.temperature, rollout.response_ids[rows]))
        mask = rollout.response_mask
        old_logprobs, old_values = torch.cat(logprobs), torch.cat(values) * mask
        kl = kl_estimate(old_logprobs, torch.cat(ref_logprobs), s.kl_estimator) * mask
        rewards = shaped_rewards(kl, scores, mask, self.kl_controller.beta)
        advantages, returns = gae(rewards, old_values, mask, s.gamma, s.lam)
        if s.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return ScoredBatch(
            input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
            prompt_width=rollout.prompt_width, response_ids=rollout.response_ids, mask=mask,
            logprobs=old_logprobs, values=old_values, advantages=advantages, returns=returns,
            kl_sum=kl.sum(1),
        )

    def _update(self, batch: ScoredBatch) -> dict[str, Any]:
        """PPO epochs over mini-batches; the means of the per-mini-batch losses and statistics."""
        s = self.settings
        # The model stays in eval mode: the LoRA adapters have no dropout, and the frozen base's
        # dropout (if its config has any) would make the update's log-probs differ from π_old's.
        stats: dict[str, list[float]] = {k: [] for k in
                                         ("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl")}
        early_stopped = False
        for _ in range(s.ppo_epochs):
            for rows in self._minibatches(len(batch.mask), shuffle=True):
                minibatch_stats = self._step(batch, rows)
                for name, value in minibatch_stats.items():
                    stats[name].append(value)
                if s.target_approx_kl is not None and minibatch_stats["approx_kl"] > s.target_approx_kl:
                    early_stopped = True
                    break
            if early_stopped:
                break
        return {**{k: sum(v) / len(v) for k, v in stats.items()},
                "minibatch_steps": len(stats["approx_kl"]), "early_stopped": early_stopped}

    def _step(self, batch: ScoredBatch, rows: torch.Tensor) -> dict[str, float]:
        """One optimiser step on mini-batch `rows`, accumulated over micro-batches.

        Each part of L is a mean over the mini-batch's valid tokens, so a micro-batch's loss is
        weighted by its share of those tokens: the summed gradient is the mini-batch's exactly,
        while activations are held for one micro-batch at a time.
        """
        s = self.settings
        tokens = batch.mask[rows].sum()

        def accumulate(size: int) -> dict[str, float]:
            totals = dict.fromkeys(("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl"), 0.0)
            for micro in rows.split(size):
                share = batch.mask[micro].sum() / tokens
                logits, values = self.stack.policy_outputs(batch.input_ids[micro],
                                                           batch.attention_mask[micro], batch.prompt_width)
                logits = logits.float() / s.temperature
                loss = ppo_loss(
                    logits, token_logprobs(logits, batch.response_ids[micro]), values,
                    batch.logprobs[micro], batch.values[micro], batch.advantages[micro],
                    batch.returns[micro], batch.mask[micro], clip_eps=s.clip_eps,
                    value_clip_eps=s.value_clip_eps, value_coef=s.value_coef, entropy_coef=s.entropy_coef,
                )
                (loss.total * share).backward()
                for name, value in (("policy_loss", loss.policy), ("value_loss", loss.value),
                                    ("entropy", loss.entropy), ("clip_fraction", loss.clip_fraction),
                                    ("approx_kl", loss.approx_kl)):
                    totals[name] += (value.detach() * share).item()
            return totals

        self.optimizer.zero_grad(set_to_none=True)
        with checkpointing_active(self.stack.decoder):
            totals = self.micro_batch.run(
                accumulate, discard=lambda: self.optimizer.zero_grad(set_to_none=True))
        torch.nn.utils.clip_grad_norm_(self.stack.trainable_parameters(), s.max_grad_norm)
        self.optimizer.step()
        return totals

    def _minibatches(self, n: int, shuffle: bool) -> list[torch.Tensor]:
        order = torch.randperm(n, generator=self.generator) if shuffle else torch.arange(n)
        size = math.ceil(n / self.settings.num_minibatches)
        return list(order.split(size))
