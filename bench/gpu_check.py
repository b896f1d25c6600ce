"""One PPO iteration, one reward-model step and one DPO step on an accelerator: samples/s and
peak GPU memory.

    bench/gpu_check.sh [--device auto|cpu|cuda|cuda:N] [--dtype auto|float32|bfloat16|float16]
                       [--model DIR] [--gradient-checkpointing] [--smoke]

The model is the random-initialised 107M-parameter Llama of `bench.trainer` (hidden 1024, 8
layers, 16 heads, the demo model's tokenizer; built and cached in ``$HHH_HOME/models`` on first
use — only the tokenizer is trained, in seconds, not the demo model) unless ``--model`` names
another folder. The work is what the trainer daemon does, through the same code and the same
`trainer.devices.Placement` (``--device``/``--dtype`` as ``HHH_TRAINER_DEVICE``/``_DTYPE``):

1. **reward step**: a value-head reward model (its own LoRA r 8 on every linear layer) takes one
   optimiser step on ``--pairs`` polite-over-rude pairs of the demo corpus;
2. **PPO iteration**: policy and reference as adapters of one base, the reward model from (1)
   attached to that base as a third adapter (the daemon's layout), ``--prompts`` prompts,
   ``--new-tokens`` sampled tokens each, 1 epoch of 2 mini-batches, micro-batches of 8;
3. **DPO step**: one optimiser step on ``--pairs`` pairs (reference log-probs included).

Each phase runs ``--warmup`` untimed times first (CUDA kernels and allocator warm up), then
once timed. samples/s: pairs or responses over the timed call (model loading excluded); peak
memory: ``torch.cuda.max_memory_allocated`` over the phase (loading included), reset before it.
``--smoke``: a few samples and tokens, no warm-up: that the path runs (on CPU with a tiny model).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from bench.trainer import bench_pairs, bench_prompts, large_model
from streams.config import hhh_home
from trainer.config import DPOSettings, PPOSettings, RewardSettings
from trainer.demo_model.build import VARIANTS
from trainer.demo_model.corpus import generate_dialogues
from trainer.demo_model.tokenizer import train_tokenizer
from trainer.devices import Placement, resolve_placement
from trainer.reward.model import RewardModel, encode
from trainer.reward.train import EncodedPair, rewards_of, train_pairs
from trainer.rl.dpo import DPOTrainer, TextPair, load_dpo_stack
from trainer.rl.models import load_policy_stack, lora_config
from trainer.rl.ppo import PPOTrainer
from trainer.tokens import load_tokenizer

GIB = 1024**3


def the_107m_model(home: Path) -> Path:
    """`bench.trainer.large_model`, with the demo tokenizer trained on its own (the demo model's
    corpus and vocabulary, so the same tokenizer), not the whole demo model."""
    demo = VARIANTS["demo"]
    with tempfile.TemporaryDirectory() as folder:
        if not (home / "models" / "bench-llama-107m" / "config.json").is_file():
            tokenizer = train_tokenizer(generate_dialogues(demo.corpus_size, seed=0), demo.vocab_size,
                                        demo.max_position_embeddings)
            tokenizer.save_pretrained(folder)
        (home / "models").mkdir(parents=True, exist_ok=True)
        return large_model(Path(folder), home)


class Phase:
    """Times one phase and measures its peak GPU memory."""

    def __init__(self, placement: Placement) -> None:
        self.cuda = placement.device.type == "cuda"
        self.device = placement.device
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def timed(self, run: Callable[[], object], warmup: int) -> float:
        """Seconds of the last of ``warmup + 1`` calls of ``run``."""
        for _ in range(warmup):
            run()
        self._sync()
        started = time.perf_counter()
        run()
        self._sync()
        return time.perf_counter() - started

    def peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / GIB if self.cuda else math.nan

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def reward_step(model_dir: Path, placement: Placement, pairs: list[TextPair], warmup: int,
                out: Path) -> tuple[float, float]:
    """One optimiser step of a fresh value-head reward model on ``pairs``; saves it to ``out``."""
    phase = Phase(placement)
    settings = RewardSettings(batch_size=len(pairs), epochs=1, max_length=256)
    model = RewardModel.create(model_dir, "value_head", settings, placement)
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    encoded = [EncodedPair(encode(tokenizer, p.prompt, p.chosen, 256), encode(tokenizer, p.prompt, p.rejected, 256), 1.0)
               for p in pairs]
    seconds = phase.timed(lambda: train_pairs(model, encoded, settings, epochs=1,
                                              pad_id=tokenizer.pad_token_id, progress=False), warmup)
    model.save(out)
    return len(pairs) / seconds, phase.peak_gib()


def ppo_iteration(model_dir: Path, placement: Placement, prompts: list, new_tokens: int, warmup: int,
                  reward_dir: Path) -> tuple[float, float]:
    """One PPO iteration over ``prompts``, scored by the reward model in ``reward_dir`` attached
    to the policy's base."""
    phase = Phase(placement)
    settings = PPOSettings(rollout_batch_size=len(prompts), num_minibatches=2, ppo_epochs=1,
                           max_new_tokens=new_tokens, micro_batch_size=8, target_approx_kl=None,
                           learning_rate=1e-4)
    stack = load_policy_stack(model_dir, None, lora_config(settings.lora_rank, settings.lora_alpha,
                                                           settings.lora_target_modules),
                              seed=0, placement=placement)
    reward = RewardModel.attach(stack.peft_model, reward_dir)
    tokenizer = load_tokenizer(model_dir, padding_side="right")

    def score(conversations: list, responses: list[str]) -> torch.Tensor:
        sequences = [encode(tokenizer, c, r, 256) for c, r in zip(conversations, responses)]
        return rewards_of(reward, sequences, tokenizer.pad_token_id, batch_size=32)

    trainer = PPOTrainer(stack, score, settings)
    seconds = phase.timed(lambda: trainer.iteration(prompts), warmup)
    return len(prompts) / seconds, phase.peak_gib()


