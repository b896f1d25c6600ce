"""The evaluation gate: publish a candidate adapter only if it beats the deployed one.

Every check runs on data the candidate never trained on — held-out prompts and held-out human
pairs (the split is by prompt hash, `trainer.preferences.store.split_of`):

1. **reward**: the mean reward-model score of the candidate's sampled responses minus the
   deployed adapter's, both on the held-out prompts, must be at least ``reward_margin``
   (normalised reward units: the reward model's scores have mean 0 and std 1 on its training
   completions);
2. **KL budget**: the mean KL(candidate ‖ deployed) per response on the held-out prompts (exact
   per token over the vocabulary, summed over the response) must be at most ``kl_budget`` nats.
   A policy that found a flaw of the reward model usually gets there by moving far;
3. **human pairs**, which the policy was not optimised against: on each held-out human pair,
   does the adapter find the chosen response more likely than the rejected one, per token
   (`prefers_chosen`)? The candidate must not lose significantly more of these pairs than it
   wins against the deployed adapter: McNemar's one-sided test on the discordant pairs,
   z = (lost − won) / √(lost + won), refuses above ``agreement_z`` (1.645: 5 %). A test
   rather than a fixed tolerance, because with tens of held-out pairs a few flips are noise.
   At least ``min_heldout_pairs`` are needed, else the gate cannot vouch for the candidate and
   refuses. The weighted share of agreeing pairs is reported beside it.

"Deployed" is the reference of the round: the adapter served for the scope now, or the base
model on the first round. `decide` is pure; `measure` samples and scores with a `PolicyStack`
whose policy is the candidate and whose reference is the deployed adapter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from trainer.config import GateSettings
from trainer.rl.dpo import TextPair, encode_responses
from trainer.rl.evaluation import RewardFn, SamplingSpec, evaluate_policy, reference_rewards
from trainer.rl.models import PolicyStack, causal_lm_outputs, token_logprobs
from trainer.rl.rollout import Conversation


@dataclass(frozen=True)
class AdapterScores:
    """What the gate measured of one adapter."""

    reward_mean: float
    """Mean normalised reward of its responses to the held-out prompts."""
    pair_agreement: float | None
    """Weighted share of held-out human pairs it agrees with; None without pairs."""


@dataclass(frozen=True)
class GateDecision:
    """The verdict, with every figure it rests on and a reason per failed check."""

    publish: bool
    reasons: tuple[str, ...]
    """Why not (empty when `publish`)."""
    candidate: AdapterScores
    deployed: AdapterScores
    kl_to_deployed: float
    agreement_drop_z: float | None
    """McNemar z of pairs lost versus won against the deployed adapter; None without pairs."""
    heldout_prompts: int
    heldout_pairs: int

    def as_metrics(self) -> dict[str, object]:
        """A JSON-able summary for the run record and the adapter manifest."""
        return {"publish": self.publish, "reasons": list(self.reasons),
                "candidate": asdict(self.candidate), "deployed": asdict(self.deployed),
                "kl_to_deployed": self.kl_to_deployed, "agreement_drop_z": self.agreement_drop_z,
                "heldout_prompts": self.heldout_prompts,
                "heldout_pairs": self.heldout_pairs}


def decide(
    candidate: AdapterScores,
    deployed: AdapterScores,
    kl_to_deployed: float,
    *,
    agreement_drop_z: float | None,
    heldout_prompts: int,
    heldout_pairs: int,
    settings: GateSettings,
) -> GateDecision:
    """Apply the three checks of the module docstring; every failing one gives a reason."""
    reasons = []
    gain = candidate.reward_mean - deployed.reward_mean
    if gain < settings.reward_margin:
        reasons.append(f"reward gain {gain:+.3f} is below the margin {settings.reward_margin:.3f} "
                       f"(candidate {candidate.reward_mean:.3f}, deployed {deployed.reward_mean:.3f})")
    if kl_to_deployed > settings.kl_budget:
        reasons.append(f"KL to the deployed adapter {kl_to_deployed:.2f} nats exceeds the budget "
                       f"{settings.kl_budget:.2f}")
    if heldout_pairs < settings.min_heldout_pairs:
        reasons.append(f"only {heldout_pairs} held-out human pairs; at least "
                       f"{settings.min_heldout_pairs} are needed for an independent check")
    elif agreement_drop_z is not None and agreement_drop_z > settings.agreement_z:
        reasons.append(f"agreement with held-out human pairs fell from {deployed.pair_agreement:.3f} "
                       f"to {candidate.pair_agreement:.3f} (McNemar z {agreement_drop_z:.2f} > "
                       f"{settings.agreement_z:.2f})")
    return GateDecision(not reasons, tuple(reasons), candidate, deployed, kl_to_deployed,
                        agreement_drop_z, heldout_prompts, heldout_pairs)


def prefers_chosen(
    chosen_logprob: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_logprob: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """(N,) bool: is the chosen response more likely per token, ℓ_c / n_c > ℓ_r / n_r?

    ℓ: summed log-probability of a response (EOS included), n: its token count, all (N,).
    Per token, so that a short rejected answer does not win by being short.
    """
    return chosen_logprob / chosen_tokens > rejected_logprob / rejected_tokens


def weighted_share(agrees: torch.Tensor, weights: torch.Tensor) -> float:
    """Σ_i w_i · agrees_i / Σ_i w_i for (N,) bool `agrees` and (N,) weights, N ≥ 1."""
    return float((weights * agrees.float()).sum() / weights.sum())


def mcnemar_z(candidate: torch.Tensor, deployed: torch.Tensor) -> float:
    """z = (lost − won) / √(lost + won) over (N,) bool verdicts of the same pairs; 0 if none differ.

    lost: pairs the deployed adapter gets right and the candidate wrong; won: the reverse.
    """
    lost = int((deployed & ~candidate).sum())
    won = int((candidate & ~deployed).sum())
    return (lost - won) / math.sqrt(lost + won) if lost + won else 0.0


@torch.no_grad()
def measure(
    stack: PolicyStack,
    reward_fn: RewardFn,
    prompts: Sequence[Conversation],
    pairs: Sequence[TextPair],
    pair_weights: Sequence[float],
    settings: GateSettings,
) -> GateDecision:
    """Sample, score and compare `stack`'s policy (the candidate) with its reference (deployed)."""
    if not prompts:
        raise ValueError("the gate needs held-out prompts; none were given")
    if stack.separate_reference is not None:
        raise ValueError("the gate samples the deployed adapter through the shared base; "
                         "load its stack with share_base=True")
    per_prompt = max(settings.samples_per_prompt, math.ceil(settings.min_samples / len(prompts)))
    repeated = [p for p in prompts for _ in range(per_prompt)]
    spec = SamplingSpec(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                        max_prompt_tokens=settings.max_prompt_tokens, batch_size=settings.batch_size)
    candidate = evaluate_policy(stack, reward_fn, repeated, spec)
    deployed_rewards = reference_rewards(stack, reward_fn, repeated, spec)
    candidate_agreement = deployed_agreement = drop_z = None
    if pairs:
        candidate_prefers, deployed_prefers = pair_preferences(stack, pairs, settings)
        weights = torch.tensor(list(pair_weights), dtype=torch.float32)
        candidate_agreement = weighted_share(candidate_prefers, weights)
        deployed_agreement = weighted_share(deployed_prefers, weights)
        drop_z = mcnemar_z(candidate_prefers, deployed_prefers)
    return decide(
        AdapterScores(candidate.reward_mean, candidate_agreement),
        AdapterScores(deployed_rewards.mean().item(), deployed_agreement),
        candidate.kl_mean, agreement_drop_z=drop_z,
        heldout_prompts=len(prompts), heldout_pairs=len(pairs), settings=settings,
    )


