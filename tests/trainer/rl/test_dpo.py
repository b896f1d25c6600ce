"""DPO of a per-user adapter from the global one, on synthetic preference pairs."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from tests.trainer.rl.helpers import write_deployed_adapter
from trainer.config import DPOSettings
from trainer.demo_model.corpus import Dialogue, generate_dialogues, heldout_prompts
from trainer.rl.dpo import DPOTrainer, TextPair, load_dpo_stack
from trainer.rl.losses import dpo_loss
from trainer.rl.models import POLICY_ADAPTER, REFERENCE_ADAPTER
from trainer.rl.record import RunRecord


def polite_over_rude_pairs(dialogues: list[Dialogue], prompts: list[tuple[str, str]]) -> list[TextPair]:
    """For each (intent, user text): a polite reply of that intent preferred over a rude one."""
    replies: dict[tuple[str, str], list[str]] = defaultdict(list)
    for d in dialogues:
        replies[d.intent, d.style].append(d.response)
    pairs = []
    for i, (intent, user) in enumerate(prompts):
        polite, rude = replies[intent, "polite"], replies[intent, "rude"]
        if polite and rude:
            pairs.append(TextPair([{"role": "user", "content": user}],
                                        polite[i % len(polite)], rude[i % len(rude)]))
    return pairs


@pytest.fixture(scope="module")
def global_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_deployed_adapter(tiny_model_dir, tmp_path_factory.mktemp("global"))


def test_dpo_raises_the_implicit_reward_margin_on_heldout_pairs(
    tiny_model_dir: Path, global_adapter: Path, tmp_path: Path
) -> None:
    corpus = generate_dialogues(600, seed=3)
    train = polite_over_rude_pairs(corpus, [(d.intent, d.messages[-1]["content"]) for d in corpus[:64]])
    heldout = polite_over_rude_pairs(generate_dialogues(600, seed=4),
                                     [(p.intent, p.user) for p in heldout_prompts()])
    assert len(train) >= 32 and len(heldout) >= 32
    settings = DPOSettings(batch_size=8, epochs=2, learning_rate=5e-3, max_length=128)
    stack = load_dpo_stack(tiny_model_dir, global_adapter, settings)
    reference = {n: p.detach().clone() for n, p in stack.peft_model.named_parameters()
                 if f".{REFERENCE_ADAPTER}." in n or "lora_" not in n}
    policy = {n: p.detach().clone() for n, p in stack.peft_model.named_parameters()
              if f".{POLICY_ADAPTER}." in n}
    trainer = DPOTrainer(stack, settings, RunRecord(tmp_path / "dpo.jsonl", "dpo"))

    before = implicit_reward_margins(trainer, heldout)
    history = trainer.train(train)
    after = implicit_reward_margins(trainer, heldout)

    assert before["reward_margin"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the global adapter
    assert after["reward_margin"] > 0.3 and after["accuracy"] >= 0.8, (before, after)
    assert history[-1]["loss"] < history[0]["loss"]
    params = dict(stack.peft_model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in reference.items())
    assert all(not torch.equal(params[n], p) for n, p in policy.items())
    entries = [json.loads(line) for line in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in entries] == [1, 2] and all("reward_margin" in e for e in entries)

    stack.save_policy(tmp_path / "user-ann")
    reloaded = DPOTrainer(load_dpo_stack(tiny_model_dir, tmp_path / "user-ann", settings), settings)
    assert reloaded.reference_logprobs(heldout[:4]) == pytest.approx(
        _policy_logprobs(trainer, heldout[:4]), abs=1e-3)


def implicit_reward_margins(trainer: DPOTrainer, pairs: list[TextPair]) -> dict[str, float]:
    """Mean implicit reward margin β·((π_w − ref_w) − (π_l − ref_l)) on `pairs`, and the share
    of pairs where it is positive (accuracy)."""
    reference = trainer.reference_logprobs(pairs)
    policy = _policy_logprobs(trainer, pairs)
    margins = dpo_loss(policy[0], policy[1], reference[0], reference[1], trainer.settings.beta).margins
    return {"reward_margin": margins.mean().item(), "accuracy": (margins > 0).float().mean().item()}


def _policy_logprobs(trainer: DPOTrainer, pairs: list[TextPair]) -> torch.Tensor:
    with torch.no_grad():
        return trainer.policy_logprobs(pairs)


def test_dpo_without_pairs_is_refused(tiny_model_dir: Path) -> None:
    settings = DPOSettings()
    with pytest.raises(ValueError, match="no preference pairs"):
        DPOTrainer(load_dpo_stack(tiny_model_dir, None, settings), settings).train([])


def test_dpo_weighs_pairs_by_their_weight(tiny_model_dir: Path, global_adapter: Path) -> None:
    """The gradient of a step on [A, B with weight 0] is the gradient on [A] alone; a weight-2
    pair counts as that pair twice (one pair per forward pass: no padding between them)."""
    dialogues = generate_dialogues(400, seed=3)
    a, b = polite_over_rude_pairs(dialogues, [(p.intent, p.user) for p in heldout_prompts()[:12]])[:2]

    def gradient(pairs: list[TextPair]) -> torch.Tensor:
        settings = DPOSettings(epochs=1, batch_size=len(pairs), micro_batch_size=1, seed=0)
        stack = load_dpo_stack(tiny_model_dir, global_adapter, settings)
        DPOTrainer(stack, settings).train(pairs)  # one batch: its gradient stays in .grad
        return torch.cat([p.grad.flatten() for p in stack.peft_model.parameters() if p.grad is not None])

    def weighted(pair: TextPair, weight: float) -> TextPair:
        return TextPair(pair.prompt, pair.chosen, pair.rejected, weight)

    alone = gradient([a])
    assert alone.abs().sum() > 0
    assert torch.allclose(gradient([a, weighted(b, 0.0)]), alone, rtol=1e-5, atol=1e-9)
    assert torch.allclose(gradient([a, weighted(b, 2.0)]), gradient([a, b, b]), rtol=1e-4, atol=1e-9)
    assert not torch.allclose(gradient([a, b]), alone, rtol=1e-2)
