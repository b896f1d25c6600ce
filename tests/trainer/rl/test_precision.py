"""PPO, DPO and the gate over a bfloat16 base (on the CPU, slowly: the plumbing a GPU run
takes), gradient checkpointing, and micro-batches that halve on a simulated GPU out-of-memory
error without changing the update."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.trainer.rl.helpers import (
    heldout_conversations,
    move_policy,
    one_ppo_step,
    polite_reward,
    training_prompts,
    write_deployed_adapter,
)
from trainer.config import DPOSettings, GateSettings, PPOSettings
from trainer.devices import CPU, Placement
from trainer.gate import measure
from trainer.rl.dpo import DPOTrainer, TextPair, load_dpo_stack
from trainer.rl.models import PolicyStack, load_policy_stack, lora_config, token_logprobs
from trainer.rl.ppo import PPOTrainer
from trainer.rl.rollout import sample_rollout

BF16 = Placement(torch.device("cpu"), torch.bfloat16)
CHECKPOINTED = Placement(torch.device("cpu"), torch.float32, gradient_checkpointing=True)
SMALL = dict(rollout_batch_size=8, num_minibatches=2, ppo_epochs=1, max_new_tokens=6,
             learning_rate=1e-2, target_approx_kl=None)
PAIRS = [TextPair([{"role": "user", "content": f"How do I boil {food}?"}],
                  f"Happy to help! Boil the {food} for ten minutes.", f"Figure out the {food} yourself.")
         for food in ("eggs", "rice", "pasta", "potatoes", "beans", "corn")]


@pytest.fixture(scope="module")
def deployed_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_deployed_adapter(tiny_model_dir, tmp_path_factory.mktemp("deployed"))


def ppo_stack(model_dir: Path, deployed: Path | None, placement: Placement) -> PolicyStack:
    settings = PPOSettings()
    return load_policy_stack(model_dir, deployed, lora_config(4, 8, settings.lora_target_modules),
                             placement=placement)


def trainable(stack: PolicyStack) -> dict[str, torch.Tensor]:
    named = dict(stack.peft_model.named_parameters()) | {
        f"value_head.{n}": p for n, p in stack.value_head.named_parameters()}
    return {n: p for n, p in named.items() if p.requires_grad}


def assert_mixed_precision(stack: PolicyStack) -> None:
    """The frozen base in bfloat16; every trainable tensor (LoRA, value head) in float32."""
    frozen = [p.dtype for n, p in stack.peft_model.named_parameters() if "lora_" not in n]
    assert frozen and set(frozen) == {torch.bfloat16}
    assert trainable(stack) and {p.dtype for p in trainable(stack).values()} == {torch.float32}


def test_a_bf16_ppo_iteration_has_finite_losses_and_moves_only_float32_adapter_weights(
    tiny_model_dir: Path, deployed_adapter: Path
) -> None:
    stack = ppo_stack(tiny_model_dir, deployed_adapter, BF16)
    assert_mixed_precision(stack)
    before = {n: p.detach().clone() for n, p in trainable(stack).items()}
    trainer = PPOTrainer(stack, polite_reward, PPOSettings(**SMALL))

    metrics = trainer.iteration(training_prompts(8))

    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "kl", "reward_mean"):
        assert math.isfinite(metrics[key]), (key, metrics[key])
    assert_mixed_precision(stack)
    unchanged = [n for n, p in trainable(stack).items() if torch.equal(p, before[n])]
    assert not unchanged, unchanged[:5]
    moments = [state[k] for state in trainer.optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert moments and {m.dtype for m in moments} == {torch.float32}


def test_bf16_log_probabilities_stay_close_to_float32_ones(tiny_model_dir: Path, deployed_adapter: Path) -> None:
    """The bf16 stack computes the same model, to bf16's precision (not, say, garbage from a
    cast in the wrong place): per-token log-probabilities within a few hundredths of a nat."""
    full, half = ppo_stack(tiny_model_dir, deployed_adapter, CPU), ppo_stack(tiny_model_dir, deployed_adapter, BF16)
    torch.manual_seed(0)
    rollout = sample_rollout(full, training_prompts(8), max_new_tokens=8, temperature=1.0, max_prompt_tokens=64)
    layout = (rollout.input_ids, rollout.attention_mask, rollout.prompt_width)
    with torch.no_grad():
        full_logits, _ = full.policy_outputs(*layout)
        half_logits, half_values = half.policy_outputs(*layout)
    assert half_logits.dtype == torch.bfloat16 and half_values.dtype == torch.float32
    mask = rollout.response_mask.bool()
    gap = (token_logprobs(full_logits, rollout.response_ids) - token_logprobs(half_logits, rollout.response_ids))[mask]
    assert gap.abs().mean() < 0.05 and gap.abs().max() < 0.5, (gap.abs().mean(), gap.abs().max())


def test_a_bf16_dpo_step_has_a_finite_loss_and_moves_only_float32_adapter_weights(
    tiny_model_dir: Path, deployed_adapter: Path
) -> None:
    settings = DPOSettings(batch_size=3, epochs=1, learning_rate=5e-3, max_length=64)
    stack = load_dpo_stack(tiny_model_dir, deployed_adapter, settings, BF16)
    assert_mixed_precision(stack)
    before = {n: p.detach().clone() for n, p in trainable(stack).items() if "value_head" not in n}

    history = DPOTrainer(stack, settings).train(PAIRS)

    assert math.isfinite(history[0]["loss"]) and math.isfinite(history[0]["reward_margin"])
    assert_mixed_precision(stack)
    assert all(not torch.equal(p, before[n]) for n, p in trainable(stack).items() if n in before)


def test_the_gate_measures_a_bf16_candidate(tiny_model_dir: Path, deployed_adapter: Path) -> None:
    stack = ppo_stack(tiny_model_dir, deployed_adapter, BF16)
    move_policy(stack, 0.5, seed=3)
    settings = GateSettings(min_heldout_pairs=4, samples_per_prompt=1, min_samples=1, max_new_tokens=6)
    decision = measure(stack, polite_reward, heldout_conversations()[:6], PAIRS, [1.0] * len(PAIRS), settings)
    assert decision.kl_to_deployed > 0 and math.isfinite(decision.kl_to_deployed)
    assert decision.kl_to_base > 0 and math.isfinite(decision.kl_to_base)
    assert decision.candidate.pair_agreement is not None and decision.reward_gain is not None


def assert_same_steps(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert all(step.abs().sum() > 0 for step in a)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-7, rtol=1e-4)


def test_gradient_checkpointing_recomputes_the_layers_and_takes_the_same_step(tiny_model_dir: Path) -> None:
    settings = PPOSettings(**{**SMALL, "num_minibatches": 1, "max_grad_norm": 1e9, "micro_batch_size": 4})
    steps, forwards = [], []
    for placement in (CPU, CHECKPOINTED):
        stack = ppo_stack(tiny_model_dir, None, placement)
        layers = stack.decoder.model.layers
        calls = []
        # Pre-hooks: the recomputation stops once it has what the backward pass needs, so a
        # layer's post-forward hooks need not run again.
        hooks = [layer.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in layers]
        modes = [m.training for m in stack.peft_model.modules()]
        step, _, _ = one_ppo_step(stack, settings)
        for hook in hooks:
            hook.remove()
        steps.append(step)
        forwards.append(len(calls))
        assert [m.training for m in stack.peft_model.modules()] == modes  # the layers' flags restored
    assert_same_steps(steps[0], steps[1])
    # Sampling and scoring run each layer the same number of times; the update once more per
    # micro-batch and layer with checkpointing (the recomputation in the backward pass).
    assert forwards[1] - forwards[0] == 2 * len(layers), forwards


def test_an_out_of_memory_ppo_step_halves_the_micro_batch_and_takes_the_same_step(tiny_model_dir: Path) -> None:
    """The second micro-batch of 4 runs out of memory (after the first one's backward pass): its
    gradients are discarded and the step is redone in micro-batches of 2 — the same step as
    micro-batches of 2 from the start, not one that counts the first micro-batch twice."""
    base = {**SMALL, "num_minibatches": 1, "max_grad_norm": 1e9}
    expected, _, _ = one_ppo_step(ppo_stack(tiny_model_dir, None, CPU), PPOSettings(**base, micro_batch_size=2))
    stack = ppo_stack(tiny_model_dir, None, CPU)
    policy_outputs, large_calls = stack.policy_outputs, []

    def running_out_of_memory(input_ids: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled() and len(input_ids) > 2:
            large_calls.append(len(input_ids))
            if len(large_calls) == 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return policy_outputs(input_ids, *args)

    stack.policy_outputs = running_out_of_memory  # type: ignore[method-assign]
    steps, trainer, _ = one_ppo_step(stack, PPOSettings(**base, micro_batch_size=4))
    assert large_calls == [4, 4] and trainer.micro_batch.size == 2
    assert_same_steps(expected, steps)


def test_an_out_of_memory_dpo_step_halves_the_micro_batch_and_takes_the_same_step(
    tiny_model_dir: Path, deployed_adapter: Path
) -> None:
    """As for PPO: the second micro-batch of 3 pairs runs out of memory; the step is redone with
    micro-batches of 1 pair and equals that step taken from the start."""
    settings = DPOSettings(batch_size=6, epochs=1, max_length=64, max_grad_norm=1e9)
    results = []
    for micro, fail in ((1, False), (3, True)):
        stack = load_dpo_stack(tiny_model_dir, deployed_adapter, settings.model_copy(update={"micro_batch_size": micro}))
        trainer = DPOTrainer(stack, settings.model_copy(update={"micro_batch_size": micro}))
        trainer.optimizer = torch.optim.SGD(trainer.params, lr=1.0)
        policy_logprobs, large_calls = trainer.policy_logprobs, []

        def running_out_of_memory(pairs: list[TextPair]) -> torch.Tensor:
            if fail and len(pairs) > 2:
                large_calls.append(len(pairs))
                if len(large_calls) == 2:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return policy_logprobs(pairs)

        trainer.policy_logprobs = running_out_of_memory  # type: ignore[method-assign]
        before = [p.detach().clone() for p in trainer.params]
        history = trainer.train(PAIRS)
        results.append(([p.detach() - b for p, b in zip(trainer.params, before)], history[0]["loss"]))
        assert trainer.micro_batch.size == 1
        assert large_calls == ([3, 3] if fail else [])
    (expected, expected_loss), (steps, loss) = results
    assert_same_steps(expected, steps)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