@torch.no_grad()
def pair_preferences(
    stack: PolicyStack, pairs: Sequence[TextPair], settings: GateSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy's, reference's) (N,) bool `prefers_chosen` verdicts on `pairs` (at least one)."""
    if not pairs:
        raise ValueError("pair preferences need at least one pair")
    logprobs: dict[str, list[torch.Tensor]] = {"policy": [], "reference": []}
    tokens = []
    for start in range(0, len(pairs), settings.batch_size):
        chunk = pairs[start : start + settings.batch_size]
        encoded = encode_responses(stack, [p.prompt for p in chunk] * 2,
                                   [p.chosen for p in chunk] + [p.rejected for p in chunk],
                                   settings.max_prompt_tokens + settings.max_new_tokens)
        tokens.append(encoded.response_mask.sum(1).view(2, -1))
        policy, _ = causal_lm_outputs(stack.decoder, encoded.input_ids, encoded.attention_mask,
                                      encoded.prompt_width)
        reference = stack.reference_logits(encoded.input_ids, encoded.attention_mask, encoded.prompt_width)
        for name, logits in (("policy", policy), ("reference", reference)):
            summed = (token_logprobs(logits, encoded.response_ids) * encoded.response_mask).sum(1)
            logprobs[name].append(summed.view(2, -1))
    counts = torch.cat(tokens, dim=1)
    verdicts = []
    for name in ("policy", "reference"):
        both = torch.cat(logprobs[name], dim=1)
        verdicts.append(prefers_chosen(both[0], counts[0], both[1], counts[1]))
    return verdicts[0], verdicts[1]
