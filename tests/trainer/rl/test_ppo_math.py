"""PPO math (trainer.rl.masked, advantages, kl, losses) against plain-Python-loop references."""

from __future__ import annotations

import math
import random

import pytest
import torch

from trainer.config import PPOSettings, TrainerSettings
from trainer.rl.advantages import gae
from trainer.rl.kl import (
    AdaptiveKLController,
    FixedKLController,
    exact_token_kl,
    kl_estimate,
    shaped_rewards,
)
from trainer.rl.losses import (
    approx_kl,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    ppo_loss,
    token_entropy,
)
from trainer.rl.masked import masked_mean, masked_whiten

B, T, V = 5, 7, 11


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """Random (B, T) tensors and a right-padded mask with responses of lengths 1..T."""
    gen = torch.Generator().manual_seed(0)
    lengths = [1, 3, T, 5, 2]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    return {
        "mask": mask,
        "rewards": torch.randn(B, T, generator=gen),
        "values": torch.randn(B, T, generator=gen),
        "logprobs": -torch.rand(B, T, generator=gen) * 3,
        "old_logprobs": -torch.rand(B, T, generator=gen) * 3,
        "advantages": torch.randn(B, T, generator=gen),
        "returns": torch.randn(B, T, generator=gen),
        "logits": torch.randn(B, T, V, generator=gen) * 2,
    }


def rows(tensor: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """The valid elements of each row as plain lists."""
    return [[x for x, m in zip(r.tolist(), mr.tolist()) if m] for r, mr in zip(tensor, mask)]


def loop_mean(rows_: list[list[float]]) -> float:
    flat = [x for r in rows_ for x in r]
    return sum(flat) / len(flat)


def test_gae_matches_the_textbook_recursion_per_response(batch) -> None:
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(batch["rewards"], batch["values"], batch["mask"], gamma, lam)
    for b, (r, v) in enumerate(zip(rows(batch["rewards"], batch["mask"]),
                                   rows(batch["values"], batch["mask"]))):
        n = len(r)
        expected = [0.0] * n
        for t in range(n):  # A_t = Σ_k (γλ)^k δ_{t+k}, episode ends after the last token
            total = 0.0
            for k in range(t, n):
                next_value = v[k + 1] if k + 1 < n else 0.0
                delta = r[k] + gamma * next_value - v[k]
                total += (gamma * lam) ** (k - t) * delta
            expected[t] = total
        assert advantages[b, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert returns[b, :n].tolist() == pytest.approx([a + x for a, x in zip(expected, v)], abs=1e-5)
        assert advantages[b, n:].abs().sum() == 0 and returns[b, n:].abs().sum() == 0


def test_gae_with_lambda_one_and_gamma_one_is_return_to_go_minus_value(batch) -> None:
    advantages, returns = gae(batch["rewards"], batch["values"], batch["mask"], 1.0, 1.0)
    for b, r in enumerate(rows(batch["rewards"], batch["mask"])):
        to_go = [sum(r[t:]) for t in range(len(r))]
        assert returns[b, : len(r)].tolist() == pytest.approx(to_go, abs=1e-5)


def test_masked_whiten_uses_only_valid_tokens(batch) -> None:
    values, mask = batch["advantages"], batch["mask"]
    flat = [x for r in rows(values, mask) for x in r]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / len(flat) + 1e-8)
    whitened = masked_whiten(values, mask)
    assert rows(whitened, mask) == [pytest.approx([(x - mean) / std for x in r], abs=1e-5)
                                    for r in rows(values, mask)]
    assert (whitened * (1 - mask)).abs().sum() == 0
    assert masked_mean(values, mask).item() == pytest.approx(mean, abs=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_match_their_formulas(batch, estimator) -> None:
    got = kl_estimate(batch["logprobs"], batch["old_logprobs"], estimator)
    for b in range(B):
        for t in range(T):
            lr = batch["logprobs"][b, t].item() - batch["old_logprobs"][b, t].item()
            expected = {"k1": lr, "k2": 0.5 * lr * lr, "k3": math.exp(-lr) - 1 + lr}[estimator]
            assert got[b, t].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_unknown_kl_estimator_is_refused_by_name(batch) -> None:
    with pytest.raises(ValueError, match="'k4'.*k1"):
        kl_estimate(batch["logprobs"], batch["old_logprobs"], "k4")  # type: ignore[arg-type]


def test_k1_and_k3_are_unbiased_for_the_exact_kl_and_k3_is_never_negative() -> None:
    gen = torch.Generator().manual_seed(1)
    logits, ref_logits = torch.randn(1, 1, V, generator=gen), torch.randn(1, 1, V, generator=gen)
    exact = exact_token_kl(logits, ref_logits).item()
    p, q = torch.softmax(logits[0, 0], -1), torch.softmax(ref_logits[0, 0], -1)
    assert exact == pytest.approx(sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist())), rel=1e-5)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    logp, logq = p.log()[samples], q.log()[samples]
    assert kl_estimate(logp, logq, "k1").mean().item() == pytest.approx(exact, rel=0.05)
    k3 = kl_estimate(logp, logq, "k3")
    assert k3.mean().item() == pytest.approx(exact, rel=0.05) and (k3 >= 0).all()


