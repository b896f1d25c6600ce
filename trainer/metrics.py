"""The trainer's Prometheus metrics, served by `hhh train` on ``HHH_TRAINER_METRICS_PORT``.

One module, so that the deploy files can be checked against what is exported
(`tests/deploy/test_monitoring.py`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ITERATION_STAT = Gauge(
    "hhh_trainer_iteration_stat",
    "The latest PPO or DPO iteration's statistics (reward_mean, kl, entropy, clip_fraction, "
    "approx_kl, value_loss, explained_variance, response_length, beta, loss, ...).",
    ["run", "stat"],
)
YIELD_SECONDS = Counter(
    "hhh_trainer_yield_seconds",
    "Seconds the trainer paused for chat traffic (HHH_TRAINER_YIELD_ABOVE_CHATS).",
)
ROUNDS = Counter("hhh_trainer_rounds", "Training rounds finished (ingest to publish).")
LAST_ROUND = Gauge(
    "hhh_trainer_last_round_timestamp_seconds", "When the last training round finished (Unix time)."
)
VERDICTS = Counter(
    "hhh_trainer_verdicts", "Candidate adapters the gate published or refused, by scope kind.",
    ["scope_kind", "outcome"],
)
SCOPE_FAILURES = Counter(
    "hhh_trainer_scope_failures",
    "Scope rounds (global PPO, a user's DPO) that failed with an error; the round went on with "
    "the next scope, and the error is in the log and the run record.",
    ["scope_kind"],
)
ROUND_FAILURES = Counter(
    "hhh_trainer_round_failures",
    "Rounds that failed before their scopes (ingest, reward model); `hhh train` backs off and retries.",
)
REWARD_REFRESHES = Counter(
    "hhh_reward_refreshes_total",
    "Reward-model refresh checks by outcome (trained, up_to_date, or why the pairs were refused).",
    ["outcome"],
)
LABELER_AGREEMENT = Gauge(
    "hhh_trainer_labeler_agreement",
    "How much labelers agree, from the latest round's pairs: krippendorff_alpha, pairwise "
    "(share of agreeing pairs of judgements), lowest_labeler (the least agreeing labeler's "
    "leave-one-out agreement with the consensus), labelers (with an overlap), down_weighted "
    "(labelers below HHH_TRAINER_MIN_AGREEMENT). Per labeler: `hhh data stats`.",
    ["stat"],
)
GATE_STAT = Gauge(
    "hhh_trainer_gate_stat",
    "The latest gate measurement per scope kind: reward_gain and its lower bound, kl_to_deployed, "
    "kl_to_base, heldout_pair_agreement (global), or heldout_pair_agreement and "
    "global_pair_agreement (the latest user's).",
    ["scope_kind", "stat"],
)
