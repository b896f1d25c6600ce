"""The evaluation gate: its decision rules, its pair agreement, and its measurements on a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.rl.helpers import (
    heldout_conversations,
    move_policy,
    polite_reward,
    training_prompts,
    write_deployed_adapter,
)
from trainer.config import GateSettings, PPOSettings
from trainer.gate import AdapterScores, GateDecision, decide, measure, prefers_chosen, weighted_share
from trainer.rl.dpo import TextPair
from trainer.rl.models import load_policy_stack, lora_config
from trainer.rl.ppo import PPOTrainer
from trainer.rl.rollout import sample_rollout
from trainer.stats import MeanBound

SETTINGS = GateSettings(reward_margin=0.1, kl_budget=5.0, min_heldout_pairs=4)


def test_pair_agreement_matches_a_plain_loop() -> None:
    torch.manual_seed(0)
    n = 50
    chosen, rejected = -torch.rand(n) * 40, -torch.rand(n) * 40
    chosen_tokens, rejected_tokens = torch.randint(1, 30, (n,)).float(), torch.randint(1, 30, (n,)).float()
    weights = torch.rand(n)
    agreeing = total = 0.0
    for i in range(n):
        total += weights[i].item()
        if chosen[i].item() / chosen_tokens[i].item() > rejected[i].item() / rejected_tokens[i].item():
            agreeing += weights[i].item()
    agrees = prefers_chosen(chosen, chosen_tokens, rejected, rejected_tokens)
    assert weighted_share(agrees, weights) == pytest.approx(agreeing / total, rel=1e-6)


def bound(mean: float, lower: float, n: float = 10) -> MeanBound:
    return MeanBound(mean=mean, standard_error=(mean - lower) / 1.645, lower=lower, confidence=0.95, n=n)


def decision_for(candidate: AdapterScores, **overrides: object) -> GateDecision:
    evidence = {"reward_gain": bound(0.3, 0.2), "agreement_gain": bound(-0.05, -0.08),
                "kl_to_deployed": 2.0, "kl_to_base": 3.0, "heldout_prompts": 10, "heldout_pairs": 20}
    return decide(candidate, AdapterScores(0.2, 0.75), **{**evidence, **overrides}, settings=SETTINGS)


def test_a_better_candidate_within_budget_is_published() -> None:
    decision = decision_for(AdapterScores(0.5, 0.7))
    assert decision.publish and decision.reasons == ()
    assert decision.as_metrics()["candidate"] == {"reward_mean": 0.5, "pair_agreement": 0.7,
                                                  "harmlessness": None}
    assert decision.manifest_metrics()["reward_gain_lower"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("overrides", "reason", "unproven"),
    [
        ({"reward_gain": bound(0.3, 0.05)},
         "the 95% lower bound of the reward gain, +0.050 (mean +0.300 ± 0.152 over 10 prompts), "
         "does not exceed the margin 0.100", True),
        ({"reward_gain": bound(-0.1, -0.3)},
         "the 95% lower bound of the reward gain, -0.300 (mean -0.100 ± 0.122 over 10 prompts)", False),
        ({"reward_gain": None, "heldout_prompts": 1}, "only 1 held-out prompt(s)", False),
        ({"kl_to_deployed": 7.5}, "KL to the deployed adapter 7.50 nats exceeds the budget 5.00", False),
        ({"kl_to_base": 30.0}, "KL to the base model 30.00 nats exceeds the budget across rounds 24.00", False),
        ({"agreement_gain": bound(-0.1, -0.25)},
         "agreement with held-out human pairs is not shown non-inferior: 95% lower bound of the "
         "change -0.250 ≤ −0.150", False),
        ({"heldout_pairs": 3}, "only 3 held-out human pairs; at least 4 are needed", True),
        ({"harmlessness_gain": bound(-0.2, -0.3), "red_team_prompts": 20},
         "harmlessness on 20 red-team prompts is not shown non-inferior: 95% lower bound of the "
         "change -0.300 ≤ −0.100", False),
    ],
)
def test_each_failed_check_refuses_with_its_reason(overrides: dict, reason: str, unproven: bool) -> None:
    """And only a refusal for want of evidence, with a positive mean gain, leaves the candidate
    unproven (worth resuming, `trainer.unproven`); a check that measures harm never does."""
    decision = decision_for(AdapterScores(0.9, 0.8), **overrides)
    assert not decision.publish
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith(reason), decision.reasons
    assert decision.unproven is unproven
    assert decision.as_metrics()["unproven"] is unproven


def test_an_insignificant_gain_with_a_measured_harm_is_not_unproven() -> None:
    decision = decision_for(AdapterScores(0.9, 0.8), reward_gain=bound(0.3, 0.05), kl_to_deployed=7.5)
    assert len(decision.reasons) == 2 and decision.measured_worse and not decision.unproven
    assert not decision_for(AdapterScores(0.5, 0.7)).unproven  # published: nothing to resume


def heldout_pairs() -> list[TextPair]:
    prompts = heldout_conversations()[:6]
    return [TextPair(p, "Happy to help! Hope that helps!", "Ugh, seriously? Whatever.")
            for p in prompts]


def test_measure_sees_no_change_when_the_candidate_is_the_deployed_adapter(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    deployed = write_deployed_adapter(tiny_model_dir, tmp_path / "deployed")
    stack = load_policy_stack(tiny_model_dir, deployed, lora_config(4, 8, ["q_proj"]))
    settings = GateSettings(reward_margin=0.0, min_heldout_pairs=4, samples_per_prompt=1, min_samples=1,
                            max_new_tokens=8)
    decision = measure(stack, polite_reward, heldout_conversations()[:8], heldout_pairs(),
                       [1.0] * 6, settings)
    assert decision.kl_to_deployed == pytest.approx(0.0, abs=1e-4)  # the policy starts as a copy
    assert decision.candidate.pair_agreement == decision.deployed.pair_agreement
    assert decision.agreement_gain is not None and decision.agreement_gain.mean == 0.0
    assert decision.heldout_prompts == 8 and decision.heldout_pairs == 6


def test_measure_refuses_a_candidate_that_moved_beyond_the_kl_budget(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    deployed = write_deployed_adapter(tiny_model_dir, tmp_path / "deployed")
    stack = load_policy_stack(tiny_model_dir, deployed, lora_config(4, 8, ["q_proj"]))
    move_policy(stack, 2.0, seed=3)  # far from the deployed adapter
    settings = GateSettings(kl_budget=0.5, min_heldout_pairs=4, samples_per_prompt=1, min_samples=1, max_new_tokens=8)
    decision = measure(stack, polite_reward, heldout_conversations()[:8], heldout_pairs(),
                       [1.0] * 6, settings)
    assert decision.kl_to_deployed > 0.5
    assert not decision.publish
    assert any("exceeds the budget" in reason for reason in decision.reasons)


def test_a_policy_that_games_a_flawed_reward_model_is_refused_over_the_kl_budget(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Reward hacking: the reward model has an exploitable flaw (it pays for length, whatever is
    said) and PPO optimises against it with no KL penalty. The flawed reward rises, the policy
    drifts far from the deployed adapter, and the gate's tight KL budget refuses to publish."""
    def length_reward(_: object, responses: list[str]) -> torch.Tensor:
        return torch.tensor([len(r) / 20 for r in responses])

    deployed = write_deployed_adapter(tiny_model_dir, tmp_path / "deployed")
    ppo = PPOSettings(rollout_batch_size=16, num_minibatches=2, ppo_epochs=4, max_new_tokens=32,
                      learning_rate=2e-2, kl_coef=0.0, kl_target=None, target_approx_kl=None,
                      missing_eos_penalty=0.0, seed=0)
    torch.manual_seed(0)
    stack = load_policy_stack(tiny_model_dir, deployed, lora_config(8, 16, ["q_proj", "v_proj", "up_proj"]))
    PPOTrainer(stack, length_reward, ppo).train(training_prompts(200), iterations=6)
    gate = GateSettings(reward_margin=0.0, kl_budget=1.0, anchor_kl_budget=1e6, agreement_margin=1.0,
                        min_heldout_pairs=4, samples_per_prompt=1, min_samples=1, max_new_tokens=32)

    decision = measure(stack, length_reward, heldout_conversations()[:16], heldout_pairs(), [1.0] * 6, gate)

    assert decision.candidate.reward_mean > decision.deployed.reward_mean, decision  # the flaw was found
    assert decision.kl_to_deployed > gate.kl_budget, decision
    assert not decision.publish  # on the KL budget alone: the flawed reward gain passed its margin
    assert len(decision.reasons) == 1 and "exceeds the budget" in decision.reasons[0], decision.reasons


