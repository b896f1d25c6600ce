"""Rollouts: sample one response per prompt from the policy with transformers `generate`.

Only token ids come out of generation; the trainer recomputes every log-probability itself
(`PolicyStack.policy_outputs`), so what the sampler reports is never trusted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from trainer.rl.models import PolicyStack

Conversation = Sequence[Mapping[str, str]]
"""A prompt: chat messages ``{"role", "content"}``, ending with the user's turn."""


@dataclass
class Rollout:
    """B sampled responses, laid out for the trainer's forward passes."""

    prompts: list[Conversation]
    responses: list[str]
    """Decoded responses, EOS and padding removed."""
    input_ids: torch.Tensor
    """(B, P + T) left-padded prompt block, then the right-padded response block."""
    attention_mask: torch.Tensor
    """(B, P + T) 1 on prompt and response tokens, 0 on padding."""
    prompt_width: int
    """P."""
    response_ids: torch.Tensor
    """(B, T) sampled tokens."""
    response_mask: torch.Tensor
    """(B, T) float: 1 up to and including the first EOS, 0 after."""


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Conversation], max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-templated prompts (with the assistant's turn opened), left-padded: (B, P) ids, mask."""
    texts = [tokenizer.apply_chat_template([dict(m) for m in p], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, truncation=True,
                      max_length=max_tokens, return_tensors="pt")
    return batch.input_ids, batch.attention_mask


def response_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) float mask: 1 up to and including each row's first EOS (all of a row without one)."""
    is_eos = (response_ids == eos_id).long()
    eos_before = is_eos.cumsum(1) - is_eos  # EOS tokens strictly before t
    return (eos_before == 0).float()


@torch.no_grad()
def sample_rollout(
    stack: PolicyStack,
    prompts: Sequence[Conversation],
    *,
    max_new_tokens: int,
    temperature: float,
    max_prompt_tokens: int,
    merged: bool = True,
) -> Rollout:
    """One sampled response per prompt from the policy (pure sampling at `temperature`).

    `merged`: sample with the adapter merged into a temporary copy of the adapted weights
    (`PolicyStack.merged_policy`: about twice as fast on CPU, one extra copy of those layers
    while sampling); false: through the LoRA layers, one copy of the base at all times.
    """
    tokenizer = stack.tokenizer
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    with stack.merged_policy() if merged else nullcontext():
        output = stack.peft_model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, temperature=temperature,
            top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    response_ids = output[:, prompt_ids.shape[1]:]
    return assemble_rollout(tokenizer, prompts, prompt_ids, prompt_mask, response_ids,
                            response_mask(response_ids, tokenizer.eos_token_id))


def assemble_rollout(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Conversation],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    mask: torch.Tensor,
) -> Rollout:
    """A `Rollout` from (B, P) left-padded prompts and (B, T) sampled tokens with their (B, T)
    validity mask; tokens outside the mask become padding."""
    response_ids = torch.where(mask.bool(), response_ids, tokenizer.pad_token_id)
    responses = tokenizer.batch_decode(
        [row[row_mask.bool()] for row, row_mask in zip(response_ids, mask)], skip_special_tokens=True
    )
    return Rollout(
        prompts=list(prompts),
        responses=responses,
        input_ids=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, mask.long()], dim=1),
        prompt_width=prompt_ids.shape[1],
        response_ids=response_ids,
        response_mask=mask,
    )