def test_shaped_rewards_put_the_score_on_the_last_token(batch) -> None:
    kl, mask = batch["advantages"], batch["mask"]
    scores = torch.arange(B, dtype=torch.float32)
    rewards = shaped_rewards(kl, scores, mask, beta=0.3)
    for b, row in enumerate(rows(kl, mask)):
        expected = [-0.3 * x for x in row]
        expected[-1] += scores[b].item()
        assert rewards[b, : len(row)].tolist() == pytest.approx(expected, abs=1e-6)
        assert rewards[b, len(row):].abs().sum() == 0


def test_shaped_rewards_refuse_an_empty_response(batch) -> None:
    mask = batch["mask"].clone()
    mask[2] = 0
    with pytest.raises(ValueError, match="at least one token"):
        shaped_rewards(batch["advantages"], torch.zeros(B), mask, beta=0.1)


def test_clipped_policy_loss_and_clip_fraction_match_a_loop(batch) -> None:
    eps = 0.2
    loss, clip_fraction = clipped_policy_loss(batch["logprobs"], batch["old_logprobs"],
                                              batch["advantages"], batch["mask"], eps)
    terms, clipped = [], []
    for b in range(B):
        for t in range(T):
            if batch["mask"][b, t]:
                ratio = math.exp(batch["logprobs"][b, t].item() - batch["old_logprobs"][b, t].item())
                a = batch["advantages"][b, t].item()
                terms.append(max(-a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)))
                clipped.append(1.0 if abs(ratio - 1) > eps else 0.0)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert clip_fraction.item() == pytest.approx(sum(clipped) / len(clipped))
    assert 0 < clip_fraction.item() < 1


def test_clipped_value_loss_matches_a_loop(batch) -> None:
    eps = 0.2
    new_values = batch["values"] + torch.linspace(-0.5, 0.5, T)
    loss = clipped_value_loss(new_values, batch["values"], batch["returns"], batch["mask"], eps)
    terms = []
    for b in range(B):
        for t in range(T):
            if batch["mask"][b, t]:
                v, old, ret = (new_values[b, t].item(), batch["values"][b, t].item(),
                               batch["returns"][b, t].item())
                v_clipped = old + min(max(v - old, -eps), eps)
                terms.append(max((v - ret) ** 2, (v_clipped - ret) ** 2))
    assert loss.item() == pytest.approx(0.5 * sum(terms) / len(terms), rel=1e-5)


def test_entropy_matches_a_loop(batch) -> None:
    entropy = token_entropy(batch["logits"])
    for b, t in [(0, 0), (3, 4), (4, 6)]:
        z = batch["logits"][b, t].tolist()
        m = max(z)
        probs = [math.exp(x - m) for x in z]
        total = sum(probs)
        expected = -sum(p / total * math.log(p / total) for p in probs)
        assert entropy[b, t].item() == pytest.approx(expected, rel=1e-5)


def test_approx_kl_matches_a_loop_and_is_zero_on_policy(batch) -> None:
    got = approx_kl(batch["logprobs"], batch["old_logprobs"], batch["mask"])
    terms = []
    for new_row, old_row in zip(rows(batch["logprobs"], batch["mask"]),
                                rows(batch["old_logprobs"], batch["mask"])):
        for n, o in zip(new_row, old_row):
            terms.append(math.exp(n - o) - 1 - (n - o))
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert approx_kl(batch["logprobs"], batch["logprobs"], batch["mask"]).item() == 0


