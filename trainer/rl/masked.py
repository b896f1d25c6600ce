"""Statistics over the valid tokens of padded (B, T) tensors. Torch only.

A mask is 1.0 on valid tokens (a response's tokens up to and including its EOS) and 0.0 on
padding; it has the shape of the values it masks.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ values·mask, over all elements or along `dim`."""
    masked = values * mask
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ values·mask / Σ mask, over all elements or along `dim` (0 where the mask is empty)."""
    return masked_sum(values, mask, dim) / masked_sum(torch.ones_like(values), mask, dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance of the valid elements: masked_mean((x − masked_mean(x))²)."""
    mean = masked_mean(values, mask)
    return masked_mean((values - mean) ** 2, mask)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − μ) / √(σ² + eps) with μ, σ² over the valid elements; padding comes out 0.

    Advantage whitening: it keeps the policy-gradient scale independent of the reward's scale
    (the PPO implementation detail of Huang et al. 2022, "The 37 implementation details").
    """
    whitened = (values - masked_mean(values, mask)) * torch.rsqrt(masked_var(values, mask) + eps)
    return whitened * mask
