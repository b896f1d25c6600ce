"""The reward model over a bfloat16 base (on the CPU, slowly), and its token budget halving on a
simulated GPU out-of-memory error without changing the step."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from tests.trainer.reward.test_model import sequences
from trainer.config import RewardSettings
from trainer.devices import CPU, Placement
from trainer.reward import train as reward_train
from trainer.reward.model import RewardModel
from trainer.reward.train import EncodedPair, rewards_of, train_pairs
from trainer.tokens import load_tokenizer

BF16 = Placement(torch.device("cpu"), torch.bfloat16, gradient_checkpointing=True)
SETTINGS = RewardSettings(batch_size=4, learning_rate=1e-2, epochs=1)


def encoded_pairs(model_dir: Path, count: int) -> list[EncodedPair]:
    seqs = sequences(model_dir, 2 * count)
    return [EncodedPair(seqs[2 * i], seqs[2 * i + 1], 1.0) for i in range(count)]


@pytest.mark.parametrize("kind", ["value_head", "sequence_classifier"])
def test_a_bf16_reward_step_has_a_finite_loss_and_moves_only_float32_weights(tiny_model_dir: Path, kind: str) -> None:
    model = RewardModel.create(tiny_model_dir, kind, SETTINGS, BF16)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and {p.dtype for p in before.values()} == {torch.float32}
    pad_id = load_tokenizer(tiny_model_dir, padding_side="right").pad_token_id
    pairs = encoded_pairs(tiny_model_dir, 8)

    loss = train_pairs(model, pairs, SETTINGS, epochs=1, pad_id=pad_id, progress=False)

    assert math.isfinite(loss)
    after = dict(model.named_parameters())
    assert all(after[n].dtype == torch.float32 and not torch.equal(after[n], b) for n, b in before.items())
    rewards = rewards_of(model, [p.chosen for p in pairs], pad_id, batch_size=4)  # checkpointed, no grad
    assert rewards.dtype == torch.float32 and rewards.device.type == "cpu" and rewards.isfinite().all()


def test_an_out_of_memory_reward_step_halves_the_token_budget_and_takes_the_same_step(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Forward passes of more than 4 sequences run out of memory: the budget halves until the
    micro-batches fit, and the step equals the one taken in a single pass without the error."""
    monkeypatch.setattr(reward_train.torch.optim, "AdamW", torch.optim.SGD)  # the step is the gradient
    pad_id = load_tokenizer(tiny_model_dir, padding_side="right").pad_token_id
    pairs = encoded_pairs(tiny_model_dir, 4)
    settings = SETTINGS.model_copy(update={"max_tokens_per_forward": 4096})
    steps = []
    for fail in (False, True):
        model = RewardModel.create(tiny_model_dir, "value_head", settings, CPU)
        with torch.no_grad():  # non-zero B, so that every LoRA weight gets a gradient
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.01, generator=torch.Generator().manual_seed(len(name)))
        forward, rows_seen = model.forward, []

        def running_out_of_memory(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            rows_seen.append(len(input_ids))
            if fail and torch.is_grad_enabled() and len(input_ids) > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return forward(input_ids, attention_mask)

        model.forward = running_out_of_memory  # type: ignore[method-assign]
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        with caplog.at_level(logging.WARNING, logger="trainer.devices"):
            train_pairs(model, pairs, settings, epochs=1, pad_id=pad_id, progress=False)
        steps.append({n: p.detach() - before[n] for n, p in model.named_parameters() if p.requires_grad})
        assert rows_seen[-1] <= 4 < rows_seen[0] == 8 if fail else rows_seen == [8]
    assert "out of GPU memory with micro-batches of 4096 tokens; retrying the step with 2048" in caplog.text
    for name, step in steps[0].items():
        assert step.abs().sum() > 0, name
        torch.testing.assert_close(steps[1][name], step, atol=1e-6, rtol=1e-4)
