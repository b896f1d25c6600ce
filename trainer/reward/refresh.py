"""Refresh the reward model from the dataset store when enough new evidence arrived.

``refresh_reward_model`` builds the pairs the store gives now, and trains a new version when
there is none yet or when at least ``refresh_min_new_pairs`` training pairs are new since the
latest one.

**Unpaired thumbs votes train the reward model too: pointwise targets, not KTO.** While the
model is weak most users vote down four answers in five, and one vote per prompt forms no pair;
so with ``pointwise_weight`` λ > 0 every user's latest vote on a training prompt, paired or
not, adds λ · BCE(v, σ(r − b)) to the pairwise loss (``trainer.reward.loss``). We chose
pointwise targets for the reward model over a KTO-style policy loss because the votes then
reach every consumer of the reward (PPO, the gate's reward check) through the one model, and
need no reference policy; personal DPO adapters still train on a user's own pairs only. Votes
count as evidence, each as half a pair (a pair is two votes' worth): ``min_train_pairs``,
``min_prompts``, ``max_prompt_share`` and ``refresh_min_new_pairs`` count pairs + votes / 2 (a
new vote is one whose user, completion, criterion or direction the parent did not train on), so
a reward model is trained and refreshed when votes arrive that form no pair. Held-out votes
evaluate too: when there are fewer than ``min_eval_pairs`` held-out pairs, held-out **vote
comparisons** stand in for them — each held-out up vote against a held-out down vote of the
same criterion (round-robin, so each vote is in at least one; across prompts, which the
pointwise term makes comparable: σ(r − b) is P(up)). They give the metrics and the parent
comparison below. With λ = 0 votes count for nothing and a refresh behaves as before.

A refresh warm-starts from the latest version (same base model) and trains ``refresh_epochs``
passes over all current pairs; a first version trains ``epochs`` passes. A pair set too small
or too one-sided is refused with a message naming the numbers and the setting to change;
nothing is stored then. Held-out pairs (by prompt hash) give the metrics.

**A refresh is kept only if it is not worse than its parent beyond noise.** Before training,
the parent (the warm start) scores the held-out pairs; after, the refreshed model scores the
same pairs. With d_i = 1 where only the parent orders pair i right, −1 where only the refreshed
model does, 0 otherwise, and the pairs' weights, the version is refused when the lower
confidence bound (level ``acceptance_confidence``, `trainer.stats.weighted_lower_bound`) of
the weighted mean d̄ — the accuracy lost — is above 0. A refresh as good as its parent is
refused at most 1 − c of the time (5 %); one that loses Δ of accuracy, its verdicts differing
on a share q of N pairs, is refused with probability ≈ Φ(Δ/√(q/N) − z_c): for N = 64, q = 0.2,
50 % at Δ = 0.09 and 95 % at Δ = 0.18. A refused version is not stored (PPO keeps the parent,
the newest accepted version); it is recorded in ``refused.jsonl`` with its figures and reason,
counted (``hhh_reward_refreshes_total{outcome="worse_than_parent"}``), and the next attempt
waits for another ``refresh_min_new_pairs`` new pairs. A cold start (the reward model's base
model changed) has no comparable parent and is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch

from streams.config import hhh_home
from trainer.config import RewardSettings, TrainerSettings
from trainer.demo_model.build import build_demo_model
from trainer.devices import Placement, placement_of
from trainer.metrics import REWARD_REFRESHES
from trainer.stats import weighted_lower_bound
from trainer.preferences.store import DatasetStore, PreferencePair, Vote
from trainer.reward.model import ModelKind, RewardModel, encode
from trainer.tokens import load_tokenizer
from trainer.reward.train import (
    EncodedPair,
    EncodedVote,
    evaluate_pairs,
    normalisation_of,
    rewards_of,
    train_pairs,
)
from common.errors import UserError
from common.files import sha256_file
from trainer.reward.versions import (
    RewardModelDraft,
    RewardModelManifest,
    RewardModelRefusal,
    RewardModelStore,
    RewardTraining,
    RewardTrainingData,
)

logger = logging.getLogger(__name__)

_SCORE_BATCH = 64


@dataclass(frozen=True)
class RefreshOutcome:
    """What one refresh check did."""

    status: Literal["trained", "up_to_date", "refused"]
    message: str
    version: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def pair_key(pair: PreferencePair) -> str:
    """A stable id of a pair: its prompt, criterion, chosen and rejected completions."""
    text = "\0".join((pair.prompt_id, pair.criterion, pair.chosen_id, pair.rejected_id))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def vote_key(vote: Vote) -> str:
    """A stable id of a vote: its user, completion, criterion and direction (a changed vote is new)."""
    text = "\0".join(("vote", vote.user_id, vote.completion_id, vote.criterion, "up" if vote.up else "down"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def vote_comparisons(votes: list[Vote]) -> list[PreferencePair]:
    """Held-out vote comparisons (module docstring): per criterion, the i-th up vote's completion
    over the (i mod D)-th down vote's, for i < max(U, D); weight 1; for evaluation only."""
    comparisons = []
    for criterion in sorted({v.criterion for v in votes}):
        ups = sorted((v.completion_id, v.prompt_id) for v in votes if v.criterion == criterion and v.up)
        downs = sorted(v.completion_id for v in votes if v.criterion == criterion and not v.up)
        if not ups or not downs:
            continue
        for i in range(max(len(ups), len(downs))):
            (chosen, prompt_id), rejected = ups[i % len(ups)], downs[i % len(downs)]
            comparisons.append(PreferencePair(prompt_id, criterion, chosen, rejected, 1.0, "votes",
                                              None, (), "eval"))
    return comparisons


