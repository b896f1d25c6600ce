"""The models PPO and DPO train: one base, a trainable policy adapter, a frozen reference.

By default (``share_base``) the policy and the reference are two named PEFT adapters inside
one `PeftModel`, so the base weights exist once in memory:

- ``policy``: the trainable LoRA adapter (started from the deployed adapter, or fresh);
- ``reference``: the deployed adapter, frozen (absent on the first round: the reference is then
  the base model itself, the policy adapter disabled);
- the value head: a linear layer on the policy's last hidden state (one forward pass gives the
  policy's logits and its values);
- the reward model can join as one more frozen adapter (`trainer.reward.model.RewardModel.attach`).

With ``share_base=False`` the reference is a separate copy of the base with the deployed
adapter merged into it, as most RLHF code keeps it; it exists to measure what sharing saves.

Everything lives on one `trainer.devices.Placement`: the base in its dtype (bfloat16 on a GPU
by default), the adapters and the value head in float32; hidden states are cast to float32
before the value head, logits before any log-softmax.

Sequences are laid out as a left-padded prompt block of width P followed by a right-padded
response block of width T; the logits and values for response token t are read at position
P − 1 + t (the state before the token).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from trainer.devices import CPU, Placement, enable_gradient_checkpointing
from trainer.heads import VALUE_HEAD_FILE, load_value_head, save_value_head
from trainer.tokens import load_tokenizer

POLICY_ADAPTER = "policy"
REFERENCE_ADAPTER = "reference"


def lora_config(rank: int, alpha: float, target_modules: list[str]) -> LoraConfig:
    """A causal-LM LoRA config without dropout (dropout would make log-probs stochastic)."""
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules),
                      task_type="CAUSAL_LM")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) positions counted from each row's first real token, as `generate` numbers them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def causal_lm_outputs(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
    value_head: nn.Linear | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (B, T, V) and optional values (B, T) for the T tokens after the prompt block.

    `model` is a causal LM with ``.model`` (the decoder) and ``.lm_head``; the LM head runs on
    the response positions only. Logits come in the model's dtype, values in the head's.
    """
    hidden = model.model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
        use_cache=False,
    ).last_hidden_state[:, prompt_width - 1 : -1]  # (B, T, H)
    logits = model.lm_head(hidden)
    values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1) if value_head is not None else None
    return logits, values


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits) at `tokens`: (B, T) from (B, T, V) logits and (B, T) token ids.

    Computed as z_y − logsumexp(z), which never materialises the (B, T, V) log-softmax.
    """
    logits = logits.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


@dataclass
class PolicyStack:
    """Policy adapter + value head (trainable), and the frozen reference, over one tokenizer."""

    peft_model: PeftModel
    value_head: nn.Linear
    tokenizer: PreTrainedTokenizerBase
    reference_adapter: str | None
    """Adapter of `peft_model` that is the reference; None: the base (adapters disabled)."""
    separate_reference: PreTrainedModel | None = None
    """A separate reference model (``share_base=False``); then `reference_adapter` is unused."""
    placement: Placement = CPU
    """Device and base dtype of every model of the stack."""

    @property
    def device(self) -> torch.device:
        """Where the stack's models are, and so where its batches go."""
        return self.placement.device

    @property
    def decoder(self) -> PreTrainedModel:
        """The causal LM with the LoRA layers injected (the policy when ``policy`` is active)."""
        return self.peft_model.get_base_model()

    def policy_outputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy logits (B, T, V) and values (B, T) of the response block."""
        logits, values = causal_lm_outputs(self.decoder, input_ids, attention_mask, prompt_width,
                                           self.value_head)
        assert values is not None
        return logits, values

    @torch.no_grad()
    def reference_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int
    ) -> torch.Tensor:
        """Reference logits (B, T, V) of the response block."""
        if self.separate_reference is not None:
            return causal_lm_outputs(self.separate_reference, input_ids, attention_mask, prompt_width)[0]
        with self.reference_active():
            return causal_lm_outputs(self.decoder, input_ids, attention_mask, prompt_width)[0]

    @torch.no_grad()
    def base_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int
    ) -> torch.Tensor:
        """The base model's logits (B, T, V) of the response block: every adapter disabled."""
        if self.separate_reference is not None:
            raise ValueError("base logits come from the shared base; load the stack with share_base=True")
        with self.peft_model.disable_adapter():
            return causal_lm_outputs(self.decoder, input_ids, attention_mask, prompt_width)[0]

    @contextmanager
    def reference_active(self) -> Iterator[None]:
        """Within: the shared model computes the reference; after: the policy again (trainable)."""
        if self.reference_adapter is None:
            with self.peft_model.disable_adapter():
                yield
            return
        # inference_mode: switching adapters must not mark the reference trainable.
        self.peft_model.set_adapter(self.reference_adapter, inference_mode=True)
        try:
            yield
        finally:
            self.peft_model.set_adapter(POLICY_ADAPTER)

    @contextmanager
    def merged_policy(self) -> Iterator[None]:
        """Within: the policy runs as plain linear layers with W + ΔW, for fast sampling.

        A LoRA layer costs three matmuls and PEFT's bookkeeping per call; merged, one. The merged
        weights are new tensors, held only within (one extra copy of the adapted layers, freed
        after); the base weights are never written, so they stay bit-for-bit what they were.
        Only the policy can be merged: within `reference_active` it raises (the merge would
        silently sample the policy where the reference was meant).
        """
        layers = [m for m in self.peft_model.modules() if isinstance(m, LoraLayer)]
        if self.peft_model.active_adapter != POLICY_ADAPTER or any(m.disable_adapters for m in layers):
            raise RuntimeError("merged_policy samples the policy adapter, but the reference is active; "
                               "sample the reference through its adapter (merged=False)")
        swapped = []
        with torch.no_grad():
            for module in layers:
                if POLICY_ADAPTER in module.lora_A:
                    base = module.get_base_layer()
                    # ΔW is float32 (the adapter's dtype); the merged copy takes the base's.
                    merged = (base.weight + module.get_delta_weight(POLICY_ADAPTER)).to(base.weight.dtype)
                    swapped.append((base, base.weight))
                    base.weight = nn.Parameter(merged, requires_grad=False)
        try:
            with self.peft_model.disable_adapter():
                yield
        finally:
            for base, original in swapped:
                base.weight = original

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The policy adapter's and the value head's parameters."""
        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        return params + list(self.value_head.parameters())

    def save_policy(self, out_dir: Path) -> None:
        """Write the policy adapter (PEFT format, loadable by vLLM) and the value head to `out_dir`
        (so that the next round can start from a trained value head)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
            self.peft_model.save_pretrained(tmp, selected_adapters=[POLICY_ADAPTER])
            for item in (Path(tmp) / POLICY_ADAPTER).iterdir():
                shutil.move(str(item), out_dir / item.name)
        save_value_head(self.value_head, out_dir)


