"""PPO rollouts: transformers `generate` in the trainer's process against a vLLM engine.

    .venv/bin/python -m bench.rollout [--variant demo] [--prompts 64] [--new-tokens 32] [--reps 3]

The same policy stack (the demo model with a rank-8 LoRA policy adapter on every linear layer,
random non-zero B so that the adapter matters), the same 64 chat prompts of the demo corpus,
32 new tokens sampled at temperature 1, fp32 on both sides. *transformers*: `sample_rollout`
with the adapter merged for sampling (hhh's default) and without (through the LoRA layers).
*vLLM*: `VLLMRolloutSampler` against a vLLM server on the same model (started here; the
first adapter request warms it up and is not timed), which saves the adapter, loads it under
a fresh name, samples and unloads it: all of that is in the timing, as in a PPO iteration.
The rows alternate (ABBA over ``--reps``) so that drift in the machine's load hits all alike;
the table gives the median seconds per rollout batch and responses/s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from serving.engine import EngineConfig, EngineProcess
from streams.config import hhh_home
from trainer.config import LORA_TARGETS
from trainer.demo_model.build import build_demo_model
from trainer.rl.models import POLICY_ADAPTER, load_policy_stack, lora_config
from trainer.rl.rollout import sample_rollout
from trainer.rl.vllm_rollout import VLLMRolloutSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=["demo", "tiny"], default="demo")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    from bench.trainer import bench_prompts

    torch.set_num_threads(2)
    model_dir = build_demo_model(args.variant, home=hhh_home())
    stack = load_policy_stack(model_dir, None, lora_config(8, 16, list(LORA_TARGETS)))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in stack.peft_model.named_parameters():
            if f"lora_B.{POLICY_ADAPTER}" in name:
                param.copy_(torch.randn_like(param) * 0.01)
    prompts = bench_prompts(args.prompts)
    sampling = {"max_new_tokens": args.new_tokens, "temperature": 1.0, "max_prompt_tokens": 256}
    log_path = Path(tempfile.mkdtemp()) / "engine.log"
    with EngineProcess(EngineConfig(model_dir=model_dir, log_path=log_path, max_num_seqs=args.prompts)) as engine:
        samplers = {
            "transformers, adapter merged": partial(sample_rollout, merged=True),
            "transformers, through LoRA": partial(sample_rollout, merged=False),
            "vLLM engine": VLLMRolloutSampler(engine.url),
        }
        samplers["vLLM engine"](stack, prompts[:2], **sampling)  # first LoRA request: warm-up
        seconds: dict[str, list[float]] = {name: [] for name in samplers}
        tokens: dict[str, list[float]] = {name: [] for name in samplers}
        order = list(samplers)
        for rep in range(args.reps):
            for name in order if rep % 2 == 0 else reversed(order):
                started = time.perf_counter()
                rollout = samplers[name](stack, prompts, **sampling)
                seconds[name].append(time.perf_counter() - started)
                tokens[name].append(rollout.response_mask.sum(1).mean().item())
    print(f"\n{args.prompts} prompts x up to {args.new_tokens} new tokens, model {model_dir.name}, "
          f"{args.reps} reps, median\n")
    print("| sampler | s per batch | responses/s | mean response tokens | vs transformers merged |")
    print("|---|---:|---:|---:|---:|")
    reference = statistics.median(seconds["transformers, adapter merged"])
    for name in samplers:
        median = statistics.median(seconds[name])
        print(f"| {name} | {median:.2f} | {args.prompts / median:.1f} | "
              f"{statistics.mean(tokens[name]):.1f} | {reference / median:.2f}x |")


if __name__ == "__main__":
    main()
