"""The pairwise reward loss and its metrics against plain-Python loops."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.reward.loss import PairwiseRewardLoss, PointwiseRewardLoss, pairwise_metrics


def reference_loss(chosen: list[float], rejected: list[float], weight: list[float], margin: list[float]) -> float:
    total = norm = 0.0
    for r_w, r_l, w, m in zip(chosen, rejected, weight, margin, strict=True):
        total += w * -math.log(1 / (1 + math.exp(-(r_w - r_l - m))))
        norm += w
    return total / norm


@pytest.mark.parametrize("with_margin", [False, True])
def test_the_loss_matches_a_plain_loop(with_margin: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(7, generator=generator) * 3, torch.randn(7, generator=generator) * 3
    weight = torch.rand(7, generator=generator) + 0.1
    margin = torch.rand(7, generator=generator) if with_margin else None

    loss = PairwiseRewardLoss()(chosen.double(), rejected.double(), weight.double(),
                                None if margin is None else margin.double())

    expected = reference_loss(chosen.tolist(), rejected.tolist(), weight.tolist(),
                              [0.0] * 7 if margin is None else margin.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_the_gradient_pushes_chosen_up_and_rejected_down_by_weight() -> None:
    chosen = torch.tensor([0.0, 0.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0], requires_grad=True)
    PairwiseRewardLoss()(chosen, rejected, torch.tensor([3.0, 1.0])).backward()
    # d/dr_w of w·−log σ(r_w − r_l) / Σw at a zero gap is −w·σ(0)/Σw = −w/8.
    assert chosen.grad.tolist() == pytest.approx([-3 / 8, -1 / 8])
    assert rejected.grad.tolist() == pytest.approx([3 / 8, 1 / 8])


def test_a_large_gap_does_not_overflow() -> None:
    loss = PairwiseRewardLoss()(torch.tensor([-200.0]), torch.tensor([200.0]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(400.0)


def test_mismatched_shapes_and_zero_weights_are_refused() -> None:
    loss = PairwiseRewardLoss()
    with pytest.raises(ValueError, match=r"chosen \(2,\), rejected \(3,\)"):
        loss(torch.zeros(2), torch.zeros(3), torch.ones(2))
    with pytest.raises(ValueError, match="sum to 0.0"):
        loss(torch.zeros(2), torch.zeros(2), torch.zeros(2))


def test_metrics_match_a_plain_loop() -> None:
    chosen, rejected = [2.0, -1.0, 0.5, 3.0], [1.0, 0.0, 0.5, -2.0]
    metrics = pairwise_metrics(torch.tensor(chosen), torch.tensor(rejected))
    gaps = [w - l for w, l in zip(chosen, rejected, strict=True)]
    assert metrics.accuracy == sum(g > 0 for g in gaps) / 4 == 0.5
    assert metrics.mean_margin == pytest.approx(sum(gaps) / 4)
    assert metrics.loss == pytest.approx(sum(math.log1p(math.exp(-g)) for g in gaps) / 4)


def reference_pointwise(rewards: list[float], up: list[bool], offset: float) -> float:
    total = 0.0
    for r, v in zip(rewards, up, strict=True):
        p_up = 1 / (1 + math.exp(-(r - offset)))
        total += -(math.log(p_up) if v else math.log(1 - p_up))
    return total / len(rewards)


def test_the_pointwise_loss_matches_a_plain_loop() -> None:
    generator = torch.Generator().manual_seed(1)
    rewards = torch.randn(9, generator=generator).double() * 3
    up = torch.rand(9, generator=generator) > 0.5
    loss_fn = PointwiseRewardLoss().double()
    with torch.no_grad():
        loss_fn.offset.fill_(0.7)

    loss = loss_fn(rewards, up.double())

    assert loss.item() == pytest.approx(reference_pointwise(rewards.tolist(), up.tolist(), 0.7), rel=1e-12)


def test_the_pointwise_gradient_raises_up_votes_lowers_down_votes_and_learns_the_offset() -> None:
    rewards = torch.zeros(4, requires_grad=True)
    loss_fn = PointwiseRewardLoss()
    loss_fn(rewards, torch.tensor([1.0, 1.0, 1.0, 0.0])).backward()
    # d/dr_j of the mean BCE is (σ(r_j − b) − v_j)/V = (½ − v_j)/4; d/db is the negative sum.
    assert rewards.grad.tolist() == pytest.approx([-0.125, -0.125, -0.125, 0.125])
    assert loss_fn.offset.grad.item() == pytest.approx(0.25)  # three ups in four: b moves down


def test_the_pointwise_loss_refuses_mismatched_shapes_and_no_votes() -> None:
    with pytest.raises(ValueError, match="same"):
        PointwiseRewardLoss()(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="no votes"):
        PointwiseRewardLoss()(torch.zeros(0), torch.zeros(0))
