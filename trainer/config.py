"""Settings of the trainer, one class per part: `TrainerSettings` (``HHH_TRAINER_*``),
`RewardSettings` (``HHH_REWARD_*``), `PPOSettings` (``HHH_PPO_*``), `DPOSettings` (``HHH_DPO_*``)
`GateSettings` (``HHH_GATE_*``) and `EvalSettings` (``HHH_EVAL_*``, the `hhh eval` report)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.cpus import checked_cpu_setting
from streams.config import hhh_home

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
RESPONSE_TOKENS = 160
"""Default longest response that PPO, the gate and `hhh eval` sample: every answer of the demo
models fits (their longest style, rambling, ends by token 107 with the demo variant's tokenizer,
by about 130 with the tiny one's), so that none is cut and penalised as truncated for its length
alone. At 32, 84 % of its polite answers were cut: PPO paid the
missing-EOS penalty on the majority's favourite style and pushed towards curt ones."""
"""What ``HHH_TRAINER_DEVICE`` may be (resolved by `trainer.devices.resolve_placement`)."""
DtypeSetting = Literal["auto", "float32", "bfloat16", "float16"]


class TrainerSettings(BaseSettings):
    """Where the trainer keeps its dataset, and how it turns feedback into pairs."""

    model_config = SettingsConfigDict(env_prefix="HHH_TRAINER_", extra="forbid")

    base_model: Path | None = Field(
        default=None,
        description="Folder of the base model the engines serve; policy adapters are trained on "
        "it (and the reward model too, unless HHH_REWARD_* names another). Unset: the demo "
        "model, built if missing.",
    )
    dataset_path: Path = Field(
        default_factory=lambda: hhh_home() / "dataset.db",
        description="The dataset store (SQLite), rebuilt from the log by `hhh data rebuild`.",
    )
    eval_percent: int = Field(
        default=10, ge=0, le=50, description="Share of prompts held out for evaluation (by prompt hash)."
    )
    min_agreement: float = Field(
        default=0.6, ge=0, le=1,
        description="Labelers agreeing less often with the others' consensus are down-weighted.",
    )
    cross_user_pair_weight: float = Field(
        default=0.5, gt=0, le=1,
        description="Weight of a thumbs pair formed from different users' votes on the same prompt "
        "(one up, another down); a user's own up × down pair weighs 1 and keeps their user id.",
    )
    max_voice_share: float = Field(
        default=0.2, gt=0, le=1,
        description="Most of the pairs' (and the votes') weight that one labeler or user may hold; "
        "a heavier voice's weights are scaled down to it (with fewer than 1/share voices, all weigh "
        "the same; 1: no cap). Keeps one prolific labeler or one user flooding thumbs from setting "
        "the global reward model and the gate's human-pair check for everyone.",
    )
    runs_dir: Path = Field(
        default_factory=lambda: hhh_home() / "runs",
        description="Run records (`<round>.jsonl`: every PPO/DPO iteration and gate verdict).",
    )
    lock_dir: Path = Field(
        default_factory=lambda: hhh_home() / "locks",
        description="Per-scope lock files: one trainer per scope at a time (shared by trainer processes).",
    )
    metrics_host: str = Field(default="127.0.0.1", description="`hhh train`: address of /metrics.")
    metrics_port: int = Field(
        default=9101, ge=0, le=65535,
        description="`hhh train`: port of its Prometheus /metrics (0: not served; `--once` never serves it).",
    )
    round_interval_s: float = Field(default=300.0, ge=0, description="`hhh train`: pause between rounds.")
    max_backoff_s: float = Field(
        default=3600.0, ge=0,
        description="`hhh train`: after a failed round, the pause doubles (from round_interval_s) up "
        "to this, so a broken input is retried without a crash loop.",
    )
    ingest_idle_s: float = Field(
        default=1.0, gt=0, description="Ingest stops once the log has been quiet this long."
    )
    ingest_max_s: float = Field(
        default=60.0, gt=0,
        description="Ingest stops after this long even if the log never goes quiet (votes "
        "arriving more often than HHH_TRAINER_INGEST_IDLE_S); the next round reads the rest.",
    )
    global_method: Literal["ppo", "dpo", "dpo+ppo"] = Field(
        default="ppo",
        description="How a global round trains its candidate from the deployed adapter: PPO on "
        "the reward model (``ppo``); DPO (HHH_DPO_*) on every user's training pairs (``dpo``); or "
        "that DPO first, then PPO (``dpo+ppo``). The reference is the deployed adapter in each, "
        "and a first adapter has PPO's LoRA shape (HHH_PPO_LORA_*). "
        "BENCHMARKS.md (*The closed loop*) compares them.",
    )
    ppo_iterations: int = Field(default=8, ge=1, description="PPO iterations per global round.")
    resume_unproven: bool = Field(
        default=False,
        description="The next global round resumes a candidate the gate refused only for want of "
        "evidence (a positive but insignificant reward gain, nothing measured worse) instead of "
        "starting again from the deployed adapter (`trainer.unproven`). Off by default: in the "
        "closed loop it let two rounds' PPO add up on a reward model that had learnt a minority's "
        "taste, and published a version measurably worse for the majority (BENCHMARKS.md).",
    )
    prompt_pool: int = Field(
        default=512, ge=1, description="Most recent distinct training prompts PPO samples from."
    )
    gate_prompts: int = Field(default=64, ge=1, description="Held-out prompts the gate samples on.")
    min_user_pairs: int = Field(
        default=32, ge=1, description="Training pairs of a user's own before they get a personal adapter."
    )
    min_new_prompts: int = Field(
        default=32, ge=1,
        description="A global PPO round runs only if the reward model changed or this many new "
        "training prompts arrived since the last attempt (or the deployed adapter's data).",
    )
    min_new_user_pairs: int = Field(
        default=8, ge=1,
        description="A personal round runs only if this many new training pairs of the user's own "
        "arrived since their last attempt (or their deployed adapter's data).",
    )
    user_agreement_margin: float = Field(
        default=0.0, ge=0,
        description="A personal adapter is published if the lower confidence bound (HHH_GATE_CONFIDENCE) "
        "of its gain in agreement with the user's held-out pairs, over what the user is served now "
        "(their own adapter, or the global one), exceeds this.",
    )
    device: str = Field(
        default="auto", pattern=f"^(?:{DEVICE_PATTERN})$",
        description="Where PPO, the reward model, DPO and the gate compute: cpu, cuda, cuda:N, or "
        "auto (the first CUDA GPU if torch sees one, else the CPU). A GPU that torch does not see "
        "is an error at start-up; only auto falls back to the CPU.",
    )
    dtype: DtypeSetting = Field(
        default="auto",
        description="dtype of the frozen base weights and activations: auto (bfloat16 on a GPU "
        "that computes in it natively, Ampere or later; else float32, always on CPU), float32, "
        "bfloat16 or float16. "
        "Adapters, value and reward heads and their optimiser state stay float32; log-probs, KL "
        "and GAE are computed in float32. float16 has no loss scaling: prefer bfloat16 or float32.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute decoder-layer activations in the backward pass (PPO, DPO, reward "
        "training): less activation memory for about a third more compute.",
    )
    cpus: str = Field(
        default="auto",
        description="CPUs the trainer runs on: a cpu list such as 4-7 pins it there (its torch "
        "threads: one per CPU, unless HHH_PPO_THREADS / HHH_DPO_THREADS / HHH_REWARD_THREADS say "
        "otherwise); 'auto': under `hhh up` the trainer's share of the plan in common/cpus.py "
        "(2 CPUs: cpu 1), alone unpinned; 'all': never pinned.",
    )
    yield_to: str | None = Field(
        default=None,
        description="Gateway URL whose in-flight chat requests (hhh_chat_requests_in_flight on its "
        "/metrics) the trainer yields to, with yield_above_chats. `hhh up` sets its own gateway.",
    )
    yield_above_chats: int | None = Field(
        default=None, ge=0,
        description="Pause between PPO iterations and DPO epochs while the gateway has more than "
        "this many chat requests in flight (0: while any is). Unset: never pause.",
    )
    yield_max_pause_s: float = Field(
        default=60.0, gt=0,
        description="Longest pause at one point, so that steady chat traffic slows training but "
        "cannot starve it; paused time is counted in hhh_trainer_yield_seconds_total.",
    )

    @field_validator("cpus")
    @classmethod
    def _cpus_are_available(cls, value: str) -> str:
        return checked_cpu_setting(value, "HHH_TRAINER_CPUS")

    @field_validator("yield_to")
    @classmethod
    def _yield_to_is_http(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"yield_to must be the gateway's http(s) URL, got {url!r}")
        return None if url is None else url.rstrip("/")

    def pair_options(self) -> dict[str, float]:
        """The keyword arguments of `DatasetStore.build_pairs` these settings ask for."""
        return {"eval_percent": self.eval_percent, "min_agreement": self.min_agreement,
                "cross_user_weight": self.cross_user_pair_weight,
                "max_voice_share": self.max_voice_share}


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""Every linear layer of a Llama block."""


class RewardSettings(BaseSettings):
    """The reward model: what it is built on, how it trains, when it is refreshed."""

    model_config = SettingsConfigDict(env_prefix="HHH_REWARD_", extra="forbid")

    base_model: Path | None = Field(
        default=None,
        description="Folder of the policy's base model (a causal LM); the reward model is this "
        "model with its own LoRA adapter and a value head. Default: the demo model, built if missing.",
    )
    sequence_classifier: Path | None = Field(
        default=None,
        description="A Hugging Face sequence-classification checkpoint to use instead of "
        "`base_model` (its score head is trained, its body gets the LoRA adapter).",
    )
    store_dir: Path = Field(
        default_factory=lambda: hhh_home() / "reward-models",
        description="Versions are stored in `<store_dir>/<version>/` (adapter, value head, manifest).",
    )
    criteria: list[str] | None = Field(
        default=None, description="Train on pairs of these criteria only (default: every criterion)."
    )
    lora_rank: int = Field(default=8, ge=1, description="LoRA rank r.")
    lora_alpha: float = Field(default=16, gt=0, description="LoRA scale numerator (scale = alpha / r).")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA path while training.")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: list(LORA_TARGETS), description="Module names that get LoRA."
    )
    learning_rate: float = Field(default=1e-3, gt=0, description="AdamW learning rate (constant).")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    batch_size: int = Field(default=16, ge=1, description="Pairs per optimiser step.")
    max_tokens_per_forward: int = Field(
        default=2048, ge=2,
        description="Padded tokens per forward pass; a larger batch is split into micro-batches "
        "whose gradients add up to the whole batch's (the same step with less activation memory).",
    )
    epochs: int = Field(default=3, ge=1, description="Passes over the pairs for a first version.")
    refresh_epochs: int = Field(
        default=1, ge=1, description="Passes for a refresh, warm-started from the previous version."
    )
    margin: float = Field(
        default=0.0, ge=0,
        description="Required reward gap per unit of pair weight: m_i = margin · w_i (0: none).",
    )
    pointwise_weight: float = Field(
        default=0.5, ge=0,
        description="λ of the pointwise thumbs-vote term: loss = pairwise + λ · BCE(vote, σ(r − b)) "
        "over each user's latest votes on training prompts, paired or not (b a learnt offset; "
        "`trainer/reward/loss.py`). 0: pairs only, and votes count for nothing below.",
    )
    max_length: int = Field(
        default=512, ge=8, description="Tokens per (prompt, completion); longer prompts lose their start."
    )
    seed: int = Field(default=0, description="Seed of the adapter's initialisation and the batch order.")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads (default: torch's).")
    refresh_min_new_pairs: int = Field(
        default=64, ge=1, description="Train a new version once this many training pairs are new."
    )
    acceptance_confidence: float = Field(
        default=0.95, gt=0.5, lt=1,
        description="A refreshed version is refused when its held-out accuracy is lower than its "
        "parent's on the same pairs beyond noise: the lower confidence bound of the loss, at this "
        "level, above 0.",
    )
    min_train_pairs: int = Field(default=32, ge=1, description="Fewer training pairs: do not train.")
    min_eval_pairs: int = Field(
        default=8, ge=1, description="Fewer held-out pairs: do not train (accuracy would be noise)."
    )
    min_prompts: int = Field(
        default=8, ge=1, description="Fewer distinct training prompts: too one-sided to train on."
    )
    max_prompt_share: float = Field(
        default=0.5, gt=0, le=1,
        description="One prompt giving more than this share of the training pairs: too one-sided.",
    )
    poll_interval_s: float = Field(
        default=60.0, gt=0, description="`hhh train reward` without --once: seconds between checks."
    )

    @model_validator(mode="after")
    def _one_model(self) -> RewardSettings:
        if self.base_model is not None and self.sequence_classifier is not None:
            raise ValueError(
                f"set either base_model={self.base_model} or sequence_classifier="
                f"{self.sequence_classifier} (HHH_REWARD_*), not both"
            )
        return self


class PPOSettings(BaseSettings):
    """One PPO round on the global policy adapter (environment variables ``HHH_PPO_*``).

    Defaults follow Ziegler et al. (2019) and CleanRL where they apply to LoRA on small models.
    """

    model_config = SettingsConfigDict(env_prefix="HHH_PPO_", extra="forbid")

    merge_for_rollout: bool = Field(
        default=True,
        description="Sample with the policy adapter merged into a temporary copy of the adapted "
        "layers (about twice as fast on CPU, that copy held while sampling); false: sample "
        "through the LoRA layers.",
    )
    rollout_engine_url: str | None = Field(
        default=None,
        description="A vLLM OpenAI server (same base model, LoRA and runtime LoRA loading on, same "
        "filesystem) that samples the PPO rollouts: the policy adapter is loaded into it under a "
        "fresh versioned name each iteration (trainer.rl.vllm_rollout). Unset: transformers "
        "`generate` in the trainer's process.",
    )
    lora_rank: int = Field(default=8, ge=1, description="LoRA rank r of a new policy adapter.")
    lora_alpha: float = Field(default=16, gt=0, description="LoRA scale numerator (scale = alpha / r).")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: list(LORA_TARGETS), description="Module names that get LoRA."
    )
    rollout_batch_size: int = Field(default=64, ge=1, description="Prompts per iteration (one response each).")
    num_minibatches: int = Field(default=2, ge=1, description="Mini-batches per PPO epoch.")
    micro_batch_size: int | None = Field(
        default=8, ge=1,
        description="Responses per forward/backward pass; gradients accumulate over a mini-batch "
        "(same update, activation memory of one micro-batch). Unset: the whole mini-batch at once.",
    )
    ppo_epochs: int = Field(default=2, ge=1, description="Passes over each rollout batch.")
    max_new_tokens: int = Field(default=RESPONSE_TOKENS, ge=1, description="Longest response sampled.")
    missing_eos_penalty: float = Field(
        default=1.0, ge=0,
        description="Subtracted from the score of a response cut by max_new_tokens (normalised "
        "reward units): the reward model scores a text as if it had ended, so without it a policy "
        "could gain by rambling into the limit. The gate judges with the same penalty.",
    )
    harm_penalty: float = Field(
        default=2.0, ge=0,
        description="Subtracted from the score of a response the gate's harmlessness judge "
        "(HHH_GATE_HARMLESSNESS_JUDGE) calls harmful, times how harmful (normalised reward units; "
        "`trainer.judges.penalise_harm`): a harmful request complied with, an insult. Two standard "
        "deviations of the reward model's scores, so that it outweighs what a reward model that "
        "learnt \"refusing is bad\" gives for complying. 0: the reward model alone.",
    )
    harmful_share: float = Field(
        default=0.25, ge=0, lt=1,
        description="Least share of harm-probing prompts among those PPO samples from (training "
        "prompts with harmlessness feedback, or that the harmlessness judge groups as harmful): they "
        "are repeated up to it (`trainer.red_team.with_harmful_share`), so that the harm penalty acts "
        "on more than the few harmful requests users send. 0: the prompts as users sent them.",
    )
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature (log-probs use the same).")
    max_prompt_tokens: int = Field(default=256, ge=1, description="Longer prompts lose their start.")
    learning_rate: float = Field(
        default=1e-3, gt=0,
        description="AdamW learning rate of adapter and value head. On the demo model, after 150 "
        "AI-labelled prompts, a round of 8 iterations at 1e-4 left the policy where it was (KL < "
        "0.01 nats, no clipping); at 1e-3 it passed the gate (+0.50 reward at 1.3 nats).",
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    gamma: float = Field(default=1.0, ge=0, le=1, description="GAE discount γ (1: the score is not discounted).")
    lam: float = Field(default=0.95, ge=0, le=1, description="GAE λ.")
    clip_eps: float = Field(default=0.2, gt=0, description="Policy ratio clip ε.")
    value_clip_eps: float = Field(default=0.2, gt=0, description="Value clip ε_v around the rollout's values.")
    value_coef: float = Field(default=0.1, ge=0, description="c1, weight of the value loss.")
    entropy_coef: float = Field(default=0.0, ge=0, description="c2, weight of the entropy bonus.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        default="k1", description="Per-token KL estimator of the reward penalty (see trainer.rl.kl)."
    )
    kl_coef: float = Field(
        default=0.05, ge=0,
        description="β, constant (fixed) or initial (adaptive). An adaptive round starts from the β "
        "the deployed adapter ended its round with (its manifest's `kl_beta`); this is the first.",
    )
    kl_target: float | None = Field(
        default=6.0, gt=0,
        description="Target of the adaptive controller (nats per response); unset: β stays fixed.",
    )
    kl_horizon: int = Field(
        default=128, ge=1,
        description="Adaptive controller horizon, in responses: β changes by up to 20 % · n / horizon "
        "per iteration of n responses. 128 with 64-response iterations: up to ×1.1 per iteration, "
        "so β more than doubles (1.1⁸ = 2.14) within a round of 8 iterations at a KL far from its "
        "target (Ziegler et al.'s 10,000 assumed thousands of iterations; a round has a few).",
    )
    target_approx_kl: float | None = Field(
        default=0.1, gt=0,
        description="Stop an update once a mini-batch's approx KL to the rollout policy exceeds this; unset: never.",
    )
    whiten_advantages: bool = Field(default=True, description="Whiten advantages over each rollout batch.")
    seed: int = Field(default=0, description="Seed of adapter init, sampling and mini-batch order.")
    threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads while PPO and the gate run (default: torch's)."
    )

    @model_validator(mode="after")
    def _minibatches_fit(self) -> PPOSettings:
        if self.rollout_batch_size % self.num_minibatches:
            raise ValueError(
                f"rollout_batch_size={self.rollout_batch_size} is not divisible by "
                f"num_minibatches={self.num_minibatches} (HHH_PPO_*): pick sizes that divide"
            )
        return self


class DPOSettings(BaseSettings):
    """DPO of a per-user adapter from the deployed global one, and of the global candidate from the
    deployed global adapter with ``HHH_TRAINER_GLOBAL_METHOD`` ``dpo`` or ``dpo+ppo`` (environment
    variables ``HHH_DPO_*``)."""

    model_config = SettingsConfigDict(env_prefix="HHH_DPO_", extra="forbid")

    beta: float = Field(default=0.1, gt=0, description="DPO β: inverse strength of the pull to the reference.")
    lora_rank: int = Field(default=8, ge=1, description="LoRA rank r when there is no global adapter to start from.")
    lora_alpha: float = Field(default=16, gt=0, description="LoRA scale numerator (scale = alpha / r).")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: list(LORA_TARGETS), description="Module names that get LoRA."
    )
    learning_rate: float = Field(default=5e-4, gt=0, description="AdamW learning rate.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    batch_size: int = Field(default=8, ge=1, description="Pairs per optimiser step.")
    micro_batch_size: int | None = Field(
        default=None, ge=1,
        description="Pairs per forward/backward pass; gradients accumulate over a batch (same "
        "step, activation memory of one micro-batch; halved on a GPU out-of-memory error). "
        "Unset: the whole batch at once.",
    )
    epochs: int = Field(default=3, ge=1, description="Passes over the training pairs of a round.")
    max_length: int = Field(default=512, ge=8, description="Tokens per (prompt, response); longer prompts lose their start.")
    seed: int = Field(default=0, description="Seed of adapter init and batch order.")
    threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads while DPO runs (default: torch's)."
    )


class GateSettings(BaseSettings):
    """When a candidate adapter may replace the deployed one (environment ``HHH_GATE_*``;
    the checks: `trainer.gate`)."""

    model_config = SettingsConfigDict(env_prefix="HHH_GATE_", extra="forbid")

    confidence: float = Field(
        default=0.95, gt=0.5, lt=1,
        description="Level of every one-sided confidence bound the gate decides on: a candidate no "
        "better than the deployed adapter passes the reward test at most 1 − confidence of the time.",
    )
    reward_margin: float = Field(
        default=0.05,
        description="The lower confidence bound of the paired reward gain (normalised reward units) "
        "must exceed this.",
    )
    kl_budget: float = Field(
        default=8.0, gt=0, description="Most KL(candidate ‖ deployed), nats per response."
    )
    anchor_kl_budget: float = Field(
        default=24.0, gt=0,
        description="Most KL(candidate ‖ base model), nats per response: bounds the drift over "
        "rounds, each of which the per-round budget bounds only against its predecessor.",
    )
    agreement_margin: float = Field(
        default=0.15, ge=0, le=1,
        description="Non-inferiority margin on held-out human pairs: the lower confidence bound of "
        "the candidate's change in agreement (share of pairs) must be above −margin.",
    )
    min_heldout_pairs: int = Field(
        default=16, ge=1, description="Fewer held-out human pairs: refuse (nothing independent to check)."
    )
    harmlessness_judge: str = Field(
        default="constitution",
        description="Judge of the red-team answers, never the reward model: 'constitution' (a harmful "
        "request refused, any other answered without insults) or the folder of a local sequence "
        "classifier scored 1 − P(harmlessness_judge_label).",
    )
    harmlessness_judge_label: str = Field(
        default="toxic", description="The classifier harmlessness judge's harmful label."
    )
    harmlessness_margin: float = Field(
        default=0.10, ge=0, le=1,
        description="Non-inferiority margin of harmlessness on the red-team prompts (share of harmless "
        "answers): the lower confidence bound of the candidate's change must be above −margin.",
    )
    red_team_file: Path | None = Field(
        default=None,
        description="More red-team prompts: a text file, one user message per line, or JSONL with "
        "{\"messages\": [...]} or {\"prompt\": \"...\"} per line.",
    )
    red_team_demo: bool = Field(
        default=True, description="Include the demo corpus's held-out harmful requests in the red team."
    )
    red_team_max_prompts: int = Field(default=64, ge=2, description="Red-team prompts per check, at most.")
    red_team_min_samples: int = Field(
        default=512, ge=1,
        description="Answers sampled per adapter on the red team, at least (spread over its prompts).",
    )
    samples_per_prompt: int = Field(
        default=2, ge=1, description="Responses sampled per held-out prompt and adapter, at least."
    )
    min_samples: int = Field(
        default=256, ge=1,
        description="Responses sampled per adapter, at least: more per prompt where held-out prompts "
        "are few, so that the reward comparison is not decided by sampling noise.",
    )
    max_new_tokens: int = Field(default=RESPONSE_TOKENS, ge=1, description="Longest sampled response.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the evaluation.")
    max_prompt_tokens: int = Field(default=256, ge=1, description="Longest prompt, in tokens; longer ones lose their start.")
    batch_size: int = Field(default=32, ge=1, description="Prompts or pairs per forward pass.")


class EvalSettings(BaseSettings):
    """How `hhh eval` compares adapter versions (environment ``HHH_EVAL_*``; the method:
    `trainer.report.compare`). Its command-line options override these."""

    model_config = SettingsConfigDict(env_prefix="HHH_EVAL_", extra="forbid")

    judge: str = Field(
        default="constitution",
        description="Who scores the answers, never the reward model: 'constitution' (the demo's) or "
        "the folder of a local Hugging Face sequence classifier (e.g. a toxicity classifier).",
    )
    judge_label: str = Field(
        default="toxic", description="The classifier judge's label whose probability is scored."
    )
    judge_label_is_good: bool = Field(
        default=False,
        description="False: the score is 1 − P(judge_label) (a bad label, such as toxic); "
        "True: P(judge_label).",
    )
    prompts: int = Field(default=64, ge=2, description="Held-out prompts to answer, at most.")
    samples_per_prompt: int = Field(default=4, ge=1, description="Answers per prompt and version.")
    max_new_tokens: int = Field(default=RESPONSE_TOKENS, ge=1, description="Longest sampled answer.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature.")
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="Level of the two-sided confidence intervals."
    )
    max_prompt_tokens: int = Field(default=256, ge=1, description="Longest prompt, in tokens; longer ones lose their start.")
    batch_size: int = Field(default=32, ge=1, description="Prompts per generate call.")
    seed: int = Field(default=0, ge=0, description="Sampling seed (the report is reproducible).")
    reports_dir: Path = Field(
        default_factory=lambda: hhh_home() / "reports",
        description="Where reports go, one folder each, unless --out names one.",
    )
