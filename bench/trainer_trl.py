"""TRL side of bench/trainer.py: runs in bench/.venvs/trl-ppo (TRL 1.12.0), never imported by hhh.

    bench/.venvs/trl-ppo/bin/python bench/trainer_trl.py ppo|dpo SPEC.json

SPEC.json (written by bench/trainer.py): model folder, prompts or pairs, sizes, threads, lora.
Prints one JSON line: seconds, samples (or pairs) per second, RSS right after imports, peak RSS.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore")

import psutil  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from trl import DPOConfig, DPOTrainer  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402

from memory import peak_rss_bytes  # noqa: E402 - bench/memory.py: this script runs from bench/

RSS_AFTER_IMPORTS = psutil.Process().memory_info().rss



def lora(spec: dict) -> LoraConfig | None:
    if not spec["lora"]:
        return None
    return LoraConfig(r=spec["lora_rank"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
                      target_modules=spec["lora_targets"], task_type="CAUSAL_LM")


def run_ppo(spec: dict, out_dir: str) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], padding_side="left")
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
             for p in spec["prompts"]]
    tokenizer.truncation_side = "left"
    ids = tokenizer(texts, add_special_tokens=False, truncation=True,
                    max_length=spec["max_prompt_tokens"]).input_ids
    dataset = Dataset.from_dict({"input_ids": ids})
    policy = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    peft_config = lora(spec)
    ref = None if peft_config else AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=1, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=1, dtype=torch.float32)
    batch = spec["batch_size"]
    config = PPOConfig(
        # TRL's rollout batch is per_device_train_batch_size × gradient_accumulation_steps; the
        # per-device size is its micro-batch (one forward/backward).
        output_dir=out_dir, per_device_train_batch_size=spec["micro_batch_size"],
        gradient_accumulation_steps=batch // spec["micro_batch_size"],
        num_mini_batches=spec["num_minibatches"], num_ppo_epochs=spec["ppo_epochs"],
        response_length=spec["max_new_tokens"], total_episodes=batch * spec["iterations"],
        local_rollout_forward_batch_size=batch, temperature=spec["temperature"],
        learning_rate=spec["learning_rate"], kl_coef=spec["kl_coef"], stop_token="eos",
        num_sample_generations=0, report_to=[], save_strategy="no", logging_steps=10_000,
        use_cpu=True, bf16=False, seed=0, disable_tqdm=True,
    )
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref,
                         reward_model=reward, train_dataset=dataset, value_model=value,
                         peft_config=peft_config)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "per_s": batch * spec["iterations"] / seconds}


def run_dpo(spec: dict, out_dir: str) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    pairs = spec["pairs"]
    dataset = Dataset.from_dict({
        "prompt": [p["prompt"] for p in pairs],
        "chosen": [[{"role": "assistant", "content": p["chosen"]}] for p in pairs],
        "rejected": [[{"role": "assistant", "content": p["rejected"]}] for p in pairs],
    })
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    config = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=spec["batch_size"], num_train_epochs=spec["epochs"],
        learning_rate=spec["learning_rate"], beta=spec["beta"], max_length=spec["max_length"],
        report_to=[], save_strategy="no", logging_steps=10_000, use_cpu=True, bf16=False, seed=0,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora(spec))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "per_s": len(pairs) * spec["epochs"] / seconds}


def main() -> None:
    kind, spec_path = sys.argv[1], sys.argv[2]
    spec = json.loads(open(spec_path).read())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out_dir:
        result = (run_ppo if kind == "ppo" else run_dpo)(spec, out_dir)
    result.update(rss_after_imports=RSS_AFTER_IMPORTS, peak_rss=peak_rss_bytes())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