def test_total_loss_sign_convention_rewards_entropy(batch) -> None:
    logprobs = torch.log_softmax(batch["logits"], -1)[..., 0]
    common = dict(old_logprobs=logprobs.detach(), old_values=batch["values"],
                  advantages=batch["advantages"], returns=batch["returns"], mask=batch["mask"],
                  clip_eps=0.2, value_clip_eps=0.2, value_coef=0.5)
    plain = ppo_loss(batch["logits"], logprobs, batch["values"], entropy_coef=0.0, **common)
    bonus = ppo_loss(batch["logits"], logprobs, batch["values"], entropy_coef=0.1, **common)
    assert plain.total.item() == pytest.approx(plain.policy.item() + 0.5 * plain.value.item(), rel=1e-5)
    assert bonus.total.item() == pytest.approx(plain.total.item() - 0.1 * plain.entropy.item(), rel=1e-5)
    # Minimising L raises the entropy: a descent step on L heats the logits (dL/dτ < 0 for a
    # temperature τ that only the entropy term sees, and hotter logits have more entropy).
    temperature = torch.tensor(1.0, requires_grad=True)
    ppo_loss(batch["logits"] / temperature, logprobs, batch["values"], entropy_coef=1.0,
             **common).total.backward()
    assert temperature.grad.item() < 0


def test_adaptive_kl_controller_follows_ziegler() -> None:
    controller = AdaptiveKLController(beta=0.1, target=6.0, horizon=10_000)
    beta = 0.1
    for observed, n in [(12.0, 64), (6.0, 64), (1.0, 64), (6.3, 32)]:
        controller.update(observed, n)
        error = min(max(observed / 6.0 - 1, -0.2), 0.2)
        beta *= 1 + error * n / 10_000
        assert controller.beta == pytest.approx(beta)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.beta == 0.05


def test_at_ten_times_the_target_kl_beta_at_least_doubles_within_one_round() -> None:
    """With the default horizon and a round's iterations, β acts within the round."""
    settings, rounds = PPOSettings(), TrainerSettings()
    controller = AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
    for _ in range(rounds.ppo_iterations):
        controller.update(10 * settings.kl_target, settings.rollout_batch_size)
    assert controller.beta >= 2 * settings.kl_coef, controller.beta
    for _ in range(rounds.ppo_iterations):  # and back down at a tenth of it
        controller.update(settings.kl_target / 10, settings.rollout_batch_size)
    assert controller.beta < 1.1 * settings.kl_coef, controller.beta


def test_explained_variance(batch) -> None:
    mask = batch["mask"]
    assert explained_variance(batch["returns"], batch["returns"], mask) == pytest.approx(1.0)
    ret, val = rows(batch["returns"], mask), rows(batch["values"], mask)
    flat_r = [x for r in ret for x in r]
    diff = [a - b for r, v in zip(ret, val) for a, b in zip(r, v)]
    var = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / len(xs)  # noqa: E731
    assert explained_variance(batch["values"], batch["returns"], mask) == pytest.approx(
        1 - var(diff) / var(flat_r), rel=1e-4)


def test_random_masks_gae_agrees_with_loop_over_many_shapes() -> None:
    rng = random.Random(0)
    for _ in range(20):
        b, t = rng.randint(1, 4), rng.randint(1, 6)
        lengths = [rng.randint(1, t) for _ in range(b)]
        mask = torch.tensor([[1.0] * n + [0.0] * (t - n) for n in lengths])
        rewards, values = torch.randn(b, t), torch.randn(b, t)
        gamma, lam = rng.random(), rng.random()
        advantages, _ = gae(rewards, values, mask, gamma, lam)
        for row, n in enumerate(lengths):
            last = 0.0
            for step in reversed(range(n)):
                next_value = values[row, step + 1].item() if step + 1 < n else 0.0
                delta = rewards[row, step].item() + gamma * next_value - values[row, step].item()
                last = delta + gamma * lam * last
                assert advantages[row, step].item() == pytest.approx(last, abs=1e-5)
