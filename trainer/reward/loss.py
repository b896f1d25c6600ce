"""The pairwise (Bradley–Terry) reward loss and its metrics; torch only.

Bradley–Terry (1952) models P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)). The reward model
maximises the likelihood of the observed preferences (Ouyang et al. 2022, eq. 1), each pair
weighted by how strongly the labelers agreed on it (``trainer.preferences.pairs``), with an
optional margin the reward gap must exceed (Touvron et al. 2023, Llama 2, eq. 2):

    loss = Σ_i w_i · −log σ(r_w,i − r_l,i − m_i)  /  Σ_i w_i

Shapes: ``chosen``, ``rejected``, ``weight`` and ``margin`` are (B,) — one entry per pair.
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
