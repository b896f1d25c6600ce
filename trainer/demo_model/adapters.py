"""LoRA adapters with random weights for a base model: stand-ins for trained adapters where
only their shape and their effect on the outputs matter (tests of the adapter store and hot
swap, the hot-swap benchmark)."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def make_lora_adapter(
    base_model_dir: Path, out_dir: Path, *, seed: int, rank: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj"), trained: bool = True,
) -> Path:
    """Save a PEFT LoRA adapter of ``base_model_dir`` to ``out_dir``.

    ``trained``: random non-zero A and B (the adapter changes the model's outputs, as a trained
    one does); False keeps PEFT's default init (B = 0), which serves exactly the base model.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                        init_lora_weights=not trained)
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir
