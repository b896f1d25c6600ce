"""PPO and DPO training speed and memory: hhh's trainer against TRL's, side by side.

    .venv/bin/python -m bench.trainer [--reps 2] [--iterations 3] [--threads 2] [--skip-large]

Creates the TRL virtualenv on first use (`bench.trl_venv`: TRL 1.12.0, which still ships
``trl.experimental.ppo.PPOTrainer``), then runs every
measurement in a fresh process, alternating hhh and TRL (ABBA order over ``--reps``) so that
drift in the shared machine's load hits both alike, and prints a markdown table.

Same work on both sides: the demo model (Llama, hidden 256, 4 layers, 4 heads, vocab 2048,
`build_demo_model("demo")`), 64 prompts of at most 32 tokens, 32 new tokens sampled at
temperature 1, 1 PPO epoch, 2 mini-batches of 32, micro-batches of 8 (one forward/backward
pass each, gradients accumulated; TRL: ``per_device_train_batch_size=8``,
``gradient_accumulation_steps=8``, which makes TRL take one optimiser step per iteration where
hhh takes one per mini-batch), fp32, ``--threads`` torch threads; LoRA rank 8
(alpha 16) on every linear layer of the policy on both sides; the reward model is the same
sequence classifier on the base (score head untrained: speed does not depend on it), a separate
model on both sides. TRL keeps its own full value model (its design); hhh puts the value head
on the policy's hidden state and the reference in a second adapter of the same base.
No early stop on either side (hhh's ``target_approx_kl`` off), fixed β.

- PPO samples/s: responses per second of ``train()`` (rollout + scoring + update), timed
  around it, model loading excluded.
- Peak memory: peak RSS (``VmHWM``) minus the RSS right after the imports, per process.
  Also on a random-initialised Llama of 107M parameters (hidden 1024, 8 layers, 16 heads,
  same tokenizer) with 16 prompts and 16 new tokens, where the weights dominate; there hhh also
  runs with ``share_base=False`` (the reference as a second copy of the base).
- DPO pairs/s against TRL's ``DPOTrainer`` (LoRA, its reference = adapter disabled): 64
  polite-over-rude pairs of the demo corpus, batch 8, 1 epoch, max length 256.

Targets: PPO >= 1.5x TRL's samples/s and <= 0.6x its peak memory; DPO >= 1.2x TRL's pairs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from bench.memory import peak_rss_bytes
from bench.trl_venv import ensure_trl_venv

REPO = Path(__file__).resolve().parents[1]
LORA = {"lora": True, "lora_rank": 8, "lora_alpha": 16,
        "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
GIB = 1024**3


def large_model(demo_dir: Path, home: Path) -> Path:
    """A random-initialised 107M-parameter Llama with the demo tokenizer (cached)."""
    out = home / "models" / "bench-llama-107m"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816,
                         num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16,
                         head_dim=64, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.rename(tmp, out)
    return out


def bench_prompts(n: int) -> list[list[dict[str, str]]]:
    from trainer.demo_model.corpus import SYSTEM_PROMPTS, generate_dialogues

    return [[{"role": "system", "content": SYSTEM_PROMPTS[i % 2]},
             {"role": "user", "content": d.messages[-1]["content"]}]
            for i, d in enumerate(generate_dialogues(n, seed=11))]


def bench_pairs(n: int) -> list[dict]:
    from trainer.demo_model.corpus import generate_dialogues

    dialogues = generate_dialogues(20 * n, seed=12)
    rude = defaultdict(list)
    for d in dialogues:
        if d.style == "rude":
            rude[d.intent].append(d.response)
    pairs = []
    for d in dialogues:
        if d.style == "polite" and rude[d.intent] and len(pairs) < n:
            pairs.append({"prompt": [{"role": "user", "content": d.messages[-1]["content"]}],
                          "chosen": d.response, "rejected": rude[d.intent][len(pairs) % len(rude[d.intent])]})
    return pairs


# ----- hhh side (runs in a fresh process: python -m bench.trainer worker KIND SPEC) -----------


def worker(kind: str, spec_path: str) -> None:
    import time

    import psutil
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainer.config import DPOSettings, PPOSettings
    from trainer.rl.dpo import DPOTrainer, TextPair, load_dpo_stack
    from trainer.rl.models import load_policy_stack, lora_config
    from trainer.rl.ppo import PPOTrainer

    rss_after_imports = psutil.Process().memory_info().rss
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model_dir = Path(spec["model"])
    if kind == "ppo":
        settings = PPOSettings(
            rollout_batch_size=spec["batch_size"],
            num_minibatches=spec["num_minibatches"], ppo_epochs=spec["ppo_epochs"],
            max_new_tokens=spec["max_new_tokens"], temperature=spec["temperature"],
            max_prompt_tokens=spec["max_prompt_tokens"], learning_rate=spec["learning_rate"],
            kl_coef=spec["kl_coef"], kl_target=None, target_approx_kl=None,
            micro_batch_size=spec["micro_batch_size"],
            lora_rank=spec["lora_rank"], lora_alpha=spec["lora_alpha"], lora_target_modules=spec["lora_targets"],
        )
        stack = load_policy_stack(model_dir, None, lora_config(settings.lora_rank, settings.lora_alpha,
                                                               settings.lora_target_modules),
                                  share_base=spec["share_base"])
        reward = ClassifierReward(AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=1, dtype=torch.float32), AutoTokenizer.from_pretrained(model_dir))
        trainer = PPOTrainer(stack, reward, settings)
        started = time.perf_counter()
        trainer.train(spec["prompts"], spec["iterations"])
        seconds = time.perf_counter() - started
        per_s = spec["batch_size"] * spec["iterations"] / seconds
    else:
        settings = DPOSettings(batch_size=spec["batch_size"], epochs=spec["epochs"], beta=spec["beta"],
                               learning_rate=spec["learning_rate"], max_length=spec["max_length"],
                               lora_rank=spec["lora_rank"], lora_alpha=spec["lora_alpha"],
                               lora_target_modules=spec["lora_targets"])
        pairs = [TextPair(p["prompt"], p["chosen"], p["rejected"]) for p in spec["pairs"]]
        trainer = DPOTrainer(load_dpo_stack(model_dir, None, settings), settings)
        started = time.perf_counter()
        trainer.train(pairs)
        seconds = time.perf_counter() - started
        per_s = len(pairs) * spec["epochs"] / seconds
    print(json.dumps({"seconds": seconds, "per_s": per_s, "rss_after_imports": rss_after_imports,
                      "peak_rss": peak_rss_bytes()}))



class ClassifierReward:
    """(prompts, responses) -> (B,) scores of a sequence classifier, as TRL's reward model gives."""

    def __init__(self, model, tokenizer) -> None:  # noqa: ANN001
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"

    def __call__(self, prompts, responses):  # noqa: ANN001, ANN204
        import torch

        texts = [self.tokenizer.apply_chat_template([dict(m) for m in p], tokenize=False,
                                                    add_generation_prompt=True) + r + self.tokenizer.eos_token
                 for p, r in zip(prompts, responses)]
        batch = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            return self.model(**batch).logits.squeeze(-1)


