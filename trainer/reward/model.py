"""The reward model r(x, y): a scalar per (prompt, completion) sequence.

Two kinds, chosen by configuration (``RewardSettings``):

- ``value_head`` (default): the policy's base causal LM with its own LoRA adapter, named
  ``reward``, and a linear value head on the hidden state of the last non-pad token. The base
  weights stay frozen, so the PPO trainer can load this adapter into the very ``PeftModel``
  that holds its policy adapter (``RewardModel.attach``) and keep one copy of the base in memory.
- ``sequence_classifier``: any Hugging Face sequence-classification checkpoint with one label;
  its body gets the LoRA adapter and its score head is trained with it (PEFT ``modules_to_save``).

A sequence is the chat-templated prompt (with the generation prompt), the completion and EOS,
exactly what the policy sees and emits; sequences longer than ``max_length`` lose the start of
the prompt, so the completion and its last token are always kept.

The base sits on a `trainer.devices.Placement` (its dtype: bfloat16 on a GPU by default); the
adapter and the value or score head stay float32, and the last hidden state is cast to float32
before the value head, so rewards are float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerBase

from trainer.config import RewardSettings
from trainer.devices import CPU, Placement, enable_gradient_checkpointing, keep_trainable_float32
from trainer.heads import load_value_head, save_value_head

REWARD_ADAPTER = "reward"
"""The PEFT adapter name of the reward model (also its sub-folder in a saved version)."""

ModelKind = Literal["value_head", "sequence_classifier"]
Message = Mapping[str, str]
"""A chat message: ``{"role": ..., "content": ...}``."""


def encode(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    completion: str,
    max_length: int,
) -> list[int]:
    """Token ids of the templated prompt, the completion and EOS; the last ``max_length``."""
    prompt = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
    return (prompt_ids + completion_ids + [tokenizer.eos_token_id])[-max_length:]


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) position of each row's last non-pad token, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (attention_mask * positions).argmax(dim=1)


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """Whether each row of the (B, T) mask is ones then zeros."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    prefix = positions[None, :] < attention_mask.sum(dim=1, keepdim=True)  # (B, T)
    return torch.equal(prefix, attention_mask.bool())


