"""Where do PPO and DPO take the demo model's answer styles, with a reward that is known right?

    .venv/bin/python -m bench.style_drift [--method ppo|dpo-best-worst|dpo-warm-over-plain|
                                                    dpo-approved-over-rest]
                                          [--iterations N] [--every 4] [--category everyday]
                                          [--lam 0.95] [--entropy-coef 0.0] [--samples 256]
                                          [--seed 0] [--reward-models DIR --reward-version N]
                                          [--majority-reward]

The closed loop (`bench/loop.py`) asks the global adapter to give the majority warm answers to
the question asked. This benchmark takes the reward model out of that question. The reward is
the demo constitution (`trainer.judges.ConstitutionJudge`: a warm answer on topic scores 3, a
plain one on topic 2, a refusal of a harmless request −1, a rude one −2 per insult), or with
``--reward-models`` (a reward-model store, such as a loop run's ``home/reward-models``) that
store's version ``--reward-version``, or with ``--majority-reward`` the majority's approval
itself (1 for a warm answer to the question asked, 0 for anything else). A fresh LoRA adapter
on the demo base is trained on training prompts of ``--category`` by

- ``ppo``: the trainer's own `PPOTrainer` with default `PPOSettings` (GAE λ and entropy
  coefficient as given), ``--iterations`` iterations on the reward (16 unless given);
- ``dpo-best-worst``: the trainer's `DPOTrainer` with default `DPOSettings`, on pairs of the
  best over the worst of 4 answers the base samples to each prompt, by the reward (what the
  demo labeler sends, as pairs);
- ``dpo-warm-over-plain``: the same, on pairs of a warm answer on topic over a plain one on
  topic, where the 4 answers hold both (the contrast the majority's thumbs draw);
- ``dpo-approved-over-rest``: the same, on pairs of an answer the majority approves (warm, on
  topic, not rude, not rambling, no refusal) over one of the others it does not, where the 4
  answers hold both (what the majority's own up × down pairs are).

With ``--iterations`` after a DPO method, PPO (as ``ppo``) then trains the DPO adapter further:
what a global round with ``HHH_TRAINER_GLOBAL_METHOD=dpo+ppo`` does.

Before training, and every ``--every`` PPO iterations or after DPO, it samples one answer to each
of ``--samples`` other training prompts (same category) at temperature 1, from a random state of
its own (so the training run is the same whatever ``--every``), and prints the mix of what the
answers show (refusal, rude, rambling, warm, or plain: none of these), each kind's mean reward
and share on topic, and the share of warm answers on topic (the majority's taste in
`bench/loop.py`, harmful requests aside).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from bench.loop import TASTES
from trainer.config import DPOSettings, PPOSettings, RewardSettings
from trainer.demo_model.build import build_demo_model
from trainer.demo_model.corpus import generate_dialogues, infer_intent, intent_by_name
from trainer.demo_model.labeler import (
    answers_the_question,
    is_insulting,
    is_polite,
    is_rambling,
    is_refusal,
)
from trainer.judges import ConstitutionJudge, last_user_message
from trainer.reward.scorer import RewardScorer
from trainer.rl.dpo import DPOTrainer, TextPair, load_dpo_stack
from trainer.rl.evaluation import RewardFn
from trainer.rl.models import PolicyStack, load_policy_stack, lora_config
from trainer.rl.ppo import PPOTrainer
from trainer.rl.rollout import Conversation, sample_rollout

KINDS = ("warm", "plain", "rambling", "refusal", "rude")
SAMPLING_BATCH = 64
ANSWERS_PER_PAIR_PROMPT = 4
TRAINING_PROMPTS = 512
REPO_ROOT = Path(__file__).resolve().parents[1]


def kind_of(answer: str) -> str:
    """What an answer shows, the first that applies: refusal, rude, rambling, warm, else plain."""
    for kind, shows in (("refusal", is_refusal), ("rude", is_insulting), ("rambling", is_rambling),
                        ("warm", is_polite)):
        if shows(answer):
            return kind
    return "plain"


majority_approves = TASTES["majority"]
"""The majority's thumb in `bench/loop.py`: for a harmless request, a warm answer on topic."""


def majority_approval(prompts: list[Conversation], answers: list[str]) -> torch.Tensor:
    """(N,) 1 where the majority approves the answer (`majority_approves`), else 0: a reward."""
    intents = [infer_intent(last_user_message(prompt)) for prompt in prompts]
    return torch.tensor([float(intent is not None and majority_approves(intent, answer))
                         for intent, answer in zip(intents, answers)])


def prompts_of(category: str, count: int, seed: int) -> list[tuple[str, Conversation]]:
    """(intent, one-turn conversation) of `count` corpus dialogues of `category` ("all": any)."""
    chosen: list[tuple[str, Conversation]] = []
    for dialogue in generate_dialogues(20 * count, seed=seed):
        if category == "all" or intent_by_name(dialogue.intent).category == category:
            chosen.append((dialogue.intent, [dialogue.messages[-1]]))
        if len(chosen) == count:
            return chosen
    raise ValueError(f"fewer than {count} prompts of category {category!r}")


def sample(stack: PolicyStack, conversations: list[Conversation], seed: int) -> list[str]:
    """One answer per conversation at temperature 1, from a random state of its own."""
    settings = PPOSettings()
    answers: list[str] = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(conversations), SAMPLING_BATCH):
            answers += sample_rollout(stack, conversations[start : start + SAMPLING_BATCH],
                                      max_new_tokens=settings.max_new_tokens, temperature=1.0,
                                      max_prompt_tokens=settings.max_prompt_tokens).responses
    return answers


def style_mix(stack: PolicyStack, reward: RewardFn, prompts: list[tuple[str, Conversation]],
              seed: int) -> str:
    """One line: per kind, its share, mean reward and share on topic."""
    conversations = [c for _, c in prompts]
    answers = sample(stack, conversations, seed)
    scores = reward(conversations, answers).tolist()
    by_kind: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for (intent, _), answer, score in zip(prompts, answers, scores):
        by_kind[kind_of(answer)].append((score, answers_the_question(intent, answer)))
    parts = []
    for kind in KINDS:
        rows = by_kind.get(kind, [])
        if rows:
            mean = statistics.mean(s for s, _ in rows)
            on_topic = statistics.mean(t for _, t in rows)
            parts.append(f"{kind} {len(rows) / len(answers):.0%} (score {mean:+.2f}, "
                         f"on topic {on_topic:.0%})")
    warm_on_topic = sum(t for _, t in by_kind.get("warm", [])) / len(answers)
    return f"{'; '.join(parts)}; warm and on topic {warm_on_topic:.1%}"


