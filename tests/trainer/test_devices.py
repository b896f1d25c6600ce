"""Device and dtype resolution, and the micro-batch that halves on a GPU out-of-memory error."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from common.errors import UserError
from trainer.config import TrainerSettings
from trainer.devices import ShrinkingMicroBatch, placement_of, resolve_placement


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int, *, bf16: bool = True) -> None:
    """Make torch report ``count`` CUDA GPUs without touching any; without native bf16 they
    still emulate it, as pre-Ampere GPUs do (torch's default answer is then True)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "device", lambda *_: contextlib.nullcontext())


def test_auto_is_the_cpu_in_float32_where_there_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 0)
    placement = placement_of(TrainerSettings())
    assert (placement.device, placement.dtype, placement.gradient_checkpointing) == (
        torch.device("cpu"), torch.float32, False)


@pytest.mark.parametrize(("bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_is_the_first_gpu_in_bf16_where_it_supports_it(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, dtype: torch.dtype
) -> None:
    fake_gpus(monkeypatch, 2, bf16=bf16)
    placement = resolve_placement("auto", "auto")
    assert (placement.device, placement.dtype) == (torch.device("cuda", 0), dtype)
    assert resolve_placement("cuda:1", "float16").device == torch.device("cuda", 1)


def test_explicit_dtypes_are_kept_on_the_cpu() -> None:
    assert resolve_placement("cpu", "bfloat16").dtype == torch.bfloat16
    assert resolve_placement("cpu", "auto").dtype == torch.float32


@pytest.mark.parametrize(("device", "gpus", "seen"), [("cuda", 0, "no CUDA GPU"), ("cuda:2", 2, "2 CUDA GPU")])
def test_a_gpu_that_is_not_there_is_refused_with_what_to_set(
    monkeypatch: pytest.MonkeyPatch, device: str, gpus: int, seen: str
) -> None:
    fake_gpus(monkeypatch, gpus)
    with pytest.raises(UserError, match=rf"HHH_TRAINER_DEVICE={device} but torch sees {seen}.*"
                                        "HHH_TRAINER_DEVICE=cpu, or auto"):
        resolve_placement(device, "auto")


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 1, bf16=False)
    with pytest.raises(UserError, match="Fake GPU does not compute in it natively.*set HHH_TRAINER_DTYPE=auto"):
        resolve_placement("cuda", "bfloat16")


def test_settings_refuse_a_device_or_dtype_that_is_no_such_thing() -> None:
    with pytest.raises(ValidationError, match="device"):
        TrainerSettings(device="gpu0")
    with pytest.raises(ValidationError, match="dtype"):
        TrainerSettings(dtype="int8")
    with pytest.raises(UserError, match="'tpu' is not a device"):
        resolve_placement("tpu", "auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
def test_hhh_train_with_a_missing_gpu_stops_at_start_up_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HHH_HOME": str(tmp_path), "HHH_TRAINER_DEVICE": "cuda"}
    command = [sys.executable, "-c", "from hhh.cli import main; main()", "train", "--once"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        "hhh train: HHH_TRAINER_DEVICE=cuda but torch sees no CUDA GPU")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "models").exists()  # refused before building the demo model


def test_an_out_of_memory_step_is_retried_with_half_the_micro_batch_then_kept_there() -> None:
    tried, discarded = [], []

    def step(size: int) -> int:
        tried.append(size)
        if size > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return size * 10

    micro = ShrinkingMicroBatch(16, minimum=1, unit="responses", advice="x")
    assert micro.run(step, discard=lambda: discarded.append(True)) == 40
    assert tried == [16, 8, 4] and len(discarded) == 2
    assert micro.run(step, discard=lambda: discarded.append(True)) == 40
    assert tried == [16, 8, 4, 4] and len(discarded) == 2  # the next step starts at the size that fitted


def test_out_of_memory_at_the_smallest_micro_batch_says_what_to_change() -> None:
    def step(size: int) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    micro = ShrinkingMicroBatch(4, minimum=2, unit="tokens", advice="lower HHH_REWARD_MAX_LENGTH")
    with pytest.raises(UserError, match="micro-batches of 2 tokens: lower HHH_REWARD_MAX_LENGTH") as raised:
        micro.run(step, discard=lambda: None)
    assert isinstance(raised.value.__cause__, torch.cuda.OutOfMemoryError)
    with pytest.raises(ValueError, match="below the minimum"):
        ShrinkingMicroBatch(1, minimum=2, unit="tokens", advice="")


def test_other_errors_are_not_retried() -> None:
    tried = []

    def step(size: int) -> None:
        tried.append(size)
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        ShrinkingMicroBatch(8, minimum=1, unit="pairs", advice="").run(step, discard=lambda: None)
    assert tried == [8]


PINNED = """
import os, torch
from trainer.config import TrainerSettings
from trainer.devices import pin_to_cpus
cpus = pin_to_cpus(TrainerSettings())
print(sorted(cpus), sorted(os.sched_getaffinity(0)), torch.get_num_threads())
"""


def test_the_trainer_pins_itself_to_its_cpu_list_with_a_torch_thread_per_cpu() -> None:
    cpu = max(os.sched_getaffinity(0))
    env = {**os.environ, "HHH_TRAINER_CPUS": str(cpu)}
    done = subprocess.run([sys.executable, "-c", PINNED], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("]")[:2] == [f"[{cpu}", f" [{cpu}"]
    assert done.stdout.strip().endswith(" 1")


def test_alone_and_on_auto_the_trainer_is_not_pinned() -> None:
    from trainer.devices import pin_to_cpus

    before = os.sched_getaffinity(0)
    assert pin_to_cpus(TrainerSettings(cpus="auto")) is None
    assert pin_to_cpus(TrainerSettings(cpus="all")) is None
    assert os.sched_getaffinity(0) == before


def test_hhh_train_with_a_cpu_it_may_not_use_stops_at_start_up_saying_which_it_may(tmp_path: Path) -> None:
    env = {**os.environ, "HHH_HOME": str(tmp_path), "HHH_TRAINER_CPUS": "0,4096"}
    command = [sys.executable, "-c", "from hhh.cli import main; main()", "train", "--once"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "HHH_TRAINER_CPUS='0,4096' names CPU(s) 4096 that this process may not use" in done.stderr
    assert not (tmp_path / "models").exists()
