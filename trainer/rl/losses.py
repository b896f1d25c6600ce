"""PPO and DPO losses. Torch only; every loss is a quantity to *minimise*.

Shapes: B responses (or preference pairs), T response tokens (padded), V vocabulary entries.
`mask` is (B, T), 1.0 on response tokens (up to and including EOS) and 0.0 on padding.

PPO (Schulman et al. 2017) per token, with ratio ρ_t = exp(log π_θ − log π_old):

    L_policy = mean_t max(−A_t·ρ_t, −A_t·clip(ρ_t, 1−ε, 1+ε))     (negated clipped surrogate)
    L_VF     = ½·mean_t max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −ε_v, ε_v) − R_t)²)
    H        = mean_t (−Σ_v π_θ(v|s_t)·log π_θ(v|s_t))
    L        = L_policy + c1·L_VF − c2·H

Sign convention: L is minimised. L_policy is the *negated* surrogate, so minimising it raises
the surrogate; the entropy enters with a minus sign, so minimising L *raises* the entropy (c2 ≥
0 is a bonus for exploration, not a penalty).

DPO (Rafailov et al. 2023, eq. 7), with log-probabilities summed over each response:

    L_DPO = −log σ(β·((log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.rl.masked import masked_mean, masked_var


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (L_policy, clip fraction): scalars from (B, T) inputs.

    The clip fraction is the share of valid tokens with |ρ_t − 1| > ε (how often clipping
    can bind), as CleanRL logs it.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean(((ratio - 1.0).abs() > clip_eps).float(), mask)
    return loss, clip_fraction


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> torch.Tensor:
    """L_VF (scalar) from (B, T) new values, rollout-time values and GAE returns."""
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each token's distribution, (B, T) from (B, T, V) logits: logsumexp(z) − Σ softmax(z)·z."""
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(π_old ‖ π_θ) estimate over the valid tokens, mean((ρ − 1) − log ρ), ρ = π_θ/π_old.

    The k3 estimator on the rollout's samples; used to stop an update early once the policy
    has moved too far from the one that sampled the batch.
    """
    log_ratio = logprobs - old_logprobs
    return masked_mean(torch.expm1(log_ratio) - log_ratio, mask)


@dataclass(frozen=True)
class PPOLoss:
    """The combined objective L = L_policy + c1·L_VF − c2·H and its parts (for the logs)."""

    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def ppo_loss(
    logits: torch.Tensor,
    logprobs: torch.Tensor,
    values: torch.Tensor,
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float,
    value_clip_eps: float,
    value_coef: float,
    entropy_coef: float,
) -> PPOLoss:
    """PPO's loss on one mini-batch: logits (B, T, V), every other tensor (B, T)."""
    policy, clip_fraction = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps)
    value = clipped_value_loss(values, old_values, returns, mask, value_clip_eps)
    entropy = masked_mean(token_entropy(logits), mask)
    total = policy + value_coef * value - entropy_coef * entropy
    with torch.no_grad():
        kl = approx_kl(logprobs, old_logprobs, mask)
    return PPOLoss(total, policy, value, entropy, clip_fraction, kl)


@dataclass(frozen=True)
class DPOLoss:
    """DPO's mean loss (scalar) and the implicit rewards r = β·(log π_θ − log π_ref), (B,) each."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        """(B,) implicit reward margin r_w − r_l; positive where the policy prefers the winner."""
        return self.chosen_rewards - self.rejected_rewards


def dpo_loss(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
) -> DPOLoss:
    """Mean L_DPO over B pairs from (B,) sequence log-probabilities of winner and loser;
    with (B,) ``weights`` w ≥ 0 the weighted mean Σ w_i ℓ_i / Σ w_i (0, with no gradient, when
    every weight is 0)."""
    chosen = beta * (chosen_logprobs - ref_chosen_logprobs)
    rejected = beta * (rejected_logprobs - ref_rejected_logprobs)
    per_pair = -F.logsigmoid(chosen - rejected)
    loss = per_pair.mean() if weights is None else (weights * per_pair).sum() / weights.sum().clamp_min(1e-12)
    return DPOLoss(loss, chosen.detach(), rejected.detach())


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R) over the valid tokens: 1 is a perfect value function, ≤ 0 useless."""
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_returns)
