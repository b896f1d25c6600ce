"""The pairwise (Bradley–Terry) reward loss and its metrics; torch only.

Bradley–Terry (1952) models P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)). The reward model
maximises the likelihood of the observed preferences (Ouyang et al. 2022, eq. 1), each pair
weighted by how strongly the labelers agreed on it (``trainer.preferences.pairs``), with an
optional margin the reward gap must exceed (Touvron et al. 2023, Llama 2, eq. 2):

    loss = Σ_i w_i · −log σ(r_w,i − r_l,i − m_i)  /  Σ_i w_i

Shapes: ``chosen``, ``rejected``, ``weight`` and ``margin`` are (B,) — one entry per pair.

Thumbs votes that form no pair are evidence too. ``PointwiseRewardLoss`` reads a vote on y
for x as a Bernoulli target, P(up | x, y) = σ(r(x, y) − b), with one learnt scalar offset b:

    loss = −Σ_j u_j [v_j · log σ(r_j − b) + (1 − v_j) · log(1 − σ(r_j − b))]  /  Σ_j u_j

(v_j = 1 for up, 0 for down; a binary cross-entropy on the logit r_j − b; u_j the vote's weight,
1 unless its user's votes are capped, ``trainer.preferences.voices``). It is added to the
pairwise loss with a weight λ (``RewardSettings.pointwise_weight``): L = L_pair + λ · L_point.
b is learnt because Bradley–Terry fixes rewards only up to a constant: the threshold between
"up" and "down" on that scale is unknown, and a fixed b = 0 would make the pointwise term pull
the whole reward scale to wherever the up share puts 0. b is a training nuisance: rewards are
normalised before use (``trainer.reward.versions.Normalisation``), so it is not stored, and
each training run starts it at 0.
This is the reward-model side of KTO's idea (Ethayarajh et al. 2024: unpaired desirable /
undesirable labels against a reference point), without a policy in the loop.

Shapes: ``rewards``, ``up`` and ``weight`` are (V,) — one entry per vote.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class PairwiseRewardLoss(nn.Module):
    """Weighted −log σ(r_w − r_l − m), averaged with the pair weights (module docstring)."""

    def forward(
        self,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        weight: torch.Tensor,
        margin: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B,) rewards of the preferred and the other completion, (B,) pair weights and
        optional (B,) margins -> the scalar loss."""
        if not chosen.shape == rejected.shape == weight.shape:
            raise ValueError(
                f"chosen {tuple(chosen.shape)}, rejected {tuple(rejected.shape)} and weight "
                f"{tuple(weight.shape)} must have one and the same (B,) shape"
            )
        gap = chosen - rejected  # (B,)
        if margin is not None:
            gap = gap - margin
        total_weight = weight.sum()
        if total_weight <= 0:
            raise ValueError(
                f"the pair weights sum to {float(total_weight)}; they must be positive"
            )
        return (weight * -F.logsigmoid(gap)).sum() / total_weight


class PointwiseRewardLoss(nn.Module):
    """Binary cross-entropy of thumbs votes against σ(r − b), b a learnt scalar (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(()))
        """b: the reward at which up and down are equally likely."""

    def forward(
        self, rewards: torch.Tensor, up: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(V,) rewards of voted completions, (V,) votes (1.0 up, 0.0 down) and optional (V,)
        vote weights (default all 1) -> the scalar weighted mean loss."""
        if weight is not None and weight.shape != rewards.shape:
            raise ValueError(f"weight {tuple(weight.shape)} must have the shape of rewards "
                             f"{tuple(rewards.shape)}")
        if rewards.shape != up.shape or rewards.dim() != 1:
            raise ValueError(
                f"rewards {tuple(rewards.shape)} and up {tuple(up.shape)} must have one and the "
                "same (V,) shape")
        if len(rewards) == 0:
            raise ValueError("no votes: the pointwise loss needs at least one")
        logits = rewards - self.offset.to(rewards.dtype)  # (V,)
        losses = F.binary_cross_entropy_with_logits(logits, up.to(rewards.dtype), reduction="none")
        if weight is None:
            return losses.mean()
        return (weight.to(losses.dtype) * losses).sum() / weight.sum().clamp_min(1e-12)


@dataclass(frozen=True)
class PairwiseMetrics:
    """How well rewards order held-out pairs."""

    accuracy: float
    """Share of pairs with r_w > r_l (a tie counts as wrong)."""
    mean_margin: float
    """Mean of r_w − r_l."""
    loss: float
    """Unweighted mean −log σ(r_w − r_l)."""


def pairwise_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> PairwiseMetrics:
    """Metrics of (B,) chosen and rejected rewards."""
    gap = (chosen - rejected).double()  # (B,)
    return PairwiseMetrics(
        accuracy=float((gap > 0).double().mean()),
        mean_margin=float(gap.mean()),
        loss=float(-F.logsigmoid(gap).mean()),
    )
