"""The reward model's training loop, held-out evaluation and reward statistics.

One step: a batch of B pairs is one forward pass over 2B sequences (chosen rows first, then
rejected), right-padded to the batch's longest; the weighted pairwise loss
(``trainer.reward.loss``) is back-propagated into the adapter and the value head only. With
thumbs votes and ``pointwise_weight`` λ > 0, each step also takes a batch of votes and adds
λ · the pointwise loss (its learnt offset b joins the optimiser); an epoch passes every pair
and every vote once, in S = max(⌈P/B⌉, ⌈V/B⌉) steps, so pair and vote batches are spread
evenly over the steps (a step may then hold votes only, or pairs only). Batches
are drawn from windows of pairs sorted by length, so padding stays small while their order
stays random. A batch of more than ``max_tokens_per_forward`` padded tokens is split into
micro-batches M whose losses are scaled by Σ_M w / Σ_B w, so their gradients add up to exactly
the batch's: the step is the same, the activation memory is bounded; on a GPU out-of-memory
error the budget halves and the step runs again (`trainer.devices.ShrinkingMicroBatch`).
Batches go to the model's device; rewards come back float32 on the CPU. Interactive runs show a
progress bar (tqdm); otherwise progress goes to the log as ``key=value`` lines.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import zip_longest

import torch

from trainer.config import RewardSettings
from trainer.devices import ShrinkingMicroBatch, checkpointing_active
from trainer.reward.loss import PairwiseMetrics, PairwiseRewardLoss, PointwiseRewardLoss, pairwise_metrics
from trainer.reward.model import RewardModel
from trainer.tokens import length_grouped_batches, pad_right
from trainer.reward.versions import Normalisation

logger = logging.getLogger(__name__)

_LOG_LINES = 10
"""Progress lines per training run when no terminal shows a bar."""


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of the preferred and the other (prompt, completion), and the pair's weight."""

    chosen: list[int]
    rejected: list[int]
    weight: float


@dataclass(frozen=True)
class EncodedVote:
    """Token ids of a thumbs-voted (prompt, completion), whether the vote was up, and its weight."""

    sequence: list[int]
    up: bool
    weight: float = 1.0