def dpo_step(model_dir: Path, placement: Placement, pairs: list[TextPair], warmup: int) -> tuple[float, float]:
    """One DPO optimiser step on ``pairs`` (their reference log-probabilities included)."""
    phase = Phase(placement)
    settings = DPOSettings(batch_size=len(pairs), epochs=1, max_length=256)
    trainer = DPOTrainer(load_dpo_stack(model_dir, None, settings, placement), settings)
    seconds = phase.timed(lambda: trainer.train(pairs), warmup)
    return len(pairs) / seconds, phase.peak_gib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="as HHH_TRAINER_DEVICE (default auto)")
    parser.add_argument("--dtype", default="auto", help="as HHH_TRAINER_DTYPE (default auto)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--model", type=Path, help="a model folder (default: the 107M-parameter Llama)")
    parser.add_argument("--prompts", type=int, default=64, help="PPO responses in the iteration")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens sampled per response")
    parser.add_argument("--pairs", type=int, default=16, help="pairs in the reward and DPO steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each phase first")
    parser.add_argument("--smoke", action="store_true", help="8 prompts of 8 tokens, 4 pairs, no warm-up")
    args = parser.parse_args()
    if args.smoke:
        args.prompts, args.new_tokens, args.pairs, args.warmup = 8, 8, 4, 0

    placement = resolve_placement(args.device, args.dtype, args.gradient_checkpointing)
    model_dir = args.model or the_107m_model(hhh_home())
    with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
        parameters = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    where = torch.cuda.get_device_name(placement.device) if placement.device.type == "cuda" else "CPU"
    print(f"model {model_dir} ({parameters / 1e6:.0f}M parameters); {placement.device} ({where}), "
          f"{str(placement.dtype).removeprefix('torch.')}, gradient checkpointing "
          f"{'on' if placement.gradient_checkpointing else 'off'}; torch {torch.__version__}")
    pairs = [TextPair(p["prompt"], p["chosen"], p["rejected"]) for p in bench_pairs(args.pairs)]
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as reward_dir:
        rows.append(("reward-model step", f"{len(pairs)} pairs",
                     *reward_step(model_dir, placement, pairs, args.warmup, Path(reward_dir))))
        rows.append(("PPO iteration", f"{args.prompts} × {args.new_tokens} tokens",
                     *ppo_iteration(model_dir, placement, bench_prompts(args.prompts), args.new_tokens,
                                    args.warmup, Path(reward_dir))))
    rows.append(("DPO step", f"{len(pairs)} pairs", *dpo_step(model_dir, placement, pairs, args.warmup)))
    print("| phase | batch | samples/s | peak GPU memory (GiB) |")
    print("|---|---|---:|---:|")
    for name, batch, per_s, peak in rows:
        print(f"| {name} | {batch} | {per_s:.2f} | {'n/a' if math.isnan(peak) else f'{peak:.2f}'} |")


if __name__ == "__main__":
    main()