def unfit_reason(
    train: list[PreferencePair], held_out: list[PreferencePair], settings: RewardSettings,
    train_votes: Sequence[Vote] = (),
) -> tuple[str, str] | None:
    """(outcome, message) when the pairs (and votes, each half a pair) are too few or too
    one-sided to train on, else None."""
    evidence = len(train) + len(train_votes) / 2
    if evidence < settings.min_train_pairs:
        return "too_few_pairs", (
            f"{len(train)} training pairs and {len(train_votes)} votes (a vote counts half a pair): "
            f"{evidence:g} training pairs, need at least {settings.min_train_pairs} "
            "(HHH_REWARD_MIN_TRAIN_PAIRS)")
    if len(held_out) < settings.min_eval_pairs:
        return "too_few_eval_pairs", (
            f"{len(held_out)} held-out pairs, need at least {settings.min_eval_pairs} "
            "(HHH_REWARD_MIN_EVAL_PAIRS; more prompts, or a larger HHH_TRAINER_EVAL_PERCENT)")
    by_prompt: Tally[str] = Tally()
    for pair in train:
        by_prompt[pair.prompt_id] += 1
    for vote in train_votes:
        by_prompt[vote.prompt_id] += 0.5
    if len(by_prompt) < settings.min_prompts:
        return "one_sided", (
            f"the training pairs and votes come from {len(by_prompt)} prompts, need at least "
            f"{settings.min_prompts} (HHH_REWARD_MIN_PROMPTS)")
    prompt, count = by_prompt.most_common(1)[0]
    if count / evidence > settings.max_prompt_share:
        return "one_sided", (
            f"prompt {prompt} gives {count:g} of {evidence:g} training pairs (votes counting half) "
            f"({count / evidence:.0%}), more than HHH_REWARD_MAX_PROMPT_SHARE="
            f"{settings.max_prompt_share:.0%}")
    return None


def resolve_model(settings: RewardSettings) -> tuple[Path, ModelKind]:
    """The model folder the reward model is built on, and its kind."""
    if settings.sequence_classifier is not None:
        return settings.sequence_classifier, "sequence_classifier"
    if settings.base_model is not None:
        return settings.base_model, "value_head"
    return build_demo_model("demo", home=hhh_home()), "value_head"


def on_policy_base(settings: RewardSettings, policy_base: Path | None) -> RewardSettings:
    """``settings`` with the policy's base model as the reward model's where none is configured,
    so that both share one copy of the base weights by default."""
    if policy_base is None or settings.base_model is not None or settings.sequence_classifier is not None:
        return settings
    return settings.model_copy(update={"base_model": policy_base})


