"""Generalised advantage estimation (Schulman et al. 2016, "High-dimensional continuous control
using generalized advantage estimation"), per token of padded responses. Torch only.

One response is one episode; its token t is the action taken in state (prompt, tokens < t).
With r_t the per-token reward, V_t the value estimate and m_t the mask (1 on the response's
tokens, 0 on padding after it; the value after the last token is 0, the episode ends there):

    δ_t = r_t + γ·m_{t+1}·V_{t+1} − V_t
    A_t = δ_t + γ·λ·m_{t+1}·A_{t+1}         (= Σ_k (γλ)^k δ_{t+k} within the response)
    R_t = A_t + V_t                          (the value target, "returns")
"""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (advantages, returns), each (B, T), zero on padding.

    rewards, values, mask: (B, T) float; the mask must be a prefix of ones per row (right
    padding), as rollouts produce. gamma: discount γ; lam: GAE λ (1: Monte-Carlo returns minus
    V, 0: one-step TD error).
    """
    rewards, values = rewards * mask, values * mask
    next_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = rewards + gamma * next_mask * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = deltas[:, t] + gamma * lam * next_mask[:, t] * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask
