"""The PPO trainer on the tiny demo model: one base copy, frozen reference, and that it learns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch

from serving.engine import EngineProcess
from tests.trainer.rl.helpers import (
    heldout_conversations,
    move_policy,
    one_ppo_step,
    polite_reward,
    training_prompts,
    write_deployed_adapter,
)
from trainer.config import PPOSettings
from trainer.rl.models import (
    POLICY_ADAPTER,
    REFERENCE_ADAPTER,
    PolicyStack,
    causal_lm_outputs,
    load_frozen_base,
    load_policy_stack,
    lora_config,
    token_logprobs,
)
from trainer.rl.evaluation import SamplingSpec, evaluate_policy
from trainer.rl.ppo import PPOTrainer
from trainer.rl.record import RunRecord
from trainer.rl.rollout import sample_rollout
from trainer.rl.vllm_rollout import VLLMRolloutSampler

SMALL = dict(rollout_batch_size=8, num_minibatches=2, ppo_epochs=2, max_new_tokens=6,
             learning_rate=1e-2, target_approx_kl=None)


@pytest.fixture(scope="module")
def deployed_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_deployed_adapter(tiny_model_dir, tmp_path_factory.mktemp("deployed"))


def stack_for(
    model_dir: Path, deployed: Path | None, settings: PPOSettings, *, share_base: bool = True
) -> PolicyStack:
    config = lora_config(settings.lora_rank, settings.lora_alpha, settings.lora_target_modules)
    return load_policy_stack(model_dir, deployed, config, share_base=share_base, seed=settings.seed)


def base_weight_bytes(stack: PolicyStack) -> int:
    """Bytes of distinct storages behind every non-adapter weight the stack holds."""
    modules = [stack.peft_model] + ([stack.separate_reference] if stack.separate_reference else [])
    storages = {}
    for module in modules:
        for name, param in module.named_parameters():
            if "lora_" not in name:
                storages[param.untyped_storage().data_ptr()] = param.untyped_storage().nbytes()
    return sum(storages.values())


def probe_batch(stack: PolicyStack) -> tuple[torch.Tensor, torch.Tensor, int]:
    torch.manual_seed(0)
    rollout = sample_rollout(stack, training_prompts(4), max_new_tokens=6, temperature=1.0,
                             max_prompt_tokens=64)
    return rollout.input_ids, rollout.attention_mask, rollout.prompt_width


def test_shared_base_is_one_copy_and_gives_the_same_reference_as_separate_models(
    tiny_model_dir: Path, deployed_adapter: Path
) -> None:
    shared = stack_for(tiny_model_dir, deployed_adapter, PPOSettings(), share_base=True)
    separate = stack_for(tiny_model_dir, deployed_adapter, PPOSettings(), share_base=False)
    one_base = sum(p.numel() * p.element_size() for p in load_frozen_base(tiny_model_dir).parameters())
    assert base_weight_bytes(shared) == one_base
    assert base_weight_bytes(separate) == 2 * one_base
    # The reference reads the very tensors the policy reads.
    policy_ptrs = {n: p.data_ptr() for n, p in shared.decoder.named_parameters() if "lora_" not in n}
    with shared.reference_active():
        assert {n: p.data_ptr() for n, p in shared.decoder.named_parameters()
                if "lora_" not in n} == policy_ptrs
    assert shared.peft_model.active_adapters == [POLICY_ADAPTER]
    ids, attn, width = probe_batch(shared)
    torch.testing.assert_close(shared.reference_logits(ids, attn, width),
                               separate.reference_logits(ids, attn, width), atol=1e-4, rtol=1e-4)
    # The policy starts as the deployed adapter.
    torch.testing.assert_close(shared.policy_outputs(ids, attn, width)[0],
                               shared.reference_logits(ids, attn, width), atol=1e-5, rtol=1e-5)


def test_first_round_reference_is_the_base_model(tiny_model_dir: Path) -> None:
    stack = stack_for(tiny_model_dir, None, PPOSettings())
    ids, attn, width = probe_batch(stack)
    with torch.no_grad():
        torch.nn.init.normal_(next(p for n, p in stack.peft_model.named_parameters() if "lora_B" in n))
    with torch.no_grad():
        expected = causal_lm_outputs(load_frozen_base(tiny_model_dir), ids, attn, width)[0]
    torch.testing.assert_close(stack.reference_logits(ids, attn, width), expected)
    assert not torch.allclose(stack.policy_outputs(ids, attn, width)[0], expected)


@pytest.mark.parametrize("share_base", [True, False])
def test_an_iteration_changes_every_policy_weight_and_nothing_frozen(
    tiny_model_dir: Path, deployed_adapter: Path, share_base: bool
) -> None:
    settings = PPOSettings(**SMALL)
    stack = stack_for(tiny_model_dir, deployed_adapter, settings, share_base=share_base)
    ids, attn, width = probe_batch(stack)
    reference_before = stack.reference_logits(ids, attn, width)
    policy = {n: p.detach().clone() for n, p in stack.peft_model.named_parameters()
              if f".{POLICY_ADAPTER}." in n}
    frozen = {n: p.detach().clone() for n, p in stack.peft_model.named_parameters()
              if f".{POLICY_ADAPTER}." not in n}
    assert policy and frozen and all(not p.requires_grad for n, p in stack.peft_model.named_parameters()
                                     if n in frozen)
    if share_base:
        assert any(f".{REFERENCE_ADAPTER}." in n for n in frozen)
    value_head = stack.value_head.weight.detach().clone()

    PPOTrainer(stack, polite_reward, settings).train(training_prompts(16), iterations=1)

    params = dict(stack.peft_model.named_parameters())
    unchanged = [n for n, before in policy.items() if torch.equal(params[n], before)]
    assert not unchanged, f"policy weights that did not move: {unchanged[:5]}"
    assert all(torch.equal(params[n], before) for n, before in frozen.items())
    assert not torch.equal(stack.value_head.weight, value_head)
    torch.testing.assert_close(stack.reference_logits(ids, attn, width), reference_before, atol=0, rtol=0)
    assert not torch.allclose(stack.policy_outputs(ids, attn, width)[0], reference_before)


def test_saved_policy_reloads_as_the_next_rounds_reference(
    tiny_model_dir: Path, deployed_adapter: Path, tmp_path: Path
) -> None:
    settings = PPOSettings(**SMALL)
    stack = stack_for(tiny_model_dir, deployed_adapter, settings)
    PPOTrainer(stack, polite_reward, settings).train(training_prompts(8), iterations=1)
    stack.save_policy(tmp_path / "candidate")
    assert (tmp_path / "candidate" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "candidate" / "adapter_config.json").is_file()
    following = stack_for(tiny_model_dir, tmp_path / "candidate", settings)
    ids, attn, width = probe_batch(stack)
    logits, values = stack.policy_outputs(ids, attn, width)
    torch.testing.assert_close(following.reference_logits(ids, attn, width), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(following.policy_outputs(ids, attn, width)[1], values)


def test_a_reward_of_the_wrong_shape_is_refused(tiny_model_dir: Path) -> None:
    settings = PPOSettings(**SMALL)
    trainer = PPOTrainer(stack_for(tiny_model_dir, None, settings), lambda p, r: torch.zeros(3), settings)
    with pytest.raises(ValueError, match=r"shape \(3,\); expected \(8,\)"):
        trainer.iteration(training_prompts(8))


def test_too_few_prompts_for_a_batch_are_refused(tiny_model_dir: Path) -> None:
    settings = PPOSettings(**SMALL)
    trainer = PPOTrainer(stack_for(tiny_model_dir, None, settings), polite_reward, settings)
    with pytest.raises(ValueError, match="4 prompts are fewer than rollout_batch_size=8"):
        trainer.train(training_prompts(4), iterations=1)


def test_ppo_raises_the_heldout_reward_with_kl_under_budget(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A PPO round of about a minute: the mean synthetic reward on held-out prompts rises and
    the policy stays within a KL budget of the reference; the run record has every metric."""
    settings = PPOSettings(rollout_batch_size=32, num_minibatches=4, ppo_epochs=4, max_new_tokens=8,
                           learning_rate=5e-3, kl_coef=0.05, kl_target=4.0, kl_horizon=1000,
                           missing_eos_penalty=0.0, seed=0)
    torch.manual_seed(0)
    stack = stack_for(tiny_model_dir, None, settings)
    record_path = tmp_path / "run.jsonl"
    trainer = PPOTrainer(stack, polite_reward, settings, RunRecord(record_path, "ppo"))
    heldout = [p for p in heldout_conversations() for _ in range(2)]
    spec = SamplingSpec(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                        max_prompt_tokens=settings.max_prompt_tokens, batch_size=settings.rollout_batch_size)
    before = evaluate_policy(stack, polite_reward, heldout, spec)
    trainer.train(training_prompts(400), iterations=10)
    after = evaluate_policy(stack, polite_reward, heldout, spec)

    assert before.kl_mean == pytest.approx(0.0, abs=1e-4)
    assert after.reward_mean >= before.reward_mean + 0.1, (before.reward_mean, after.reward_mean)
    assert after.kl_mean < 10.0, after.kl_mean
    entries = [json.loads(line) for line in record_path.read_text().splitlines()]
    assert [e["iteration"] for e in entries] == list(range(1, 11))
    for key in ("reward_mean", "reward_std", "kl", "entropy", "clip_fraction", "approx_kl",
                "value_loss", "explained_variance", "response_length", "beta"):
        assert all(isinstance(e[key], float) for e in entries), key


def test_micro_batches_accumulate_to_the_same_update_as_one_pass(tiny_model_dir: Path) -> None:
    """Splitting a mini-batch into micro-batches changes memory, not the optimiser step."""
    updated = []
    for micro in (None, 3):
        settings = PPOSettings(**{**SMALL, "micro_batch_size": micro, "num_minibatches": 1,
                                  "max_grad_norm": 1e9})
        steps, _, stats = one_ppo_step(stack_for(tiny_model_dir, None, settings), settings)
        updated.append((steps, stats))
    (whole, whole_stats), (micro, micro_stats) = updated
    assert all(step.abs().sum() > 0 for step in whole)
    for a, b in zip(whole, micro):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4)
    assert micro_stats == pytest.approx(whole_stats, rel=1e-4, abs=1e-6)


def test_merged_sampling_is_the_policy_and_leaves_the_base_untouched(
    tiny_model_dir: Path, deployed_adapter: Path
) -> None:
    stack = stack_for(tiny_model_dir, deployed_adapter, PPOSettings())
    ids, attn, width = probe_batch(stack)
    policy_logits = stack.policy_outputs(ids, attn, width)[0]
    base = {n: (p, p.detach().clone()) for n, p in stack.peft_model.named_parameters() if "lora_" not in n}
    with stack.merged_policy(), torch.no_grad():
        merged_logits = causal_lm_outputs(stack.decoder, ids, attn, width)[0]
        assert any(p is not original for n, (original, _) in base.items()
                   for m, p in stack.peft_model.named_parameters() if m == n)
    torch.testing.assert_close(merged_logits, policy_logits, atol=1e-5, rtol=1e-5)
    after = dict(stack.peft_model.named_parameters())
    assert all(after[n] is original and torch.equal(original, copy) for n, (original, copy) in base.items())
    assert all(p.requires_grad == (f".{POLICY_ADAPTER}." in n) for n, p in stack.peft_model.named_parameters())


@pytest.fixture(scope="module")
def opinionated_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model whose generation_config.json asks for a repetition penalty, top-k and
    top-p by default, as many published checkpoints do."""
    folder = tmp_path_factory.mktemp("opinionated") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text()) \
        if (folder / "generation_config.json").is_file() else {}
    config |= {"do_sample": True, "repetition_penalty": 1.3, "top_k": 5, "top_p": 0.5}
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("merged", [True, False])
def test_the_sampler_draws_from_the_distribution_the_trainer_scores(
    opinionated_model_dir: Path, merged: bool
) -> None:
    """Whatever the model folder's generation defaults, the tokens come from softmax(logits/T):
    the sampler's own log-probabilities (after every processor it applied) equal the trainer's."""
    stack = stack_for(opinionated_model_dir, None, PPOSettings())
    move_policy(stack, 0.5, seed=2)
    prompts = training_prompts(8)
    torch.manual_seed(0)
    rollout = sample_rollout(stack, prompts, max_new_tokens=12, temperature=0.9, max_prompt_tokens=64,
                             merged=merged, with_sampler_logprobs=True)
    with torch.no_grad():
        logits, _ = stack.policy_outputs(rollout.input_ids, rollout.attention_mask, rollout.prompt_width)
    trainer_logprobs = token_logprobs(logits / 0.9, rollout.response_ids)
    mask = rollout.response_mask.bool()
    assert rollout.sampler_logprobs is not None and mask.sum() > 8 * 3
    assert (rollout.sampler_logprobs[mask] - trainer_logprobs[mask]).abs().max() < 1e-4
    # The folder's defaults are real: plain `generate` would have sampled another distribution.
    with torch.no_grad():
        plain = stack.peft_model.generate(
            input_ids=rollout.input_ids[:, : rollout.prompt_width],
            attention_mask=rollout.attention_mask[:, : rollout.prompt_width], temperature=0.9,
            max_new_tokens=12, output_scores=True, return_dict_in_generate=True,
        )
    first_token = plain.sequences[:, rollout.prompt_width : rollout.prompt_width + 1]  # (B, 1)
    plain_first = plain.scores[0].log_softmax(-1).gather(-1, first_token).squeeze(-1)
    with torch.no_grad():
        attention = torch.cat([rollout.attention_mask[:, : rollout.prompt_width], torch.ones_like(first_token)], 1)
        rescored, _ = stack.policy_outputs(plain.sequences[:, : rollout.prompt_width + 1], attention,
                                           rollout.prompt_width)
    assert (plain_first - token_logprobs(rescored / 0.9, first_token)[:, 0]).abs().max() > 0.1


def test_the_frozen_base_stays_in_eval_mode_while_ppo_updates(tiny_model_dir: Path) -> None:
    """Dropout in the base (its config may have some) would make the update's log-probs differ
    from π_old's: every module the forward passes run is in eval mode, updates included."""
    settings = PPOSettings(**SMALL)
    stack = stack_for(tiny_model_dir, None, settings)
    modes: set[bool] = set()
    hooks = [module.register_forward_pre_hook(lambda module, _: modes.add(module.training))
             for module in stack.peft_model.modules()]
    try:
        PPOTrainer(stack, polite_reward, settings).train(training_prompts(16), iterations=1)
    finally:
        for hook in hooks:
            hook.remove()
    assert modes == {False}


def test_a_response_cut_by_the_token_limit_loses_the_missing_eos_penalty(tiny_model_dir: Path) -> None:
    """The reward model would score a truncated text as if it had ended; PPO charges it."""
    settings = PPOSettings(**{**SMALL, "max_new_tokens": 2, "missing_eos_penalty": 3.0})
    stack = stack_for(tiny_model_dir, None, settings)
    trainer = PPOTrainer(stack, lambda _, responses: torch.ones(len(responses)), settings)
    metrics = trainer.iteration(training_prompts(8))
    assert metrics["truncated_share"] > 0.5  # two tokens: hardly any reply ends
    assert metrics["reward_mean"] == pytest.approx(1.0 - 3.0 * metrics["truncated_share"], abs=1e-5)


@pytest.mark.vllm
def test_rollouts_through_vllm_load_a_fresh_adapter_each_iteration_and_train(
    tiny_model_dir: Path, vllm_engine: EngineProcess, tmp_path: Path
) -> None:
    """PPO with `rollout_engine_url`: the engine samples the policy adapter under a new name
    each iteration and unloads it after; the trainer's own log-probs drive the update."""
    settings = PPOSettings(rollout_engine_url=vllm_engine.url, rollout_batch_size=8, num_minibatches=2,
                           ppo_epochs=1, max_new_tokens=8, learning_rate=1e-2, target_approx_kl=None,
                           lora_target_modules=["q_proj", "v_proj"])
    stack = stack_for(tiny_model_dir, None, settings)
    def length_reward(_: object, responses: list[str]) -> torch.Tensor:  # differs between responses
        return torch.tensor([len(r) / 10 for r in responses])

    trainer = PPOTrainer(stack, length_reward, settings, RunRecord(tmp_path / "run.jsonl", "ppo"))
    before = {n: p.detach().clone() for n, p in stack.peft_model.named_parameters() if p.requires_grad}
    sampled = []
    sample = trainer.sample

    def watching(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        rollout = sample(*args, **kwargs)
        sampled.append(rollout)
        return rollout

    trainer.sample = watching
    trainer.train(training_prompts(40), iterations=2)

    assert sample.versions_loaded == 2
    models = httpx.get(f"{vllm_engine.url}/v1/models").json()["data"]
    assert not [m for m in models if m["id"].startswith(sample.name_prefix)]  # unloaded again
    for rollout in sampled:
        assert rollout.response_ids.shape[1] <= 8
        lengths = rollout.response_mask.sum(1)
        assert (lengths >= 1).all()
        # A response is what its mask covers: decoding those tokens gives the text the reward saw.
        for row, mask, text in zip(rollout.response_ids, rollout.response_mask, rollout.responses):
            assert stack.tokenizer.decode(row[mask.bool()], skip_special_tokens=True) == text
    assert any(text.strip() for rollout in sampled for text in rollout.responses)
    changed = [n for n, p in stack.peft_model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "the update did not move the policy"


@pytest.mark.vllm
def test_vllm_samples_the_policy_adapter_not_the_base(tiny_model_dir: Path, vllm_engine: EngineProcess) -> None:
    """Near-greedy vLLM samples of a policy far from the base are the trainer's own argmax tokens
    under the policy, and mostly not under the base model (the reference on a first round)."""
    settings = PPOSettings(lora_target_modules=["q_proj", "v_proj", "up_proj"])
    stack = stack_for(tiny_model_dir, None, settings)
    move_policy(stack, 0.5, seed=5)
    sample = VLLMRolloutSampler(vllm_engine.url)

    rollout = sample(stack, training_prompts(16), max_new_tokens=8, temperature=1e-3, max_prompt_tokens=64)

    with torch.no_grad():
        policy, _ = stack.policy_outputs(rollout.input_ids, rollout.attention_mask, rollout.prompt_width)
        base = stack.reference_logits(rollout.input_ids, rollout.attention_mask, rollout.prompt_width)
    valid = rollout.response_mask.bool()
    policy_agrees = (policy.argmax(-1) == rollout.response_ids)[valid].float().mean().item()
    base_agrees = (base.argmax(-1) == rollout.response_ids)[valid].float().mean().item()
    assert policy_agrees >= 0.95, (policy_agrees, base_agrees)
    assert base_agrees <= policy_agrees - 0.2, (policy_agrees, base_agrees)


@pytest.mark.vllm
def test_vllm_samples_of_one_batch_are_independent(tiny_model_dir: Path, vllm_engine: EngineProcess) -> None:
    """The same prompt eight times in one batch gives different responses: the samples PPO
    averages over must not share one random stream (as one seed per request would make them)."""
    stack = stack_for(tiny_model_dir, None, PPOSettings(lora_target_modules=["q_proj", "v_proj"]))
    rollout = VLLMRolloutSampler(vllm_engine.url)(stack, training_prompts(1) * 8, max_new_tokens=12,
                                                  temperature=1.0, max_prompt_tokens=64)
    assert len(set(rollout.responses)) >= 3, rollout.responses
