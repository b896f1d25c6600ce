"""Where the trainer computes: device, dtype, gradient checkpointing, and micro-batches that
shrink when the GPU runs out of memory.

`resolve_placement` turns the settings (``HHH_TRAINER_DEVICE``, ``HHH_TRAINER_DTYPE``,
``HHH_TRAINER_GRADIENT_CHECKPOINTING``) into a `Placement` once, at start-up, and every part —
PPO, the reward model (training and scoring), DPO and the gate — uses that one: the reward
model shares the policy's base weights, so they must live on one device anyway.

- device ``auto``: the first CUDA GPU when torch sees one, else the CPU (the only fallback;
  ``cuda``/``cuda:N`` where torch sees no such GPU is an error that says what to set);
- dtype ``auto``: bfloat16 on a GPU that supports it natively, else float32 (always float32
  on CPU);
  float16 only when asked for: without loss scaling (there is none here) small gradients of
  the activations can underflow to zero, which bfloat16's wider exponent avoids;
- mixed precision, by storage rather than by autocast: the frozen base weights are held in
  the dtype (half the memory in bf16), while every trainable tensor — the LoRA adapters (PEFT
  keeps them in float32: ``autocast_adapter_dtype``), value heads and a classifier's score
  head — stays float32, so AdamW's moments are float32 too. Activations flow in the base dtype;
  logits are cast to float32 before any log-softmax, KL, entropy or GAE (`trainer.rl`).
- On the CPU in float32 (the default), nothing is cast or moved: the trainer computes
  bit-for-bit what it computed before this module existed.

CPUs: `pin_to_cpus` pins the trainer to ``HHH_TRAINER_CPUS`` where that is a cpu list (`hhh up`
passes its plan, `common.cpus`, beside the engine) and runs torch on one thread per CPU; the
``threads`` settings of PPO, DPO and the reward model still win for their step. Threads beyond
the CPUs would only take turns on them.

Memory-aware batch sizes: the work of one optimiser step is split into micro-batches whose
gradients add up to the step's exactly (PPO ``micro_batch_size``, DPO ``micro_batch_size``,
the reward model's ``max_tokens_per_forward``). `ShrinkingMicroBatch` runs a step and, on
``torch.cuda.OutOfMemoryError``, frees the step's gradients and cached blocks, halves the
micro-batch and runs the same step again — the same update with less activation memory —
and keeps the smaller size for the rest of the run. At the smallest size the error is
re-raised as a `UserError` naming what to change.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from common.cpus import available_cpus, format_cpu_list, pinned_cpus
from common.errors import UserError
from trainer.config import DEVICE_PATTERN, DtypeSetting, TrainerSettings

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16}

T = TypeVar("T")


@dataclass(frozen=True)
class Placement:
    """The device and dtype of the frozen base weights; trainable tensors are always float32."""

    device: torch.device
    dtype: torch.dtype
    """Of the frozen base weights (and so of the activations)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them."""


CPU = Placement(torch.device("cpu"), torch.float32)
"""The default: what the trainer has always done."""


def placement_of(settings: TrainerSettings) -> Placement:
    """The placement ``HHH_TRAINER_DEVICE``, ``_DTYPE`` and ``_GRADIENT_CHECKPOINTING`` ask for."""
    return resolve_placement(settings.device, settings.dtype, settings.gradient_checkpointing)


def pin_to_cpus(settings: TrainerSettings) -> frozenset[int] | None:
    """Run this process, and torch's intra- and inter-op threads, on ``HHH_TRAINER_CPUS``; the
    CPUs, or None where the setting pins nothing (``auto`` alone, ``all``)."""
    cpus = pinned_cpus(settings.cpus, setting="HHH_TRAINER_CPUS", available=available_cpus())
    if cpus is None:
        return None
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))
    try:
        torch.set_num_interop_threads(len(cpus))
    except RuntimeError:  # only possible before any inter-op work, and only once: keep torch's
        logger.debug("torch's inter-op threads were fixed already; leaving them")
    logger.info("trainer pinned to cpus %s, %d torch threads", format_cpu_list(cpus), len(cpus))
    return cpus


def resolve_placement(device: str, dtype: DtypeSetting, gradient_checkpointing: bool = False) -> Placement:
    """The `Placement` for a device (auto, cpu, cuda, cuda:N) and dtype, or a `UserError` that
    says which setting to change."""
    if not re.fullmatch(DEVICE_PATTERN, device):
        raise UserError(f"HHH_TRAINER_DEVICE={device!r} is not a device; use auto, cpu, cuda or cuda:N")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        resolved = torch.device("cuda", 0) if available else torch.device("cpu")
    else:
        resolved = torch.device(device)
        if resolved.type == "cuda":
            index = resolved.index or 0
            if index >= available:
                seen = f"{available} CUDA GPU(s)" if available else "no CUDA GPU (a CPU-only torch, or no driver)"
                raise UserError(f"HHH_TRAINER_DEVICE={device} but torch sees {seen}; set "
                                "HHH_TRAINER_DEVICE=cpu, or auto to use a GPU only where there is one")
            resolved = torch.device("cuda", index)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if resolved.type == "cuda" and _native_bf16(resolved) else torch.float32
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise UserError(f"HHH_TRAINER_DTYPE={dtype!r} is not a dtype; use auto, {', '.join(DTYPES)}")
    if resolved.type == "cuda" and torch_dtype == torch.bfloat16 and not _native_bf16(resolved):
        raise UserError(f"HHH_TRAINER_DTYPE=bfloat16 but {torch.cuda.get_device_name(resolved)} does not "
                        "compute in it natively (it would be emulated, slower than float32); set "
                        "HHH_TRAINER_DTYPE=auto or float32")
    return Placement(resolved, torch_dtype, gradient_checkpointing)


def _native_bf16(device: torch.device) -> bool:
    """Whether that GPU computes in bfloat16 natively (Ampere or later, or ROCm); torch's default
    answer also counts emulated bf16, which is slower than float32."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def keep_trainable_float32(model: nn.Module) -> None:
    """Cast every module that owns a trainable non-float32 parameter (a classifier's score head,
    say; PEFT already keeps LoRA weights in float32) to float32, with a hook that casts its
    floating-point inputs to float32 (its output is float32 from then on)."""
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad and p.dtype != torch.float32]
        if own:
            module.float()
            module.register_forward_pre_hook(_inputs_to_float32)


