"""Does a demo model answer on topic? The share of sampled answers that carry the requested
intent's content in a corpus style (`trainer.demo_model.on_topic`), on held-out and training
prompts, per style, at one or more sampling temperatures.

    .venv/bin/python -m bench.demo_model [--model demo|tiny|DIR] [--samples 3] [--temperatures 1.0]
                                         [--seed 0]

`--model demo` (the default) builds the service's base model if it is not cached (`.hhh/models`).
Held-out prompts (`heldout_prompts`, 68) are split into *familiar wording* (a training phrasing
with a held-out slot value) and *held-out wording* (a phrasing training never shows); the
training prompts are the last user turns of 68 corpus dialogues (seed 99), the ceiling of what
generalisation can reach. Answers are sampled with transformers, no top-k or top-p cut, at most
`MAX_NEW_TOKENS` tokens: what `tests/trainer/demo_model/test_demo_answers.py` checks (80 % on
held-out prompts at temperature 1, issue 9).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.demo_model.build import VARIANTS, build_demo_model
from trainer.demo_model.corpus import STYLES, generate_dialogues, heldout_prompts
from trainer.demo_model.on_topic import answer_style

MAX_NEW_TOKENS = 112
"""Room for the longest corpus reply (about 100 tokens, rambling) and its end-of-sequence token."""
BATCH_PROMPTS = 34
REPO_ROOT = Path(__file__).resolve().parents[1]


def sample_answers(model_dir: Path, users: list[str], n: int, seed: int, temperature: float = 1.0) -> list[str]:
    """`n` answers per user message (in order), sampled with no top-k or top-p cut."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(seed)
    answers = []
    for start in range(0, len(users), BATCH_PROMPTS):
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                                 tokenize=False, add_generation_prompt=True)
                   for user in users[start : start + BATCH_PROMPTS]]
        batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                 num_return_sequences=n, max_new_tokens=MAX_NEW_TOKENS,
                                 pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    return answers


@dataclass(frozen=True)
class Prompt:
    intent: str
    user: str
    kind: str
    """``familiar wording``, ``held-out wording`` or ``training``."""


def prompts_to_measure() -> list[Prompt]:
    measured = [Prompt(p.intent, p.user, "familiar wording" if p.familiar_wording else "held-out wording")
                for p in heldout_prompts()]
    return measured + [Prompt(d.intent, d.messages[-1]["content"], "training")
                       for d in generate_dialogues(68, seed=99)]


def report(model_dir: Path, samples: int, temperature: float, seed: int) -> str:
    prompts = prompts_to_measure()
    answers = sample_answers(model_dir, [p.user for p in prompts], samples, seed, temperature)
    styles = [answer_style(p.intent, a) for p, a in zip((p for p in prompts for _ in range(samples)), answers)]
    by_kind: dict[str, list[str | None]] = {}
    for prompt_index, prompt in enumerate(prompts):
        by_kind.setdefault(prompt.kind, []).extend(styles[prompt_index * samples : (prompt_index + 1) * samples])
    heldout = by_kind["familiar wording"] + by_kind["held-out wording"]
    lines = [f"temperature {temperature}: on topic, held-out {_share(heldout)} of {len(heldout)}"
             f" (familiar wording {_share(by_kind['familiar wording'])}, held-out wording "
             f"{_share(by_kind['held-out wording'])}); training prompts {_share(by_kind['training'])}"]
    counts = Counter(heldout)
    lines.append("  held-out answers by style: " + ", ".join(
        f"{style} {counts[style] / len(heldout):.1%}" for style in STYLES) + f", off topic {counts[None] / len(heldout):.1%}")
    return "\n".join(lines)


def _share(styles: list[str | None]) -> str:
    return f"{sum(s is not None for s in styles) / len(styles):.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo", help="a demo variant (demo, tiny) or a model folder")
    parser.add_argument("--samples", type=int, default=3, help="answers per prompt")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model_dir = (build_demo_model(args.model, home=REPO_ROOT / ".hhh") if args.model in VARIANTS
                 else Path(args.model))
    print(model_dir)
    for temperature in args.temperatures:
        print(report(model_dir, args.samples, temperature, args.seed), flush=True)


if __name__ == "__main__":
    main()