@pytest.mark.parametrize("deployed_exists", [False, True])
def test_measure_samples_the_deployed_adapter_for_the_deployed_side(
    tiny_model_dir: Path, tmp_path: Path, deployed_exists: bool
) -> None:
    """Near-greedy: the gate's "deployed" responses are the deployed adapter's (or the base
    model's, on a first round), not the candidate's, which differ once the candidate moved."""
    deployed = write_deployed_adapter(tiny_model_dir, tmp_path / "deployed") if deployed_exists else None
    stack = load_policy_stack(tiny_model_dir, deployed, lora_config(4, 8, ["q_proj", "v_proj"]))
    move_policy(stack, 2.0, seed=3)  # far from the deployed adapter
    prompts = heldout_conversations()[:8]
    sampled: list[list[str]] = []

    def recording_reward(_: object, responses: list[str]) -> torch.Tensor:
        sampled.append(list(responses))
        return torch.zeros(len(responses))

    settings = GateSettings(min_heldout_pairs=1, samples_per_prompt=1, min_samples=1, max_new_tokens=8,
                            temperature=1e-4)
    measure(stack, recording_reward, prompts, [], [], settings)

    candidate, deployed_side = sampled  # one batch: the candidate's, then the deployed adapter's
    with stack.reference_active():
        expected = sample_rollout(stack, prompts, max_new_tokens=8, temperature=1e-4,
                                  max_prompt_tokens=settings.max_prompt_tokens, merged=False).responses
        with pytest.raises(RuntimeError, match="the reference is active"):
            sample_rollout(stack, prompts, max_new_tokens=8, temperature=1e-4, max_prompt_tokens=64)
    assert deployed_side == expected
    assert sum(c != d for c, d in zip(candidate, deployed_side)) >= 4, (candidate, deployed_side)


