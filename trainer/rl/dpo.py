"""DPO (Rafailov et al. 2023) of a per-user adapter, with the deployed global adapter as reference.

The policy adapter starts as a trainable copy of the global adapter (a fresh LoRA adapter when
none is deployed) and the reference is the global adapter itself, frozen — both named adapters
of one `PeftModel` over one copy of the base (`trainer.rl.models`). The reference never
changes during a round, so its log-probabilities are computed once, before the first step.

A pair's log-probability log π(y|x) is the sum over the response's tokens (EOS included) of the
model's token log-probabilities after the chat-templated prompt, exactly what the policy emits
in serving. Winner and loser of a pair go through one forward pass together. Pairs count by
their weight w_i (labeler consensus): a batch's loss is Σ w_i ℓ_i / Σ w_i. A batch runs in
micro-batches of ``micro_batch_size`` pairs whose losses are scaled by their share of the
batch's weight, so their gradients add up to the batch's; on a GPU out-of-memory error the micro-batch
halves and the step runs again (`trainer.devices.ShrinkingMicroBatch`). Batches live on the
stack's device; log-probabilities are float32 (`token_logprobs` casts the logits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from trainer.config import DPOSettings
from trainer.devices import CPU, Placement, ShrinkingMicroBatch, checkpointing_active
from trainer.rl.losses import dpo_loss
from trainer.rl.models import (
    PolicyStack,
    causal_lm_outputs,
    load_policy_stack,
    lora_config,
    token_logprobs,
)
from trainer.rl.record import RunRecord
from trainer.rl.rollout import Conversation
from trainer.tokens import pad_right


@dataclass(frozen=True)
class TextPair:
    """One preference as text: for `prompt`, `chosen` was preferred over `rejected`.

    (The dataset's pairs name completions by id: `trainer.preferences.store.TextPair`.)
    """

    prompt: Conversation
    chosen: str
    rejected: str
    weight: float = 1.0
    """The pair's consensus weight (`trainer.preferences`): its share of the DPO loss."""


@dataclass
class EncodedResponses:
    """Prompt + response sequences for scoring, prompts left-padded, responses right-padded."""

    input_ids: torch.Tensor
    """(N, P + T)."""
    attention_mask: torch.Tensor
    """(N, P + T)."""
    prompt_width: int
    """P."""
    response_ids: torch.Tensor
    """(N, T) response tokens and EOS, then padding."""
    response_mask: torch.Tensor
    """(N, T) float, 1 on the response and its EOS."""


def encode_responses(
    stack: PolicyStack, prompts: Sequence[Conversation], responses: Sequence[str], max_length: int
) -> EncodedResponses:
    """Token ids of each templated prompt followed by its response and EOS (at most `max_length`),
    on the stack's device."""
    tokenizer = stack.tokenizer
    response_lists = [tokenizer(r, add_special_tokens=False).input_ids[: max_length - 1]
                      + [tokenizer.eos_token_id] for r in responses]
    width = max(len(r) for r in response_lists)
    texts = [tokenizer.apply_chat_template([dict(m) for m in p], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    prompt_budget = max(1, max_length - width)
    prompts_batch = tokenizer(texts, add_special_tokens=False, padding=True, truncation=True,
                              max_length=prompt_budget, return_tensors="pt")
    response_ids, response_mask = pad_right(response_lists, tokenizer.pad_token_id)
    device = stack.device
    return EncodedResponses(
        input_ids=torch.cat([prompts_batch.input_ids, response_ids], 1).to(device),
        attention_mask=torch.cat([prompts_batch.attention_mask, response_mask], 1).to(device),
        prompt_width=prompts_batch.input_ids.shape[1],
        response_ids=response_ids.to(device),
        response_mask=response_mask.float().to(device),
    )


def sequence_logprobs(logits: torch.Tensor, encoded: EncodedResponses) -> torch.Tensor:
    """(N,) Σ_t log π(y_t | x, y_<t) over each response's tokens, from (N, T, V) logits."""
    return (token_logprobs(logits, encoded.response_ids) * encoded.response_mask).sum(1)


class DPOTrainer:
    """Trains `stack`'s policy adapter on preference pairs against its frozen reference."""

    def __init__(self, stack: PolicyStack, settings: DPOSettings, record: RunRecord | None = None) -> None:
        self.stack = stack
        self.settings = settings
        self.record = record or RunRecord(None, "dpo")
        params = [p for p in stack.peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
        self.params = params
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.micro_batch = ShrinkingMicroBatch(
            settings.micro_batch_size or settings.batch_size, minimum=1, unit="pairs",
            advice="lower HHH_DPO_MAX_LENGTH, set HHH_TRAINER_GRADIENT_CHECKPOINTING=true, or use "
            "a GPU with more memory")

    def _encode(self, pairs: Sequence[TextPair]) -> EncodedResponses:
        """Winners first, then losers: rows i and i + len(pairs) belong to pair i."""
        prompts = [p.prompt for p in pairs] * 2
        responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        return encode_responses(self.stack, prompts, responses, self.settings.max_length)

    @torch.no_grad()
    def reference_logprobs(self, pairs: Sequence[TextPair]) -> torch.Tensor:
        """(2, B) reference log-probabilities of winners (row 0) and losers (row 1)."""
        out = []
        size = 4 * self.settings.batch_size  # no activations kept: larger batches are cheap
        for start in range(0, len(pairs), size):
            encoded = self._encode(pairs[start : start + size])
            logits = self.stack.reference_logits(encoded.input_ids, encoded.attention_mask,
                                                 encoded.prompt_width)
            out.append(sequence_logprobs(logits, encoded).view(2, -1))
        return torch.cat(out, dim=1)

    def policy_logprobs(self, pairs: Sequence[TextPair]) -> torch.Tensor:
        """(2, B) policy log-probabilities of winners and losers (with gradients)."""
        encoded = self._encode(pairs)
        logits, _ = causal_lm_outputs(self.stack.decoder, encoded.input_ids, encoded.attention_mask,
                                      encoded.prompt_width)
        return sequence_logprobs(logits, encoded).view(2, -1)

    def train(self, pairs: Sequence[TextPair], *,
              pause: Callable[[str], object] | None = None) -> list[dict[str, Any]]:
        """`epochs` passes over `pairs` in shuffled mini-batches; one record entry per epoch.

        ``pause``: called before each epoch with its name (`trainer.chat_yield`).
        """
        if not pairs:
            raise ValueError("no preference pairs to train on")
        s = self.settings
        reference = self.reference_logprobs(pairs)
        # Eval mode throughout: no dropout in the adapters, none wanted in the frozen base.
        self.stack.peft_model.eval()
        history = []
        for epoch in range(1, s.epochs + 1):
            if pause is not None:
                pause(f"DPO epoch {epoch}")
            started = time.perf_counter()
            losses, margins, correct = [], [], 0
            for rows in torch.randperm(len(pairs), generator=self.generator).split(s.batch_size):
                self.optimizer.zero_grad(set_to_none=True)
                with checkpointing_active(self.stack.decoder):
                    loss, batch_margins = self.micro_batch.run(
                        partial(self._accumulate, pairs, reference, rows),
                        discard=lambda: self.optimizer.zero_grad(set_to_none=True))
                torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm)
                self.optimizer.step()
                losses.append(loss)
                margins += batch_margins.tolist()
                correct += int((batch_margins > 0).sum())
            metrics = {"epoch": epoch, "loss": sum(losses) / len(pairs),
                       "reward_margin": sum(margins) / len(margins), "accuracy": correct / len(pairs),
                       "pairs_per_s": len(pairs) / (time.perf_counter() - started)}
            self.record.write(metrics)
            history.append(metrics)
        return history

    def _accumulate(
        self, pairs: Sequence[TextPair], reference: torch.Tensor, rows: torch.Tensor, size: int
    ) -> tuple[float, torch.Tensor]:
        """Gradients of the weighted mean loss over the pairs `rows`, `size` pairs per pass;
        returns that mean × the number of pairs and the (B,) implicit reward margins."""
        loss_sum, margins = 0.0, []
        weights = torch.tensor([pairs[i].weight for i in rows.tolist()], dtype=torch.float32)
        for start, micro in zip(range(0, len(rows), size), rows.split(size)):
            policy = self.policy_logprobs([pairs[i] for i in micro.tolist()])
            micro_weights = weights[start : start + len(micro)]
            result = dpo_loss(policy[0], policy[1], reference[0, micro], reference[1, micro],
                              self.settings.beta, micro_weights.to(policy.device))
            share = micro_weights.sum() / weights.sum().clamp_min(1e-12)
            (result.loss * share).backward()
            loss_sum += result.loss.item() * share.item() * len(rows)
            margins.append(result.margins)
        return loss_sum, torch.cat(margins)


def load_dpo_stack(
    base_dir: Path, global_adapter: Path | None, settings: DPOSettings, placement: Placement = CPU
) -> PolicyStack:
    """Policy = trainable copy of the global adapter; reference = the global adapter, frozen."""
    config = lora_config(settings.lora_rank, settings.lora_alpha, settings.lora_target_modules)
    return load_policy_stack(base_dir, global_adapter, config, seed=settings.seed, placement=placement)
