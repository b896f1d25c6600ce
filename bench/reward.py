"""Reward-model training: hhh's loop vs TRL's ``RewardTrainer``, pairs/s and peak memory.

    .venv/bin/python -m bench.reward [--variant tiny|demo] [--pairs 320] [--batch-size 16] [--threads 1]
                                     [--rounds 2]

The first run creates the TRL virtualenv (`bench.trl_venv`: TRL 1.12.0 with torch 2.13.0 and
the transformers, peft and accelerate versions of ``.venv``), so both sides run the same
libraries. Both train the demo model (``--variant``) with the same
LoRA adapter (r 8, alpha 16, no dropout, every linear layer of the blocks), a scalar head,
AdamW at a constant learning rate, the same batch size (pairs per step), fp32, the same
thread count, for one epoch over the same pre-tokenised pairs (polite over curt over rude
replies from the demo corpus). hhh's side is ``trainer.reward.train.train_pairs`` on the
``value_head`` model; TRL's is ``RewardTrainer`` on ``AutoModelForSequenceClassification``
with a PEFT ``LoraConfig(task_type="SEQ_CLS")``, at its defaults otherwise: with gradient
checkpointing (its default) and without (same compute as hhh's). Each run is a fresh process;
runs alternate between the sides for ``--rounds`` rounds and the table shows the median.

pairs/s: pairs trained / wall time of the training call only (model loading excluded);
pairs per CPU-s: the same over the process's CPU time in that call. On a shared machine wall
time swings with the other processes' load; with one thread (the default) CPU time does not, so
it is the steadier of the two. The ratios are hhh's value over the other's (memory: lower is
better for hhh below 1).
peak MB: the process's peak RSS (``VmHWM``) minus its RSS right after importing the
libraries, so it counts the model, the data, activations and optimiser state.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.memory import peak_rss_bytes
from bench.trl_venv import ensure_trl_venv

REPO = Path(__file__).resolve().parents[1]
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
LEARNING_RATE = 1e-3
SIDES = ("hhh", "trl", "trl-no-ckpt")


def rss_mb() -> float:
    """The current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mb() -> float:
    return peak_rss_bytes() / 2**20


# ---------------------------------------------------------------- worker side (either venv)

def run_hhh(job: dict) -> dict:
    import logging

    import torch

    from trainer.config import RewardSettings
    from trainer.reward.model import RewardModel
    from trainer.tokens import load_tokenizer
    from trainer.reward.train import EncodedPair, train_pairs

    logging.disable(logging.INFO)
    torch.set_num_threads(job["threads"])
    after_imports = rss_mb()
    model_dir = Path(job["model_dir"])
    settings = RewardSettings(
        base_model=model_dir, lora_rank=LORA["r"], lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"], lora_target_modules=LORA["target_modules"],
        learning_rate=LEARNING_RATE, batch_size=job["batch_size"], max_length=100_000,
    )
    model = RewardModel.create(model_dir, "value_head", settings)
    pairs = [EncodedPair(p["chosen_ids"], p["rejected_ids"], 1.0) for p in job["pairs"]]
    pad_id = load_tokenizer(model_dir, padding_side="right").pad_token_id
    started, cpu_started = time.perf_counter(), time.process_time()
    loss = train_pairs(model, pairs, settings, epochs=1, pad_id=pad_id, progress=False)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mb": peak_rss_mb() - after_imports,
            "loss": loss}


def run_trl(job: dict, *, checkpointing: bool) -> dict:
    import logging

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    logging.disable(logging.WARNING)
    torch.set_num_threads(job["threads"])
    after_imports = rss_mb()
    dataset = Dataset.from_list(job["pairs"])
    with tempfile.TemporaryDirectory() as output_dir:
        args = RewardConfig(
            output_dir=output_dir, per_device_train_batch_size=job["batch_size"], num_train_epochs=1,
            learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=1.0, bf16=False, gradient_checkpointing=checkpointing, max_length=None,
            save_strategy="no", report_to="none", logging_steps=10, disable_tqdm=True,
            dataloader_num_workers=0, use_cpu=True, seed=0,
            model_init_kwargs={"dtype": torch.float32},
        )
        trainer = RewardTrainer(
            model=job["model_dir"], args=args, train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(job["model_dir"]),
            peft_config=LoraConfig(task_type="SEQ_CLS", **LORA),
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        result = trainer.train()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mb": peak_rss_mb() - after_imports,
            "loss": result.training_loss}


def worker(side: str, job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    result = run_hhh(job) if side == "hhh" else run_trl(job, checkpointing=side == "trl")
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- driver side (.venv)

def make_job(variant: str, pair_count: int, batch_size: int, threads: int) -> dict:
    """The model folder and ``pair_count`` pre-tokenised preference pairs."""
    from streams.config import hhh_home
    from trainer.demo_model.feedback import politeness_events
    from trainer.demo_model.build import build_demo_model
    from trainer.reward.model import encode
    from trainer.tokens import load_tokenizer

    model_dir = build_demo_model(variant, home=hhh_home())
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    completions: dict[str, tuple[list[dict], str]] = {}
    pairs = []
    for event in politeness_events(range(0, pair_count)):  # a ranking on every other prompt
        if event.type == "completion":
            completions[event.completion_id] = ([m.model_dump() for m in event.messages], event.completion)
        elif event.type == "ranking":
            polite, curt, rude = (group[0] for group in event.ranking)
            pairs += [(polite, curt), (polite, rude), (curt, rude)]
    ids = {cid: encode(tokenizer, *completions[cid], 100_000) for cid in completions}
    return {"model_dir": str(model_dir), "batch_size": batch_size, "threads": threads,
            "pairs": [{"chosen_ids": ids[w], "rejected_ids": ids[l]} for w, l in pairs[:pair_count]]}


def run_side(side: str, job_path: Path, trl_python: Path, threads: int) -> dict:
    python = sys.executable if side == "hhh" else str(trl_python)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    command = [python, "-m", "bench.reward", "--worker", side, str(job_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not results:
        raise RuntimeError(f"{side} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(results[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["tiny", "demo"], default="tiny")
    parser.add_argument("--pairs", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    trl_python = ensure_trl_venv()
    trl_version = subprocess.run([str(trl_python), "-c", "import trl; print(trl.__version__)"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    job = make_job(args.variant, args.pairs, args.batch_size, args.threads)
    pair_count = len(job["pairs"])
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as scratch:
        job_path = Path(scratch) / "job.json"
        job_path.write_text(json.dumps(job))
        for _ in range(args.rounds):
            for side in SIDES:
                runs[side].append(run_side(side, job_path, trl_python, args.threads))

    pairs_per_s = {side: statistics.median(pair_count / r["seconds"] for r in runs[side]) for side in SIDES}
    pairs_per_cpu_s = {side: statistics.median(pair_count / r["cpu_seconds"] for r in runs[side]) for side in SIDES}
    peak_mb = {side: statistics.median(r["peak_mb"] for r in runs[side]) for side in SIDES}
    lengths = [len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in job["pairs"]]
    print(f"\n{args.variant} demo model, {pair_count} pairs (mean {statistics.mean(lengths) / 2:.0f} tokens "
          f"per sequence), batch {args.batch_size} pairs, {args.threads} thread(s), TRL {trl_version}, "
          f"median of {args.rounds} rounds\n")
    print("| trainer | pairs/s | pairs per CPU-s | peak MB above imports | hhh speed ratio (wall, CPU) "
          "| hhh memory ratio | final loss |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for side, label in zip(SIDES, ("hhh `train_pairs`", "TRL `RewardTrainer` (defaults: grad. checkpointing)",
                                   "TRL `RewardTrainer`, no grad. checkpointing"), strict=True):
        print(f"| {label} | {pairs_per_s[side]:.1f} | {pairs_per_cpu_s[side]:.1f} | {peak_mb[side]:.0f} | "
              f"{pairs_per_s['hhh'] / pairs_per_s[side]:.2f}x, "
              f"{pairs_per_cpu_s['hhh'] / pairs_per_cpu_s[side]:.2f}x | {peak_mb['hhh'] / peak_mb[side]:.2f}x | "
              f"{statistics.median(r['loss'] for r in runs[side]):.3f} |")


if __name__ == "__main__":
    main()
