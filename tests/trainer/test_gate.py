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
from trainer.config import PPOSettings
from trainer.gate import (
    AdapterScores,
    GateSettings,
    decide,
    mcnemar_z,
    measure,
    prefers_chosen,
    weighted_share,
)
from trainer.rl.dpo import TextPair
from trainer.rl.models import load_policy_stack, lora_config
from trainer.rl.ppo import PPOTrainer
from trainer.rl.rollout import sample_rollout

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


def test_mcnemar_z_counts_only_the_pairs_that_changed() -> None:
    deployed = torch.tensor([True] * 30 + [False] * 10)
    candidate = deployed.clone()
    assert mcnemar_z(candidate, deployed) == 0.0
    candidate[:9] = False  # 9 lost
    candidate[30:31] = True  # 1 won
    assert mcnemar_z(candidate, deployed) == pytest.approx((9 - 1) / (10 ** 0.5))
    assert mcnemar_z(deployed, candidate) == pytest.approx(-(9 - 1) / (10 ** 0.5))


def test_a_better_candidate_within_budget_is_published() -> None:
    decision = decide(AdapterScores(0.5, 0.7), AdapterScores(0.2, 0.75), 2.0, agreement_drop_z=1.0,
                      heldout_prompts=10, heldout_pairs=20, settings=SETTINGS)
    assert decision.publish and decision.reasons == ()
    assert decision.as_metrics()["candidate"] == {"reward_mean": 0.5, "pair_agreement": 0.7}


@pytest.mark.parametrize(
    ("candidate", "kl", "z", "pairs", "reason"),
    [
        (AdapterScores(0.25, 0.8), 2.0, 0.0, 20, "reward gain +0.050 is below the margin 0.100"),
        (AdapterScores(0.9, 0.8), 7.5, 0.0, 20, "KL to the deployed adapter 7.50 nats exceeds the budget 5.00"),
        (AdapterScores(0.9, 0.6), 2.0, 2.5, 20,
         "agreement with held-out human pairs fell from 0.750 to 0.600 (McNemar z 2.50 > 1.65)"),
        (AdapterScores(0.9, 0.8), 2.0, 0.0, 3, "only 3 held-out human pairs; at least 4 are needed"),
    ],
)
def test_each_failed_check_refuses_with_its_reason(
    candidate: AdapterScores, kl: float, z: float, pairs: int, reason: str
) -> None:
    decision = decide(candidate, AdapterScores(0.2, 0.75), kl, agreement_drop_z=z, heldout_prompts=10,
                      heldout_pairs=pairs, settings=SETTINGS)
    assert not decision.publish
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith(reason), decision.reasons


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
    assert decision.agreement_drop_z == 0.0
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
    ppo = PPOSettings(rollout_batch_size=16, num_minibatches=2, ppo_epochs=4, max_new_tokens=16,
                      learning_rate=2e-2, kl_coef=0.0, kl_target=None, target_approx_kl=None, seed=0)
    torch.manual_seed(0)
    stack = load_policy_stack(tiny_model_dir, deployed, lora_config(8, 16, ["q_proj", "v_proj", "up_proj"]))
    PPOTrainer(stack, length_reward, ppo).train(training_prompts(200), iterations=6)
    gate = GateSettings(reward_margin=0.0, kl_budget=1.0, agreement_z=1e6, min_heldout_pairs=4,
                        samples_per_prompt=1, min_samples=1, max_new_tokens=16)

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