def test_an_exact_copy_of_the_deployed_adapter_is_refused_in_at_least_95_of_100_trials(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A no-op candidate (the policy is the deployed adapter, KL 0) under the default gate and a
    fixed reward: the paired 95 % bound must keep it out at least 95 times in 100. (The old
    gate, a difference of two independent means against a fixed 0.05, let 4 in 20 through.)"""
    deployed = write_deployed_adapter(tiny_model_dir, tmp_path / "deployed")
    stack = load_policy_stack(tiny_model_dir, deployed, lora_config(4, 8, ["q_proj"]))
    settings = GateSettings(min_heldout_pairs=1, samples_per_prompt=2, min_samples=1, max_new_tokens=6)
    prompts = heldout_conversations()[:16]
    published = 0
    for trial in range(100):
        torch.manual_seed(trial)
        decision = measure(stack, polite_reward, prompts, [], [], settings)
        assert decision.kl_to_deployed == pytest.approx(0.0, abs=1e-4)
        published += decision.publish
    assert published <= 5, published


def test_a_candidate_trained_on_a_clear_preference_is_published(tiny_model_dir: Path) -> None:
    """PPO on a learnable reward (polite openings) from the base model: the default gate (its
    margin, KL budgets, and non-inferiority on held-out human pairs that prefer politeness)
    publishes it."""
    ppo = PPOSettings(rollout_batch_size=32, num_minibatches=4, ppo_epochs=4, max_new_tokens=8,
                      learning_rate=5e-3, kl_coef=0.05, kl_target=4.0, missing_eos_penalty=0.0, seed=0)
    torch.manual_seed(0)
    stack = load_policy_stack(tiny_model_dir, None, lora_config(8, 16, ["q_proj", "v_proj", "up_proj"]))
    PPOTrainer(stack, polite_reward, ppo).train(training_prompts(400), iterations=12)
    settings = GateSettings(samples_per_prompt=4, min_samples=1, max_new_tokens=8)
    prompts = heldout_conversations()
    pairs = [TextPair(p, "Happy to help! Hope that helps!", "Ugh, seriously? Whatever.") for p in prompts]

    decision = measure(stack, polite_reward, prompts, pairs, [1.0] * len(pairs), settings)

    assert decision.publish, decision.reasons
    assert decision.reward_gain is not None and decision.reward_gain.lower > settings.reward_margin