def _inputs_to_float32(_: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on transformers' gradient checkpointing of each decoder layer (non-reentrant).

    Non-reentrant checkpointing propagates gradients to the LoRA weights inside a layer even
    when the layer's input does not require grad; transformers also calls
    ``enable_input_require_grads`` (the embeddings' output requires grad), which the reentrant
    variant needs with a frozen base. It takes effect only within `checkpointing_active`.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@contextmanager
def checkpointing_active(model: nn.Module) -> Iterator[None]:
    """Within: decoder layers with checkpointing enabled recompute their activations.

    transformers checkpoints a layer only in training mode, and the trainers run the frozen
    base in eval mode (dropout would make the update's log-probabilities differ from the
    rollout's). So only the checkpointed layers themselves are flagged as training — their
    submodules (attention, MLP, any dropout) stay in eval mode — and only for the passes with
    gradients; sampling keeps its KV cache.
    """
    layers = [m for m in model.modules()
              if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    saved = [m.training for m in layers]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer, mode in zip(layers, saved):
            layer.training = mode


class ShrinkingMicroBatch:
    """A micro-batch size that halves when a step runs out of GPU memory (module docstring)."""

    def __init__(self, size: int, *, minimum: int, unit: str, advice: str) -> None:
        """``size``: the configured micro-batch (``unit``: responses, pairs or tokens); never
        below ``minimum``; ``advice``: what to change when even ``minimum`` does not fit."""
        if size < minimum:
            raise ValueError(f"a micro-batch of {size} {unit} is below the minimum {minimum}")
        self.size = size
        self.minimum = minimum
        self.unit = unit
        self.advice = advice

    def run(self, step: Callable[[int], T], *, discard: Callable[[], None]) -> T:
        """``step(size)``; after an out-of-memory error ``discard()`` (the step's partial
        gradients), free the allocator's cache, halve the size and run the step again."""
        while True:
            try:
                return step(self.size)
            except torch.cuda.OutOfMemoryError as error:
                if self.size <= self.minimum:
                    raise UserError(f"out of GPU memory with micro-batches of {self.size} {self.unit}: "
                                    f"{self.advice}") from error
            # Outside the handler: the failed step's frames (and their activations) are released.
            discard()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            smaller = max(self.minimum, self.size // 2)
            logger.warning("out of GPU memory with micro-batches of %d %s; retrying the step with %d",
                           self.size, self.unit, smaller)
            self.size = smaller
