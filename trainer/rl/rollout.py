"""Rollouts: sample one response per prompt from the policy with transformers `generate`.

Only token ids come out of generation; the trainer recomputes every log-probability itself
(`PolicyStack.policy_outputs`), so what the sampler reports is never trusted. For that to be
the distribution the tokens were drawn from, sampling is pure: softmax(logits / T) and nothing
else. A model folder's ``generation_config.json`` may ask for a repetition penalty, top-k or
top-p by default; `generate` would apply them silently, so the model's generation config is
swapped for a neutral one while sampling (`pure_sampling`) and every option is given explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
import dataclasses
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

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
    eos_id: int
    """The EOS token id."""
    sampler_logprobs: torch.Tensor | None = None
    """(B, T) log-probabilities of the sampled tokens as the sampler drew them (after every
    logits processor it applied), when asked for; only to check that sampling equals scoring."""

    def to(self, device: torch.device) -> Rollout:
        """This rollout with its tensors on ``device`` (itself if they are there already)."""
        if self.input_ids.device == device:
            return self
        moved = {name: getattr(self, name).to(device) for name in
                 ("input_ids", "attention_mask", "response_ids", "response_mask")}
        sampler = self.sampler_logprobs.to(device) if self.sampler_logprobs is not None else None
        return dataclasses.replace(self, **moved, sampler_logprobs=sampler)

    @property
    def ended(self) -> torch.Tensor:
        """(B,) bool: the response ended with EOS (False: cut by the token limit)."""
        return (self.response_ids == self.eos_id).logical_and(self.response_mask.bool()).any(1)


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


@contextmanager
def pure_sampling(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    """Within: ``model.generation_config`` is a neutral one (special token ids only), so that
    the model folder's generation defaults (repetition penalty, top-k, ...) are not applied."""
    saved = model.generation_config
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    try:
        yield
    finally:
        model.generation_config = saved


@torch.no_grad()
def sample_rollout(
    stack: PolicyStack,
    prompts: Sequence[Conversation],
    *,
    max_new_tokens: int,
    temperature: float,
    max_prompt_tokens: int,
    merged: bool = True,
    with_sampler_logprobs: bool = False,
) -> Rollout:
    """One sampled response per prompt from the policy (pure sampling at `temperature`).

    `merged`: sample with the adapter merged into a temporary copy of the adapted weights
    (`PolicyStack.merged_policy`: about twice as fast on CPU, one extra copy of those layers
    while sampling); false: through the LoRA layers, one copy of the base at all times.
    `with_sampler_logprobs`: also keep what the sampler's processed scores gave each token.
    """
    tokenizer = stack.tokenizer
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    prompt_ids, prompt_mask = prompt_ids.to(stack.device), prompt_mask.to(stack.device)
    with stack.merged_policy() if merged else nullcontext(), pure_sampling(stack.decoder, tokenizer):
        output = stack.peft_model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, temperature=temperature,
            top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            output_scores=with_sampler_logprobs, return_dict_in_generate=True,
        )
    response_ids = output.sequences[:, prompt_ids.shape[1]:]
    rollout = assemble_rollout(tokenizer, prompts, prompt_ids, prompt_mask, response_ids,
                               response_mask(response_ids, tokenizer.eos_token_id))
    if with_sampler_logprobs:
        scores = torch.stack(output.scores, dim=1).float()  # (B, T, V), after the processors
        rollout.sampler_logprobs = scores.log_softmax(-1).gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    return rollout


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
        eos_id=tokenizer.eos_token_id,
    )