def train_pairs(
    model: RewardModel,
    pairs: Sequence[EncodedPair],
    settings: RewardSettings,
    *,
    epochs: int,
    pad_id: int,
    progress: bool | None = None,
    votes: Sequence[EncodedVote] = (),
) -> float:
    """Train ``model`` in place on ``pairs`` (and ``votes``, if ``settings.pointwise_weight``
    > 0); return the mean loss of the last epoch.

    ``progress``: a tqdm bar (True), log lines (False), or a bar only on a terminal (None).
    """
    votes = votes if settings.pointwise_weight > 0 else ()
    if not pairs and not votes:
        raise ValueError("nothing to train on: no pairs, and no votes (or pointwise_weight 0)")
    pointwise = PointwiseRewardLoss().to(model.device)
    parameters = model.trainable_parameters() + ([pointwise.offset] if votes else [])
    optimizer = torch.optim.AdamW(
        parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    generator = torch.Generator().manual_seed(settings.seed)
    steps_per_epoch = max(math.ceil(len(pairs) / settings.batch_size),
                          math.ceil(len(votes) / settings.batch_size))
    # The more numerous side keeps batch_size (without votes, exactly the pairs-only batches).
    pair_batch, vote_batch = (settings.batch_size if len(items) == max(len(pairs), len(votes))
                              else math.ceil(len(items) / steps_per_epoch) for items in (pairs, votes))
    total_steps = epochs * steps_per_epoch
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = _progress_bar(total_steps) if show_bar else None
    log_every = max(1, total_steps // _LOG_LINES)
    budget = ShrinkingMicroBatch(
        settings.max_tokens_per_forward, minimum=2, unit="tokens",
        advice="lower HHH_REWARD_MAX_LENGTH, set HHH_TRAINER_GRADIENT_CHECKPOINTING=true, or use a "
        "GPU with more memory")
    model.train()
    started, step, trained, epoch_losses = time.monotonic(), 0, 0, []
    for epoch in range(1, epochs + 1):
        epoch_losses = []
        pair_rows = length_grouped_batches(
            len(pairs), lambda i: max(len(pairs[i].chosen), len(pairs[i].rejected)),
            max(pair_batch, 1), generator,
        ) if pairs else []
        vote_rows = length_grouped_batches(
            len(votes), lambda i: len(votes[i].sequence), max(vote_batch, 1), generator,
        ) if votes else []
        for rows, voted in zip_longest(pair_rows, vote_rows, fillvalue=[]):
            batch, vote_batch_items = [pairs[i] for i in rows], [votes[i] for i in voted]
            with checkpointing_active(model.backbone):
                loss_sum = budget.run(
                    partial(_backward_step, model, pointwise, batch, vote_batch_items, settings, pad_id),
                    discard=lambda: optimizer.zero_grad(set_to_none=True))
            torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, trained = step + 1, trained + len(batch) + len(vote_batch_items)
            epoch_losses.append(loss_sum)
            examples_per_s = trained / (time.monotonic() - started)  # pairs and votes
            if bar is not None:
                bar.set_postfix(epoch=epoch, loss=f"{loss_sum:.4f}", examples_s=f"{examples_per_s:.1f}")
                bar.update()
            elif step % log_every == 0 or step == total_steps:
                logger.info("reward_train step=%d/%d epoch=%d loss=%.4f examples_per_s=%.1f", step,
                            total_steps, epoch, sum(epoch_losses) / len(epoch_losses), examples_per_s)
    if bar is not None:
        bar.close()
    model.eval()
    return sum(epoch_losses) / len(epoch_losses)


def _backward_step(
    model: RewardModel, pointwise: PointwiseRewardLoss, batch: Sequence[EncodedPair],
    votes: Sequence[EncodedVote], settings: RewardSettings, pad_id: int, max_tokens: int,
) -> float:
    """Accumulate the gradient of L_pair(batch) + λ · L_point(votes); return that loss."""
    loss = backward_batch(model, batch, settings, pad_id, max_tokens) if batch else 0.0
    if votes:
        loss += backward_votes(model, pointwise, votes, settings.pointwise_weight, pad_id, max_tokens)
    return loss


def backward_votes(
    model: RewardModel, pointwise: PointwiseRewardLoss, votes: Sequence[EncodedVote], scale: float,
    pad_id: int, max_tokens: int,
) -> float:
    """Accumulate the gradient of ``scale`` · the pointwise loss of ``votes``, micro-batch by
    micro-batch of at most ``max_tokens`` padded tokens; return that loss."""
    loss_sum, start = 0.0, 0
    total_weight = sum(v.weight for v in votes)
    while start < len(votes):
        end, longest = start + 1, len(votes[start].sequence)
        while end < len(votes) and (end - start + 1) * max(longest, len(votes[end].sequence)) <= max_tokens:
            end, longest = end + 1, max(longest, len(votes[end].sequence))
        micro = votes[start:end]
        input_ids, attention_mask = (t.to(model.device) for t in pad_right([v.sequence for v in micro], pad_id))
        rewards = model(input_ids, attention_mask)  # (M,) float32
        up = torch.tensor([float(v.up) for v in micro], device=model.device)  # (M,)
        weight = torch.tensor([v.weight for v in micro], device=model.device)  # (M,)
        loss = pointwise(rewards, up, weight) * (scale * float(weight.sum()) / total_weight)
        loss.backward()
        loss_sum += loss.item()
        start = end
    return loss_sum


def backward_batch(
    model: RewardModel, batch: Sequence[EncodedPair], settings: RewardSettings, pad_id: int,
    max_tokens: int | None = None,
) -> float:
    """Accumulate the gradient of the batch's loss, micro-batch by micro-batch of at most
    ``max_tokens`` padded tokens (default ``settings.max_tokens_per_forward``); return the loss."""
    batch_weight = sum(p.weight for p in batch)
    loss_fn = PairwiseRewardLoss()
    loss_sum = 0.0
    for micro in micro_batches(batch, max_tokens or settings.max_tokens_per_forward):
        sequences = [p.chosen for p in micro] + [p.rejected for p in micro]
        input_ids, attention_mask = (t.to(model.device) for t in pad_right(sequences, pad_id))
        rewards = model(input_ids, attention_mask)  # (2M,) float32
        weight = torch.tensor([p.weight for p in micro], device=model.device)  # (M,)
        margin = settings.margin * weight if settings.margin else None
        share = float(weight.sum()) / batch_weight
        loss = loss_fn(rewards[: len(micro)], rewards[len(micro):], weight, margin) * share
        loss.backward()
        loss_sum += loss.item()
    return loss_sum


def micro_batches(batch: Sequence[EncodedPair], max_tokens: int) -> Iterator[Sequence[EncodedPair]]:
    """Consecutive slices of ``batch`` whose 2·M sequences, padded, hold at most ``max_tokens``
    tokens (a single pair may exceed it: it is never split)."""
    start = 0
    while start < len(batch):
        end, longest = start, 0
        while end < len(batch):
            longest_with_next = max(longest, len(batch[end].chosen), len(batch[end].rejected))
            if end > start and 2 * (end - start + 1) * longest_with_next > max_tokens:
                break
            end, longest = end + 1, longest_with_next
        yield batch[start:end]
        start = end


@torch.inference_mode()
def rewards_of(
    model: RewardModel, sequences: Sequence[list[int]], pad_id: int, batch_size: int
) -> torch.Tensor:
    """(N,) raw rewards of token sequences, scored in batches of similar length."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    rewards = torch.empty(len(sequences))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, attention_mask = (t.to(model.device) for t in pad_right([sequences[i] for i in rows], pad_id))
        rewards[rows] = model(input_ids, attention_mask).float().cpu()
    return rewards


def evaluate_pairs(
    model: RewardModel, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int
) -> tuple[PairwiseMetrics, torch.Tensor]:
    """Pairwise metrics on ``pairs`` and the (2N,) raw rewards (chosen first, then rejected)."""
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    rewards = rewards_of(model, sequences, pad_id, batch_size)
    return pairwise_metrics(rewards[: len(pairs)], rewards[len(pairs):]), rewards


def normalisation_of(rewards: torch.Tensor) -> Normalisation:
    """Mean and std of (N,) raw rewards; a std of 0 (one distinct reward) becomes 1."""
    std = float(rewards.double().std()) if len(rewards) > 1 else 0.0
    return Normalisation(mean=float(rewards.double().mean()), std=std if std > 0 else 1.0)


def _progress_bar(total: int):  # noqa: ANN202 - tqdm is optional: a bar only if it is installed
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="reward model", unit="step", dynamic_ncols=True)