class RewardModel(nn.Module):
    """r(x, y) = value_head(h_last) over the ``reward`` adapter, or a classifier's logit."""

    def __init__(self, backbone: PeftModel, value_head: nn.Linear | None, kind: ModelKind) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = value_head
        self.kind = kind

    @property
    def device(self) -> torch.device:
        """Where the model is, and so where its batches go."""
        return next(self.backbone.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B,) rewards."""
        with self._reward_adapter_active():
            if self.value_head is None:
                return self.backbone(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                ).logits[:, 0]
            # The decoder alone: the language-model head's (B, T, V) logits are not needed. With
            # right padding, causal attention never lets a real token see a pad token, so no
            # padding mask is needed: attention takes its fused causal path, no (B, 1, T, T) mask.
            decoder = self.backbone.get_base_model().get_decoder()
            hidden = decoder(
                input_ids=input_ids,
                attention_mask=None if is_right_padded(attention_mask) else attention_mask,
                use_cache=False,
            ).last_hidden_state  # (B, T, H)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            last_hidden = hidden[rows, last_token_index(attention_mask)]  # (B, H)
            return self.value_head(last_hidden.to(self.value_head.weight.dtype)).squeeze(-1)  # (B,)

    @contextmanager
    def _reward_adapter_active(self) -> Iterator[None]:
        """Make ``reward`` the active adapter for one call, then restore the caller's (the
        policy's, when the base is shared)."""
        previous = self.backbone.active_adapter
        if previous == REWARD_ADAPTER:
            yield
            return
        self.backbone.set_adapter(REWARD_ADAPTER)
        try:
            yield
        finally:
            self.backbone.set_adapter(previous)

    def train(self, mode: bool = True) -> RewardModel:
        """Training mode for the adapter's dropout only: the frozen base stays in eval mode, since
        its own dropout (if its config has any) would train the model on noisier scores than it
        gives when scoring."""
        super().train(False)
        for name, module in self.named_modules():
            if name.endswith("lora_dropout"):  # PEFT's per-adapter dropout modules
                module.train(mode)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter's parameters (and the value or score head): all that training changes."""
        return [p for p in self.parameters() if p.requires_grad]

    def save(self, folder: Path) -> None:
        """Write the adapter to ``folder/reward/`` and the value head beside it."""
        self.backbone.save_pretrained(str(folder), selected_adapters=[REWARD_ADAPTER])
        if self.value_head is not None:
            save_value_head(self.value_head, folder)

    @classmethod
    def create(
        cls, model_path: Path, kind: ModelKind, settings: RewardSettings, placement: Placement = CPU
    ) -> RewardModel:
        """A fresh adapter (and value head) on the frozen model at ``model_path``."""
        lora = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=list(settings.lora_target_modules),
            task_type="SEQ_CLS" if kind == "sequence_classifier" else None,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            base = _load_base(model_path, kind, placement)
            backbone = get_peft_model(base, lora, adapter_name=REWARD_ADAPTER)
            value_head = _new_value_head(base.config.hidden_size) if kind == "value_head" else None
        return cls._placed(backbone, value_head, kind, placement)

    @classmethod
    def load(
        cls, version_dir: Path, model_path: Path, kind: ModelKind, *, trainable: bool,
        placement: Placement = CPU,
    ) -> RewardModel:
        """The model saved in ``version_dir`` on a fresh copy of the base at ``model_path``."""
        backbone = PeftModel.from_pretrained(
            _load_base(model_path, kind, placement), str(version_dir / REWARD_ADAPTER),
            adapter_name=REWARD_ADAPTER, is_trainable=trainable,
        )
        value_head = load_value_head(version_dir) if kind == "value_head" else None
        if value_head is not None:
            value_head.requires_grad_(trainable)
        return cls._placed(backbone, value_head, kind, placement)

    @classmethod
    def _placed(
        cls, backbone: PeftModel, value_head: nn.Linear | None, kind: ModelKind, placement: Placement
    ) -> RewardModel:
        """The model with its head on the base's device, every trainable tensor float32, and
        gradient checkpointing on where the placement asks for it."""
        if value_head is not None:
            value_head.to(placement.device)
        keep_trainable_float32(backbone)  # a classifier's score head (modules_to_save) in bf16
        if placement.gradient_checkpointing:
            enable_gradient_checkpointing(backbone.get_base_model())
        return cls(backbone, value_head, kind)

    @classmethod
    def attach(cls, peft_model: PeftModel, version_dir: Path) -> RewardModel:
        """The saved ``value_head`` reward model as a frozen ``reward`` adapter inside
        ``peft_model`` (e.g. the PPO policy's), sharing its base weights."""
        peft_model.load_adapter(str(version_dir / REWARD_ADAPTER), adapter_name=REWARD_ADAPTER)
        value_head = load_value_head(version_dir).to(next(peft_model.parameters()).device)
        value_head.requires_grad_(False)
        return cls(peft_model, value_head, "value_head")


def _load_base(model_path: Path, kind: ModelKind, placement: Placement) -> nn.Module:
    if kind == "sequence_classifier":
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_path), num_labels=1, dtype=placement.dtype
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=placement.dtype)
    return model.to(placement.device)


def _new_value_head(hidden_size: int) -> nn.Linear:
    # No bias: the pairwise loss only sees reward differences, so a bias gets no gradient (only
    # rounding noise, which Adam would blow up to full-size steps); the offset is normalised away.
    head = nn.Linear(hidden_size, 1, bias=False)
    nn.init.normal_(head.weight, std=1 / (hidden_size + 1) ** 0.5)
    return head
