"""DPO loss against a plain loop."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.rl.losses import dpo_loss


def test_dpo_loss_matches_a_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    chosen, rejected, ref_chosen, ref_rejected = (-torch.rand(6, generator=gen) * 20 for _ in range(4))
    beta = 0.1
    result = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    terms, margins = [], []
    for w, lo, rw, rl in zip(chosen.tolist(), rejected.tolist(), ref_chosen.tolist(), ref_rejected.tolist()):
        z = beta * ((w - rw) - (lo - rl))
        terms.append(-math.log(1 / (1 + math.exp(-z))))
        margins.append(z)
    assert result.loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert result.margins.tolist() == pytest.approx(margins, abs=1e-5)
    assert result.chosen_rewards.tolist() == pytest.approx(
        [beta * (w - rw) for w, rw in zip(chosen.tolist(), ref_chosen.tolist())], abs=1e-5)


def test_dpo_loss_is_log2_at_the_reference_and_falls_as_the_winner_gains() -> None:
    logp = torch.tensor([-5.0, -7.0])
    at_ref = dpo_loss(logp, logp, logp, logp, beta=0.5)
    assert at_ref.loss.item() == pytest.approx(math.log(2))
    better = dpo_loss(logp + 1, logp, logp, logp, beta=0.5)
    assert better.loss.item() < at_ref.loss.item() and (better.margins > 0).all()


def test_weighted_dpo_loss_is_the_weighted_mean_and_a_zero_weight_pair_adds_no_gradient() -> None:
    gen = torch.Generator().manual_seed(1)
    chosen = (-torch.rand(4, generator=gen) * 10).requires_grad_()
    rejected, ref_chosen, ref_rejected = (-torch.rand(4, generator=gen) * 10 for _ in range(3))
    weights = torch.tensor([1.0, 0.5, 2.0, 0.0])
    weighted = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, 0.1, weights)
    per_pair = [dpo_loss(chosen[i : i + 1], rejected[i : i + 1], ref_chosen[i : i + 1],
                         ref_rejected[i : i + 1], 0.1).loss.item() for i in range(4)]
    assert weighted.loss.item() == pytest.approx(sum(w * l for w, l in zip(weights.tolist(), per_pair)) / 3.5)
    weighted.loss.backward()
    assert chosen.grad is not None and chosen.grad[3] == 0 and (chosen.grad[:3] != 0).all()