def load_frozen_base(model_dir: Path, placement: Placement = CPU) -> PreTrainedModel:
    """The base causal LM on the placement's device and in its dtype, eval mode, every weight frozen."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=placement.dtype)
    model.requires_grad_(False)
    return model.to(placement.device).eval()


def load_policy_stack(
    base_dir: Path,
    deployed_adapter: Path | None,
    config: LoraConfig,
    *,
    share_base: bool = True,
    seed: int = 0,
    placement: Placement = CPU,
    resume: Path | None = None,
) -> PolicyStack:
    """Policy, reference and value head for a round whose reference is `deployed_adapter`.

    The policy starts as a trainable copy of the deployed adapter (with its saved value head, if
    any) or, on the first round, as a fresh LoRA adapter (`config`) that leaves the base unchanged;
    with `resume` (a folder `PolicyStack.save_policy` wrote: a refused candidate kept by
    `trainer.unproven`), as a copy of that one instead, the reference still the deployed adapter.
    PEFT keeps the adapters in float32 over a bfloat16 or float16 base (``autocast_adapter_dtype``).
    """
    base = load_frozen_base(base_dir, placement)
    start = resume or deployed_adapter
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if start is None:
            peft_model = get_peft_model(base, config, adapter_name=POLICY_ADAPTER)
        else:
            peft_model = PeftModel.from_pretrained(base, str(start), adapter_name=POLICY_ADAPTER,
                                                   is_trainable=True)
        # Zero at first: random values would drown the score in the first advantages.
        value_head = nn.Linear(base.config.hidden_size, 1)
        nn.init.zeros_(value_head.weight)
        nn.init.zeros_(value_head.bias)
    if start is not None and (start / VALUE_HEAD_FILE).is_file():
        value_head.load_state_dict(load_value_head(start).state_dict())
    value_head.to(placement.device)
    if placement.gradient_checkpointing:
        enable_gradient_checkpointing(base)
    reference_adapter, separate = None, None
    if not share_base:
        separate = load_frozen_base(base_dir, placement)
        if deployed_adapter is not None:
            separate = PeftModel.from_pretrained(separate, str(deployed_adapter)).merge_and_unload()
            separate.requires_grad_(False)
    elif deployed_adapter is not None:
        peft_model.load_adapter(str(deployed_adapter), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        reference_adapter = REFERENCE_ADAPTER
    peft_model.set_adapter(POLICY_ADAPTER)
    return PolicyStack(peft_model, value_head, load_tokenizer(base_dir, padding_side="left"),
                       reference_adapter, separate, placement)
