"""The reward model on the tiny demo model: what trains, padding, saving, sharing the base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from trainer.config import RewardSettings
from trainer.demo_model.corpus import generate_dialogues
from trainer.reward.model import REWARD_ADAPTER, RewardModel, encode, last_token_index
from trainer.tokens import load_tokenizer, pad_right
from trainer.reward.train import EncodedPair, EncodedVote, backward_batch, micro_batches, rewards_of, train_pairs

SETTINGS = RewardSettings(batch_size=4, learning_rate=1e-2, epochs=1)


def sequences(model_dir: Path, count: int) -> list[list[int]]:
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    return [encode(tokenizer, d.messages, d.response, 128) for d in generate_dialogues(count, seed=3)]


def test_the_last_token_index_matches_a_plain_loop() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    expected = [max(t for t, bit in enumerate(row) if bit) for row in mask.tolist()]
    assert last_token_index(mask).tolist() == expected == [2, 4, 4, 0]


@pytest.mark.parametrize("kind", ["value_head", "sequence_classifier"])
def test_every_trainable_parameter_changes_and_no_frozen_one_does(tiny_model_dir: Path, kind: str) -> None:
    model = RewardModel.create(tiny_model_dir, kind, SETTINGS)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "value_head" in n or "score" in n for n in trainable)
    seqs = sequences(tiny_model_dir, 16)
    pairs = [EncodedPair(seqs[i], seqs[i + 1], 1.0) for i in range(0, 16, 2)]

    # Two steps: LoRA's B starts at zero, so A's gradient is zero until B has moved once.
    train_pairs(model, pairs, SETTINGS, epochs=1, pad_id=load_tokenizer(tiny_model_dir, padding_side="right").pad_token_id,
                progress=False)

    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == (name in trainable), f"{name}: trainable={name in trainable}, changed={changed}"


def test_votes_alone_train_every_trainable_parameter(tiny_model_dir: Path) -> None:
    model = RewardModel.create(tiny_model_dir, "value_head", SETTINGS)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    votes = [EncodedVote(seq, i % 2 == 0) for i, seq in enumerate(sequences(tiny_model_dir, 12))]

    train_pairs(model, [], SETTINGS, epochs=1, votes=votes, progress=False,
                pad_id=load_tokenizer(tiny_model_dir, padding_side="right").pad_token_id)

    unchanged = [name for name, p in model.named_parameters()
                 if name in before and torch.equal(before[name], p.detach())]
    assert unchanged == []


def test_with_pointwise_weight_0_votes_change_nothing(tiny_model_dir: Path) -> None:
    seqs = sequences(tiny_model_dir, 16)
    pairs = [EncodedPair(seqs[i], seqs[i + 1], 1.0) for i in range(0, 8, 2)]
    votes = [EncodedVote(seq, True) for seq in seqs[8:]]
    pad_id = load_tokenizer(tiny_model_dir, padding_side="right").pad_token_id
    settings = SETTINGS.model_copy(update={"pointwise_weight": 0.0})
    rewards = []
    for extra in ([], votes):
        model = RewardModel.create(tiny_model_dir, "value_head", settings)
        train_pairs(model, pairs, settings, epochs=1, pad_id=pad_id, progress=False, votes=extra)
        rewards.append(rewards_of(model, seqs, pad_id, 16))
    torch.testing.assert_close(rewards[0], rewards[1], rtol=0, atol=0)


def test_a_reward_does_not_depend_on_the_padding_of_its_batch(tiny_model_dir: Path) -> None:
    model = RewardModel.create(tiny_model_dir, "value_head", SETTINGS).eval()
    seqs = sequences(tiny_model_dir, 6)
    pad_id = load_tokenizer(tiny_model_dir, padding_side="right").pad_token_id
    alone = torch.stack([rewards_of(model, [s], pad_id, 1)[0] for s in seqs])
    batched = rewards_of(model, seqs, pad_id, 6)  # right-padded: no attention mask needed
    assert len({len(s) for s in seqs}) > 1
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    ids, mask = pad_right([s[::-1] for s in seqs], pad_id)  # left padding: the mask is used
    with torch.no_grad():
        left_padded = model(ids.flip(1), mask.flip(1))
    torch.testing.assert_close(left_padded, alone, atol=1e-5, rtol=1e-5)


def test_a_saved_model_loads_alone_or_as_an_adapter_beside_the_policy(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = RewardModel.create(tiny_model_dir, "value_head", SETTINGS)
    seqs = sequences(tiny_model_dir, 6)
    pad_id = load_tokenizer(tiny_model_dir, padding_side="right").pad_token_id
    pairs = [EncodedPair(seqs[i], seqs[i + 1], 1.0) for i in range(0, 6, 2)]
    train_pairs(model, pairs, SETTINGS, epochs=1, pad_id=pad_id, progress=False)
    expected = rewards_of(model, seqs, pad_id, 6)
    model.save(tmp_path)

    loaded = RewardModel.load(tmp_path, tiny_model_dir, "value_head", trainable=False)
    torch.testing.assert_close(rewards_of(loaded, seqs, pad_id, 6), expected)
    assert not any(p.requires_grad for p in loaded.parameters())

    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), adapter_name="policy")
    ids, mask = pad_right(seqs[:2], pad_id)
    with torch.no_grad():
        policy_logits = policy(input_ids=ids, attention_mask=mask).logits
    shared = RewardModel.attach(policy, tmp_path)
    torch.testing.assert_close(rewards_of(shared, seqs, pad_id, 6), expected)
    assert policy.active_adapter == "policy"
    assert set(policy.peft_config) == {"policy", REWARD_ADAPTER}
    with torch.no_grad():
        torch.testing.assert_close(policy(input_ids=ids, attention_mask=mask).logits, policy_logits)


def test_micro_batches_hold_the_token_budget_and_every_pair_once() -> None:
    batch = [EncodedPair([0] * n, [0] * (n // 2), 1.0) for n in (3, 5, 8, 8, 20, 40)]
    slices = list(micro_batches(batch, max_tokens=40))
    assert [pair for micro in slices for pair in micro] == batch
    assert [len(micro) for micro in slices] == [2, 2, 1, 1]  # 2·2·5, 2·2·8, 2·20, 2·40 (alone)


def test_micro_batches_give_the_same_gradient_as_the_whole_batch(tiny_model_dir: Path) -> None:
    seqs = sequences(tiny_model_dir, 16)
    weights = [1, 0.2, 0.5, 1, 1, 0.3, 0.7, 1]
    pairs = [EncodedPair(seqs[2 * i], seqs[2 * i + 1], w) for i, w in enumerate(weights)]
    pad_id = load_tokenizer(tiny_model_dir, padding_side="right").pad_token_id
    model = RewardModel.create(tiny_model_dir, "value_head", SETTINGS).double()  # exact enough to compare
    torch.nn.init.normal_(model.backbone.get_base_model().model.layers[0].mlp.up_proj.lora_B["reward"].weight)
    gradients, losses = [], []
    for budget in (100_000, 300):  # one forward pass; about one pair per pass
        settings = RewardSettings(margin=0.5, max_tokens_per_forward=budget)
        losses.append(backward_batch(model, pairs, settings, pad_id))
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad})
        model.zero_grad(set_to_none=True)
    assert len(list(micro_batches(pairs, 300))) >= 6
    assert losses[1] == pytest.approx(losses[0], rel=1e-10)
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-12, rtol=1e-9, msg=lambda m: f"{name}: {m}")
