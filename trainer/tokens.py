"""Token sequences into tensors: the tokenizer, right-padding, and length-grouped batches.

Every trainer (demo model, reward model, PPO, DPO) turns lists of token ids into (B, T)
tensors the same way; this module is where that happens once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

GROUP_BATCHES = 8
"""Batches per window of items sorted by length (`length_grouped_batches`)."""


def load_tokenizer(model_dir: Path, *, padding_side: Literal["left", "right"]) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the model at ``model_dir``, which must have a pad token.

    ``padding_side`` (and the truncation side with it): "left" for prompt blocks that a response
    continues on the right (PPO rollouts, DPO and the gate), so that a long prompt loses its
    start; "right" where whole sequences are padded at their end (the reward model, whose
    `encode` cuts sequences itself).
    """
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer of {model_dir} has no pad token; set one and save it again")
    tokenizer.padding_side = padding_side
    tokenizer.truncation_side = padding_side
    return tokenizer


def pad_right(sequences: Sequence[Sequence[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids right-padded with ``pad_value`` (T: the longest sequence) and the (B, T) mask.

    The mask is 1 on the sequences' own tokens and 0 on padding (long, as attention wants it).
    """
    if not sequences:
        raise ValueError("nothing to pad: no sequences")
    width = max(len(ids) for ids in sequences)
    padded = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        padded[row, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
        mask[row, : len(ids)] = 1
    return padded, mask


def length_grouped_batches(
    count: int, length_of: Callable[[int], int], batch_size: int, generator: torch.Generator,
    *, window_batches: int = GROUP_BATCHES,
) -> list[list[int]]:
    """One epoch of shuffled batches of the indices 0..count-1, each of similar lengths.

    Padding to the longest item of a random batch can double the compute; sorting by
    ``length_of(i)`` within random windows of ``window_batches`` batches, then shuffling the
    batches, keeps the order random while each batch's items are alike in length.
    """
    window = batch_size * window_batches
    order = torch.randperm(count, generator=generator).tolist()
    batches = []
    for start in range(0, count, window):
        group = sorted(order[start : start + window], key=length_of)
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]