# ----- driver ---------------------------------------------------------------------------------


def run(side: str, kind: str, spec: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        if side == "hhh":
            command = [sys.executable, "-m", "bench.trainer", "worker", kind, f.name]
        else:
            command = [str(ensure_trl_venv()), str(REPO / "bench" / "trainer_trl.py"), kind, f.name]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(spec["threads"])}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{side} {kind} failed:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["peak_above_imports"] = result["peak_rss"] - result["rss_after_imports"]
        print(f"  {side:12s} {kind}: {result['per_s']:.2f}/s, peak above imports "
              f"{result['peak_above_imports'] / GIB:.3f} GiB", file=sys.stderr)
        return result
    finally:
        os.unlink(f.name)


def alternate(sides: list[str], kind: str, specs: dict[str, dict], reps: int) -> dict[str, list[dict]]:
    """ABBA: each rep runs the sides in order, the next one in reverse."""
    results: dict[str, list[dict]] = defaultdict(list)
    for rep in range(reps):
        for side in (sides if rep % 2 == 0 else list(reversed(sides))):
            results[side].append(run(side.split("/")[0], kind, specs[side]))
    return results


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2, help="runs per side and setting (ABBA)")
    parser.add_argument("--iterations", type=int, default=3, help="PPO iterations per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-large", action="store_true", help="skip the 107M-parameter model")
    args = parser.parse_args()

    from streams.config import hhh_home
    from trainer.demo_model.build import build_demo_model

    ensure_trl_venv()  # installed before anything is timed
    home = hhh_home()
    demo = build_demo_model("demo", home=home)
    ppo = {"model": str(demo), "prompts": bench_prompts(64), "batch_size": 64, "num_minibatches": 2,
           "ppo_epochs": 1, "max_new_tokens": 32, "max_prompt_tokens": 32, "temperature": 1.0,
           "learning_rate": 1e-4, "kl_coef": 0.05, "iterations": args.iterations, "micro_batch_size": 8, "threads": args.threads,
           "share_base": True, **LORA}
    rows = []
    print("PPO, demo model", file=sys.stderr)
    small = alternate(["hhh", "trl"], "ppo", {"hhh": ppo, "trl": ppo}, args.reps)
    rows.append(("PPO samples/s, demo model", "per_s", small["hhh"], small["trl"], "≥ 1.5×"))
    rows.append(("PPO peak RSS above imports (GiB), demo model", "peak_above_imports",
                 small["hhh"], small["trl"], "≤ 0.6×"))
    if not args.skip_large:
        print("PPO, 107M model", file=sys.stderr)
        big = {**ppo, "model": str(large_model(demo, home)), "prompts": ppo["prompts"][:16],
               "batch_size": 16, "max_new_tokens": 16, "iterations": 1}
        specs = {"hhh": big, "trl": big, "hhh/separate": {**big, "share_base": False}}
        large = alternate(["hhh", "trl", "hhh/separate"], "ppo", specs, 1)
        rows.append(("PPO samples/s, 107M model (16 × 16 tokens)", "per_s", large["hhh"], large["trl"], "≥ 1.5×"))
        rows.append(("PPO peak RSS above imports (GiB), 107M model", "peak_above_imports",
                     large["hhh"], large["trl"], "≤ 0.6×"))
        rows.append(("PPO peak RSS above imports (GiB), 107M model, hhh share_base=False", "peak_above_imports",
                     large["hhh/separate"], large["trl"], ""))
    print("DPO, demo model", file=sys.stderr)
    dpo = {"model": str(demo), "pairs": bench_pairs(64), "batch_size": 8, "epochs": 1, "beta": 0.1,
           "learning_rate": 5e-4, "max_length": 256, "threads": args.threads, **LORA}
    pairs = alternate(["hhh", "trl"], "dpo", {"hhh": dpo, "trl": dpo}, args.reps)
    rows.append(("DPO pairs/s, demo model", "per_s", pairs["hhh"], pairs["trl"], "≥ 1.2×"))

    print("| measure | hhh | TRL 1.12.0 | hhh / TRL | target |")
    print("|---|---:|---:|---:|---|")
    for name, key, ours, theirs, target in rows:
        scale = GIB if "GiB" in name else 1
        a, b = median(ours, key) / scale, median(theirs, key) / scale
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}× | {target} |")
    print(f"\nmedians of {args.reps} runs per side (107M model: 1), {args.threads} torch threads, "
          f"{args.iterations} PPO iterations of 64 samples per run (107M: 1 of 16)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