def refresh_reward_model(
    trainer_settings: TrainerSettings, settings: RewardSettings, *, progress: bool | None = None,
    placement: Placement | None = None,
) -> RefreshOutcome:
    """Train and store a new reward-model version if the pairs call for one (module docstring).

    ``placement``: where to train (default: what ``trainer_settings`` ask for)."""
    dataset = DatasetStore(trainer_settings.dataset_path)
    try:
        pair_set = dataset.build_pairs(**trainer_settings.pair_options())
        votes = (dataset.votes(eval_percent=trainer_settings.eval_percent,
                               max_voice_share=trainer_settings.max_voice_share)
                 if settings.pointwise_weight > 0 else [])
    finally:
        dataset.close()
    pairs = [p for p in pair_set.pairs
             if settings.criteria is None or p.criterion in settings.criteria]
    votes = [v for v in votes if settings.criteria is None or v.criterion in settings.criteria]
    train = [p for p in pairs if p.split == "train"]
    train_votes = [v for v in votes if v.split == "train"]
    held_out = [p for p in pairs if p.split == "eval"]
    if len(held_out) < settings.min_eval_pairs:
        held_out = held_out + vote_comparisons([v for v in votes if v.split == "eval"])
    evidence = len(train) + len(train_votes) / 2

    versions = RewardModelStore(settings.store_dir)
    parent = versions.latest()
    pair_keys, vote_keys = {pair_key(p) for p in train}, {vote_key(v) for v in train_votes}
    keys = pair_keys | vote_keys
    new_keys = keys - versions.trained_pair_keys(parent) if parent is not None else keys
    new_pairs, new_votes = len(new_keys & pair_keys), len(new_keys & vote_keys)
    if parent is not None and new_pairs + new_votes / 2 < settings.refresh_min_new_pairs:
        REWARD_REFRESHES.labels(outcome="up_to_date").inc()
        return RefreshOutcome("up_to_date", (
            f"version {parent} is current: {new_pairs} new training pairs and {new_votes} new votes "
            f"(a vote counts half a pair), a refresh needs {settings.refresh_min_new_pairs} "
            "(HHH_REWARD_REFRESH_MIN_NEW_PAIRS)"), parent)
    refused = versions.last_refusal()
    if (parent is not None and refused is not None and refused.parent_version == parent
            and evidence - refused.train_pairs < settings.refresh_min_new_pairs):
        REWARD_REFRESHES.labels(outcome="up_to_date").inc()
        return RefreshOutcome("up_to_date", (
            f"version {parent} is current: the last refresh was refused ({refused.reason}); "
            f"{evidence - refused.train_pairs:g} training pairs (votes counting half) arrived since, "
            f"another attempt needs {settings.refresh_min_new_pairs} (HHH_REWARD_REFRESH_MIN_NEW_PAIRS)"),
            parent)
    if unfit := unfit_reason(train, held_out, settings, train_votes):
        outcome, message = unfit
        REWARD_REFRESHES.labels(outcome=outcome).inc()
        logger.warning("reward_refresh refused=%s: %s", outcome, message)
        return RefreshOutcome("refused", f"not training a reward model: {message}; nothing stored")

    if settings.threads:
        torch.set_num_threads(settings.threads)
    model_path, kind = resolve_model(settings)
    model_sha = sha256_file(_weights_file(model_path))
    warm = parent is not None and _same_model(versions.manifest(parent), kind, model_sha)
    if parent is not None and not warm:
        logger.info("reward_refresh cold_start=1: version %d was built on another model", parent)
    placement = placement or placement_of(trainer_settings)
    model = (RewardModel.load(versions.path(parent), model_path, kind, trainable=True, placement=placement)
             if warm else RewardModel.create(model_path, kind, settings, placement))
    tokenizer = load_tokenizer(model_path, padding_side="right")
    texts = _completion_texts(trainer_settings.dataset_path,
                              {cid for p in train + held_out for cid in (p.chosen_id, p.rejected_id)}
                              | {v.completion_id for v in train_votes})
    sequences = {cid: encode(tokenizer, messages, completion, settings.max_length)
                 for cid, (messages, completion) in texts.items()}

    def encoded(chosen: list[PreferencePair]) -> list[EncodedPair]:
        return [EncodedPair(sequences[p.chosen_id], sequences[p.rejected_id], p.weight)
                for p in chosen]

    # The parent's verdicts on the held-out pairs, before training moves the warm start.
    parent_correct = _correct(evaluate_pairs(model, encoded(held_out), tokenizer.pad_token_id,
                                             _SCORE_BATCH)[1]) if warm else None
    epochs = settings.refresh_epochs if warm else settings.epochs
    logger.info("reward_refresh parent_version=%s warm=%d train_pairs=%d new_pairs=%d train_votes=%d "
                "new_votes=%d eval_pairs=%d epochs=%d", parent if warm else None, int(warm), len(train),
                new_pairs, len(train_votes), new_votes, len(held_out), epochs)
    started = time.monotonic()
    train_loss = train_pairs(model, encoded(train), settings, epochs=epochs,
                             pad_id=tokenizer.pad_token_id, progress=progress,
                             votes=[EncodedVote(sequences[v.completion_id], v.up, v.weight)
                                    for v in train_votes])
    train_seconds = time.monotonic() - started
    train_ids = sorted({cid for p in train for cid in (p.chosen_id, p.rejected_id)}
                       | {v.completion_id for v in train_votes})
    normalisation = normalisation_of(
        rewards_of(model, [sequences[cid] for cid in train_ids], tokenizer.pad_token_id,
                   _SCORE_BATCH))
    held_out_metrics, held_out_rewards = evaluate_pairs(
        model, encoded(held_out), tokenizer.pad_token_id, _SCORE_BATCH)
    if parent_correct is not None and (refusal := _worse_than_parent(
            parent, parent_correct, _correct(held_out_rewards), held_out, int(evidence), settings)):
        versions.record_refusal(refusal)
        REWARD_REFRESHES.labels(outcome="worse_than_parent").inc()
        logger.warning("reward_refresh refused=worse_than_parent: %s", refusal.reason)
        return RefreshOutcome("refused", f"not storing the refreshed reward model: {refusal.reason}; "
                              f"PPO keeps version {parent}", parent)
    normalised = normalisation.apply(held_out_rewards)
    metrics = {
        "eval_accuracy": held_out_metrics.accuracy,
        "eval_mean_margin": held_out_metrics.mean_margin,
        "eval_loss": held_out_metrics.loss,
        "eval_reward_mean": float(normalised.mean()),
        "eval_reward_std": float(normalised.std()),
        "train_loss": train_loss,
        "reward_mean": normalisation.mean,
        "reward_std": normalisation.std,
        "train_examples_per_s": epochs * (len(train) + len(train_votes)) / train_seconds,
    }
    draft = RewardModelDraft(
        parent_version=parent if warm else None,
        created_at=datetime.now(UTC),
        kind=kind,
        model_path=str(model_path.resolve()),
        model_sha256=model_sha,
        normalisation=normalisation,
        metrics=metrics,
        data=RewardTrainingData(
            dataset=str(trainer_settings.dataset_path.resolve()),
            train_pairs=len(train), new_pairs=new_pairs, eval_pairs=len(held_out),
            train_votes=len(train_votes), new_votes=new_votes,
            train_prompts=len({p.prompt_id for p in train} | {v.prompt_id for v in train_votes}),
            criteria=sorted({p.criterion for p in pairs}),
            eval_percent=trainer_settings.eval_percent,
        ),
        training=RewardTraining(epochs=epochs, seconds=round(train_seconds, 2), **settings.model_dump(
            include=set(RewardTraining.model_fields) - {"epochs", "seconds"})),
    )
    version = versions.publish(model.save, draft, keys)
    REWARD_REFRESHES.labels(outcome="trained").inc()
    summary = " ".join(f"{name}={value:.4g}" for name, value in metrics.items())
    logger.info("reward_refresh stored_version=%d %s", version, summary)
    return RefreshOutcome(
        "trained", f"stored reward model version {version} in {versions.path(version)}: "
        f"held-out accuracy {held_out_metrics.accuracy:.1%} on {len(held_out)} pairs",
        version, metrics)


