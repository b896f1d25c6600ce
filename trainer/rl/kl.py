"""KL penalty: per-token estimators, the shaped reward, and the β controllers. Torch only.

The rollout samples y ~ π_θ(·|x); per token the log-ratio is ℓ_t = log π_θ(y_t|s_t) − log
π_ref(y_t|s_t) with s_t = (x, y_<t). Estimators of KL(π_θ ‖ π_ref) at s_t from that one sample
(J. Schulman, "Approximating KL divergence", 2020), ρ_t = π_ref/π_θ = exp(−ℓ_t):

    k1 = ℓ_t                    unbiased, high variance, negative for some samples
    k2 = ½·ℓ_t²                 biased (exact to second order), low variance, ≥ 0
    k3 = (ρ_t − 1) − log ρ_t    unbiased, low variance, ≥ 0

Default: k1. Summed over a response, Σ_t k1 = log π_θ(y|x) − log π_ref(y|x) exactly, so the
shaped return is R(x, y) − β·log(π_θ/π_ref)(y|x): the KL-regularised objective of Ziegler et
al. (2019) and InstructGPT, whose optimum is the known π* ∝ π_ref·exp(R/β) and whose KL the
adaptive controller targets. k3 trades that exactness per sample for lower variance and never
rewards the policy for a negative sample KL; choose it when rewards are noisy.
"""

from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[KLEstimator, ...] = ("k1", "k2", "k3")


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1"
) -> torch.Tensor:
    """Per-token KL estimate (B, T) from log π_θ (B, T) and log π_ref (B, T) of the sampled tokens."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")


def exact_token_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(π_θ(·|s_t) ‖ π_ref(·|s_t)) over the whole vocabulary, (B, T), from (B, T, V) logits.

    Σ_v p_v·(log p_v − log q_v): no sampling noise; for evaluation (it needs both full
    distributions, which the trainer only has while both logits are in memory).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def shaped_rewards(
    kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token reward r_t = −β·KL_t, plus the reward model's score at the last valid token.

    kl: (B, T) per-token KL estimates; scores: (B,) one score per response; mask: (B, T) with at
    least one valid token per row. Returns (B, T), zero on padding.
    """
    rewards = -beta * kl * mask
    last = mask.sum(1).long() - 1
    if (last < 0).any():
        raise ValueError("every response needs at least one token (a row of the mask is empty)")
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


class FixedKLController:
    """A constant β."""

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def update(self, observed_kl: float, n_samples: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Proportional control of β towards a target KL (Ziegler et al. 2019, "Fine-tuning
    language models from human preferences", section 2.2):

        e = clip(KL_observed / KL_target − 1, −0.2, 0.2)
        β ← β·(1 + K_β·e·n),  K_β = 1 / horizon

    where KL_observed is the mean over the batch of Σ_t KL_t of a response and n the number of
    responses in that batch (so `horizon` is in responses: about how many it takes to close a
    gap).
    """

    def __init__(self, beta: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target={target} and horizon={horizon} must both be > 0")
        self.beta = beta
        self.target = target
        self.horizon = horizon

    def update(self, observed_kl: float, n_samples: int) -> None:
        """Move β towards the value that keeps the observed KL at the target."""
        error = min(max(observed_kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_samples / self.horizon
