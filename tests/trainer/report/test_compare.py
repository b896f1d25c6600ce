"""`hhh eval`'s comparison on the tiny demo model: a policy trained towards polite openings is
judged better than the base by the constitution (a judge of whole answers it was not trained
on), and a version identical to the base is not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from trainer.config import PPOSettings
from trainer.judges import ConstitutionJudge
from trainer.report.compare import EvalSpec, VersionToEvaluate, compare_versions, verdict_of
from trainer.rl.evaluation import SamplingSpec
from trainer.rl.models import load_frozen_base, load_policy_stack, lora_config
from trainer.rl.ppo import PPOTrainer
from trainer.stats import MeanInterval

from tests.trainer.rl.helpers import POLITE_OPENINGS, heldout_conversations, training_prompts

RUDE_OPENINGS = ("Ugh", "What a dumb", "Are you kidding", "Wow, you really")
"""How replies in the corpus's rude style begin (trainer.demo_model.corpus)."""


def opening_reward(_: object, responses: list[str]) -> torch.Tensor:
    """A reward model's stand-in that reads only how an answer opens: +1 polite, −1 rude."""
    return torch.tensor([float(any(o in r for o in POLITE_OPENINGS)) - float(any(o in r for o in RUDE_OPENINGS))
                         for r in responses])


def identity_adapter(model_dir: Path, out_dir: Path) -> Path:
    """A LoRA adapter whose B is zero: another version that answers exactly like the base."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(load_frozen_base(model_dir), config).save_pretrained(out_dir)
    return out_dir


def polite_adapter(model_dir: Path, out_dir: Path) -> Path:
    """PPO on `opening_reward` (the gate's learnable-preference test's recipe)."""
    ppo = PPOSettings(rollout_batch_size=32, num_minibatches=4, ppo_epochs=4, max_new_tokens=8,
                      learning_rate=5e-3, kl_coef=0.05, kl_target=4.0, missing_eos_penalty=0.0, seed=0)
    torch.manual_seed(0)
    stack = load_policy_stack(model_dir, None, lora_config(8, 16, ["q_proj", "v_proj", "up_proj"]))
    PPOTrainer(stack, opening_reward, ppo).train(training_prompts(400), iterations=12)
    stack.save_policy(out_dir)
    return out_dir


def test_a_trained_adapter_is_judged_better_than_the_base_and_a_copy_of_the_base_is_not(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    versions = [VersionToEvaluate("base", None, None),
                VersionToEvaluate("copy", identity_adapter(tiny_model_dir, tmp_path / "copy"), None),
                VersionToEvaluate("polite", polite_adapter(tiny_model_dir, tmp_path / "polite"), None)]
    prompts = heldout_conversations()
    spec = EvalSpec(SamplingSpec(max_new_tokens=16, temperature=1.0, max_prompt_tokens=64, batch_size=64),
                    samples_per_prompt=4, confidence=0.95, seed=0)

    base, copy, polite = compare_versions(tiny_model_dir, versions, prompts, ConstitutionJudge(),
                                          opening_reward, spec)

    assert base.verdict == "baseline" and base.versus_baseline is None
    assert copy.verdict == "no measurable difference", copy.versus_baseline
    assert copy.kl_to_base.mean == pytest.approx(0.0, abs=1e-4)
    assert polite.verdict == "better", polite.versus_baseline
    assert polite.reward is not None and base.reward is not None and polite.reward.mean > base.reward.mean
    assert polite.kl_to_base.lower > 0  # it moved, and the report says how far
    assert len(polite.judge_scores) == 4 * len(prompts) and polite.judge.n == len(prompts)
    assert set(polite.judge_by_group) == {"everyday", "myth", "harmful"}
    assert polite.samples and all(user and isinstance(answer, str) for user, answer in polite.samples)


@pytest.mark.parametrize(("lower", "upper", "verdict"), [
    (0.1, 0.5, "better"), (-0.5, -0.1, "worse"), (-0.1, 0.3, "no measurable difference"),
])
def test_the_verdict_is_the_side_of_zero_the_interval_lies_on(lower: float, upper: float, verdict: str) -> None:
    assert verdict_of(MeanInterval((lower + upper) / 2, lower, upper, 0.95, 10)) == verdict