def _correct(rewards: torch.Tensor) -> torch.Tensor:
    """(N,) bool: is pair i ordered right, from (2N,) rewards (chosen first, then rejected)?"""
    chosen, rejected = rewards.view(2, -1)
    return chosen > rejected


def _worse_than_parent(
    parent: int, parent_correct: torch.Tensor, correct: torch.Tensor, held_out: list[PreferencePair],
    train_pairs: int, settings: RewardSettings,
) -> RewardModelRefusal | None:
    """The refusal record when the refresh lost held-out accuracy beyond noise (module docstring)."""
    weights = torch.tensor([p.weight for p in held_out], dtype=torch.float64)
    loss = weighted_lower_bound(parent_correct.double() - correct.double(), weights,
                                settings.acceptance_confidence)
    if not loss.lower > 0:
        return None
    accuracy, parent_accuracy = correct.double().mean().item(), parent_correct.double().mean().item()
    return RewardModelRefusal(
        at=datetime.now(UTC), parent_version=parent, train_pairs=train_pairs, eval_pairs=len(held_out),
        eval_accuracy=accuracy, parent_eval_accuracy=parent_accuracy, loss_lower_bound=loss.lower,
        reason=(f"held-out accuracy fell from {parent_accuracy:.1%} (version {parent}) to {accuracy:.1%} "
                f"on the same {len(held_out)} pairs; the {settings.acceptance_confidence:.0%} lower bound "
                f"of the loss is {loss.lower:+.3f} > 0"))


def _same_model(manifest: RewardModelManifest, kind: ModelKind, model_sha: str) -> bool:
    return manifest.kind == kind and manifest.model_sha256 == model_sha


def _weights_file(model_path: Path) -> Path:
    """The file whose checksum identifies the model (single-file safetensors checkpoints)."""
    weights = model_path / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{model_path} has no model.safetensors; save the model with "
                         "safe_serialization=True in a single file")
    return weights


def _completion_texts(
    dataset_path: Path, completion_ids: set[str]
) -> dict[str, tuple[list[dict[str, str]], str]]:
    """(prompt messages, completion text) of each completion, read from the dataset store."""
    db = sqlite3.connect(f"file:{dataset_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT completion_id, messages, completion FROM completions").fetchall()
    finally:
        db.close()
    return {cid: (json.loads(messages), text)
            for cid, messages, text in rows if cid in completion_ids}
