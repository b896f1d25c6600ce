"""Compare adapter versions (and the base model) on held-out prompts: what `hhh eval` reports.

For m held-out prompts x_1..x_m (the dataset's eval split, never trained on) and versions
v_0, v_1, …, v_V (v_0, listed first, is the baseline: usually the base model), each version
answers every prompt k times at temperature T (`trainer.rl.evaluation.evaluate_policy`, every
version sampled with its own seed). Per version v and prompt j:

- s_vj: the mean judge score of v's k answers (`trainer.judges`: never the reward model the
  policy was trained on);
- r_vj: the mean score of the current reward model, when one exists (what the policy was
  optimised for: comparing r with s shows over-optimisation);
- KL_vj: the mean exact KL(π_v ‖ π_base) per answer, nats (the drift from the base).

Prompts are the units of every interval (answers to one prompt are not independent): a
version's figure is the mean over j with a two-sided Student-t interval at level c
(`trainer.stats.mean_interval`). Against the baseline the comparison is paired by prompt:
D_j = s_vj − s_0j, and the verdict is

- ``better`` if the interval of D̄ lies above 0, ``worse`` if below,
- ``no measurable difference`` otherwise.

A version identical to the baseline is called better (or worse) with probability at most
(1 − c)/2 each. Power: with per-prompt spread s_D, a true gain Δ is called better with
probability ≈ Φ(√m · Δ / s_D − t_{(1+c)/2, m−1}); with m = 64 that is 80 % at Δ ≈ 0.36 · s_D.
More answers per prompt shrink s_D.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from serving.adapters.store import Manifest
from trainer.devices import CPU, Placement
from trainer.judges import Judge, last_user_message
from trainer.rl.evaluation import RewardFn, SamplingSpec, evaluate_policy
from trainer.rl.models import load_policy_stack, lora_config
from trainer.rl.rollout import Conversation
from trainer.stats import MeanInterval, mean_interval

BASE = "base"
"""The label of the base model among the versions."""


@dataclass(frozen=True)
class VersionToEvaluate:
    """One side of the comparison: the base model (no adapter) or a stored adapter version."""

    label: str
    """``base``, or ``<scope>@<version>`` (``global@3``, ``user:ann@1``)."""
    adapter: Path | None
    manifest: Manifest | None


@dataclass(frozen=True)
class EvalSpec:
    """How every version is sampled, where, and how sure the intervals are."""

    sampling: SamplingSpec
    samples_per_prompt: int
    confidence: float
    seed: int
    placement: Placement = CPU


@dataclass(frozen=True)
class VersionResult:
    """What was measured of one version (the module docstring's figures)."""

    label: str
    created_at: datetime | None
    gate: str
    """The gate's decision that published it, from its manifest (`gate_summary`)."""
    judge: MeanInterval
    judge_by_group: dict[str, MeanInterval | None]
    """Per prompt group (a request category); None for a group of fewer than 2 prompts."""
    versus_baseline: MeanInterval | None
    """Paired D̄ of the judge score against the baseline; None for the baseline itself."""
    verdict: str
    reward: MeanInterval | None
    """Current reward model's mean score; None without a reward model."""
    reward_versus_baseline: MeanInterval | None
    kl_to_base: MeanInterval
    truncated_share: float
    """Share of answers cut by the token limit."""
    judge_scores: list[float]
    """Every answer's judge score (for the distribution plot)."""
    samples: list[tuple[str, str]]
    """A few (user message, answer) examples."""


def gate_summary(label: str, manifest: Manifest | None) -> str:
    """One line: what the gate measured when it published this version (or that it did not)."""
    if manifest is None:
        return "—" if label == BASE else "no manifest"
    m = manifest.metrics
    parent = f"v{manifest.parent_version}" if manifest.parent_version else "the base"
    if "reward_gain_lower" in m:
        kl = f"KL to {parent} {m.get('kl_to_deployed', float('nan')):.2f}"
        if manifest.parent_version:
            kl += f", to the base {m.get('kl_to_base', float('nan')):.2f}"
        return (f"published by the gate: reward gain {m['reward_gain']:+.3f} over {parent} "
                f"({m.get('reward_gain_confidence', 0.95):.0%} lower bound {m['reward_gain_lower']:+.3f}), "
                f"{kl} nats")
    if "deployed_pair_agreement" in m:
        against = f"v{int(m['compared_version'])}" if m.get("compared_version") else "the global adapter"
        return (f"published by the per-user gate: held-out pair agreement "
                f"{m['heldout_pair_agreement']:.3f} vs {against}'s {m['deployed_pair_agreement']:.3f} "
                f"(lower bound of the gain {m.get('agreement_gain_lower', float('nan')):+.3f})")
    return "published without gate figures (by hand: `hhh adapters publish`)"


def verdict_of(difference: MeanInterval | None) -> str:
    """``better`` / ``worse`` / ``no measurable difference`` (module docstring)."""
    if difference is None:
        return "baseline"
    if difference.lower > 0:
        return "better"
    if difference.upper < 0:
        return "worse"
    return "no measurable difference"


@dataclass(frozen=True)
class _Sampled:
    judge: torch.Tensor  # (m,) per-prompt means
    reward: torch.Tensor | None  # (m,)
    kl_to_base: torch.Tensor  # (m,)
    judge_scores: torch.Tensor  # (m·k,)
    truncated_share: float
    samples: list[tuple[str, str]]


def _unscored(prompts: Sequence[Conversation], _: Sequence[str]) -> torch.Tensor:
    """Sampling only: the judge and the reward model score the answers afterwards."""
    return torch.zeros(len(prompts))


def _sample_version(
    base_model: Path, version: VersionToEvaluate, prompts: Sequence[Conversation], judge: Judge,
    reward_fn: RewardFn | None, spec: EvalSpec, seed: int,
) -> _Sampled:
    k = spec.samples_per_prompt
    repeated = [p for p in prompts for _ in range(k)]  # prompt j's answers are a block
    stack = load_policy_stack(base_model, version.adapter, lora_config(4, 8, ["q_proj"]), share_base=True,
                              placement=spec.placement)
    torch.manual_seed(seed)
    evaluation = evaluate_policy(stack, _unscored, repeated, spec.sampling)
    del stack
    gc.collect()
    judged = judge(repeated, evaluation.responses).float()
    rewards = None if reward_fn is None else reward_fn(repeated, list(evaluation.responses)).float()
    samples = [(last_user_message(prompts[j]), evaluation.responses[j * k]) for j in range(min(6, len(prompts)))]
    return _Sampled(_per_prompt(judged, k), None if rewards is None else _per_prompt(rewards, k),
                    _per_prompt(evaluation.kl_to_base.float(), k), judged,
                    1 - evaluation.ended.float().mean().item(), samples)


def _per_prompt(values: torch.Tensor, k: int) -> torch.Tensor:
    """(m·k,) values, prompt j's k answers a block → (m,) per-prompt means."""
    return values.view(-1, k).mean(1)


def compare_versions(
    base_model: Path,
    versions: Sequence[VersionToEvaluate],
    prompts: Sequence[Conversation],
    judge: Judge,
    reward_fn: RewardFn | None,
    spec: EvalSpec,
) -> list[VersionResult]:
    """Sample and score every version on `prompts` (≥ 2); the first version is the baseline."""
    if len(prompts) < 2:
        raise ValueError(f"a comparison needs at least 2 held-out prompts, got {len(prompts)}")
    if not versions:
        raise ValueError("name at least one version to evaluate")
    c = spec.confidence
    groups: dict[str, list[int]] = defaultdict(list)
    for j, prompt in enumerate(prompts):
        groups[judge.group_of(prompt)].append(j)
    sampled = [_sample_version(base_model, v, prompts, judge, reward_fn, spec, spec.seed + i)
               for i, v in enumerate(versions)]
    baseline = sampled[0]
    results = []
    for index, (version, s) in enumerate(zip(versions, sampled)):
        versus = None if index == 0 else mean_interval(s.judge - baseline.judge, c)
        reward_versus = None
        if index and s.reward is not None and baseline.reward is not None:
            reward_versus = mean_interval(s.reward - baseline.reward, c)
        results.append(VersionResult(
            label=version.label,
            created_at=version.manifest.created_at if version.manifest else None,
            gate=gate_summary(version.label, version.manifest),
            judge=mean_interval(s.judge, c),
            judge_by_group={g: mean_interval(s.judge[idx], c) if len(idx) >= 2 else None
                            for g, idx in sorted(groups.items())},
            versus_baseline=versus,
            verdict=verdict_of(versus),
            reward=None if s.reward is None else mean_interval(s.reward, c),
            reward_versus_baseline=reward_versus,
            kl_to_base=mean_interval(s.kl_to_base, c),
            truncated_share=s.truncated_share,
            judge_scores=s.judge_scores.tolist(),
            samples=s.samples,
        ))
    return results