def dpo_pairs(stack: PolicyStack, reward: RewardFn, prompts: list[tuple[str, Conversation]],
              method: str, seed: int) -> list[TextPair]:
    """`ANSWERS_PER_PAIR_PROMPT` base answers per prompt, made into at most one pair each."""
    conversations = [c for _, c in prompts]
    samples = [sample(stack, conversations, seed + k) for k in range(ANSWERS_PER_PAIR_PROMPT)]
    pairs = []
    for index, (intent, conversation) in enumerate(prompts):
        answers = [answers_of_prompt[index] for answers_of_prompt in samples]
        if method == "dpo-best-worst":
            scores = reward([conversation] * len(answers), answers).tolist()
            best = max(range(len(answers)), key=scores.__getitem__)
            worst = min(range(len(answers)), key=scores.__getitem__)
            if scores[best] > scores[worst]:
                pairs.append(TextPair(conversation, answers[best], answers[worst]))
        elif method == "dpo-approved-over-rest":
            approved = [a for a in answers if majority_approves(intent, a)]
            rest = [a for a in answers if not majority_approves(intent, a)]
            if approved and rest:
                pairs.append(TextPair(conversation, approved[0], rest[0]))
        else:
            on_topic = [a for a in answers if answers_the_question(intent, a)]
            warm = [a for a in on_topic if kind_of(a) == "warm"]
            plain = [a for a in on_topic if kind_of(a) == "plain"]
            if warm and plain:
                pairs.append(TextPair(conversation, warm[0], plain[0]))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=("ppo", "dpo-best-worst", "dpo-warm-over-plain",
                                              "dpo-approved-over-rest"),
                        default="ppo")
    parser.add_argument("--iterations", type=int,
                        help="PPO iterations (after DPO with a DPO method; default: 16 for ppo, "
                        "0 otherwise)")
    parser.add_argument("--every", type=int, default=4, help="PPO iterations between measurements")
    parser.add_argument("--category", choices=("everyday", "myth", "harmful", "all"),
                        default="everyday")
    parser.add_argument("--lam", type=float, default=PPOSettings.model_fields["lam"].default)
    parser.add_argument("--entropy-coef", type=float,
                        default=PPOSettings.model_fields["entropy_coef"].default)
    parser.add_argument("--samples", type=int, default=256, help="answers sampled per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reward-models", type=Path, help="a reward-model store to use instead")
    parser.add_argument("--reward-version", type=int, help="its version (default: the latest)")
    parser.add_argument("--majority-reward", action="store_true",
                        help="reward 1 for an answer the majority approves, 0 otherwise")
    args = parser.parse_args()
    model_dir = build_demo_model("demo", home=REPO_ROOT / ".hhh")
    reward: RewardFn = majority_approval if args.majority_reward else ConstitutionJudge()
    if args.reward_models is not None:
        reward = RewardScorer.from_store(RewardSettings(store_dir=args.reward_models),
                                         args.reward_version).score
    training = prompts_of(args.category, TRAINING_PROMPTS, seed=31)
    measured = prompts_of(args.category, args.samples, seed=21)
    rewarded_by = ("the majority's approval" if args.majority_reward else "the constitution"
                   if args.reward_models is None else str(args.reward_models))
    torch.manual_seed(args.seed)
    settings = PPOSettings(lam=args.lam, entropy_coef=args.entropy_coef, seed=args.seed)
    if args.method == "ppo":
        stack = load_policy_stack(model_dir, None, lora_config(
            settings.lora_rank, settings.lora_alpha, settings.lora_target_modules))
        print(f"base: {style_mix(stack, reward, measured, args.seed)}", flush=True)
    else:
        dpo_settings = DPOSettings(seed=args.seed)
        stack = load_dpo_stack(model_dir, None, dpo_settings)
        print(f"{args.method} DPO on {rewarded_by}, {args.category} prompts")
        print(f"base: {style_mix(stack, reward, measured, args.seed)}", flush=True)
        pairs = dpo_pairs(stack, reward, training, args.method, args.seed + 1)
        epochs = DPOTrainer(stack, dpo_settings).train(pairs)
        print(f"after {len(epochs)} epochs on {len(pairs)} pairs: "
              f"{style_mix(stack, reward, measured, args.seed)}", flush=True)
    iterations = args.iterations if args.iterations is not None else 16 * (args.method == "ppo")
    if iterations == 0:
        return
    print(f"PPO on {rewarded_by}, {args.category} prompts, λ {args.lam}, entropy coefficient "
          f"{args.entropy_coef}, {settings.rollout_batch_size} responses an iteration")
    trainer = PPOTrainer(stack, reward, settings)
    while trainer.iterations_done < iterations:
        metrics = trainer.train([c for _, c in training],
                                min(args.every, iterations - trainer.iterations_done))[-1]
        print(f"iteration {metrics['iteration']}: reward {metrics['reward_mean']:+.2f}, KL "
              f"{metrics['kl']:.2f}, length {metrics['response_length']:.0f}; "
              f"{style_mix(stack, reward, measured, args.seed)}", flush=True)


if __name__ == "__main__":
    main()
