"""`hhh train`: the training daemon (`trainer.daemon`) and its one-part variant, on the embedded
defaults or the configured event log, adapter store and base model.

- `hhh train` runs rounds until interrupted, ``HHH_TRAINER_ROUND_INTERVAL_S`` apart; each
  round's steps are printed when it ends, and Prometheus metrics (`trainer.metrics`) are served
  on ``HHH_TRAINER_METRICS_PORT``. At start-up it re-announces every scope's current adapter
  version (see the daemon's docstring for why). `--once`: one round, then exit.
- `hhh train reward` ingests what the event log holds into the dataset store, then refreshes
  the reward model if enough new pairs arrived (`trainer.reward.refresh`), every
  ``HHH_REWARD_POLL_INTERVAL_S``. `--once`: one check, then exit: 0 when a version was stored or
  none was due, 1 when the pairs were refused (the message says why).
- `hhh eval [VERSION ...]` compares adapter versions (default: the base model and every
  ``global`` version) on held-out prompts with a judge that is not the reward model, and
  writes a report folder (`trainer.report`): Markdown, JSON and PNG plots.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `hhh train` and `hhh train reward`."""
    train = commands.add_parser(
        "train", help="train models from the feedback (HHH_TRAINER_*, HHH_REWARD_*, HHH_PPO_*, "
        "HHH_DPO_*, HHH_GATE_* settings); bare: the daemon",
    )
    train.add_argument("--once", action="store_true",
                       help="one round (ingest, reward model, PPO, gate, publish, per-user DPO), then exit")
    train.set_defaults(run=_train)
    actions = train.add_subparsers(dest="train_command", metavar="ACTION")
    reward = actions.add_parser(
        "reward",
        help="ingest new feedback and train a new reward-model version when enough new pairs "
        "arrived (HHH_REWARD_REFRESH_MIN_NEW_PAIRS); versions go to $HHH_HOME/reward-models/",
    )
    reward.add_argument("--once", action="store_true",
                        help="one round, then exit (1 if the pairs were too few or too one-sided)")
    reward.set_defaults(run=_train_reward)
    evaluate = commands.add_parser(
        "eval", help="compare adapter versions (and the base model) on held-out prompts with a "
        "judge that is not the reward model; write a Markdown report with plots and a JSON summary "
        "(HHH_EVAL_* settings)",
    )
    evaluate.add_argument(
        "versions", nargs="*", metavar="VERSION",
        help="'base', SCOPE@N (global@3, user:ann@1), N (global@N) or a scope (its current "
        "version); the first is the baseline. Default: base and every global version",
    )
    evaluate.add_argument("--out", type=Path, help="report folder (default: a new one under HHH_EVAL_REPORTS_DIR)")
    evaluate.add_argument("--judge", help="'constitution' or a sequence-classifier folder (HHH_EVAL_JUDGE)")
    evaluate.add_argument("--prompts", type=int, help="held-out prompts, at most (HHH_EVAL_PROMPTS)")
    evaluate.add_argument("--samples", type=int, help="answers per prompt and version (HHH_EVAL_SAMPLES_PER_PROMPT)")
    evaluate.add_argument("--prompts-from", choices=("log", "demo"), default="log",
                          help="the dataset's held-out prompts (what users sent; default) or the demo "
                          "corpus's held-out prompts")
    evaluate.set_defaults(run=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from serving.adapters.config import AdapterSettings
    from serving.adapters.store import AdapterStore
    from streams.backends import open_event_log
    from streams.config import hhh_home
    from trainer.config import DPOSettings, GateSettings, PPOSettings, RewardSettings, TrainerSettings
    from trainer.daemon import TrainingDaemon
    from trainer.demo_model.build import build_demo_model
    from trainer.devices import pin_to_cpus, placement_of
    from trainer.metrics import ROUND_FAILURES
    from trainer.reward.refresh import on_policy_base

    settings, reward = TrainerSettings(), RewardSettings()
    placement_of(settings)  # a GPU that is not there is refused before the demo model is built
    pin_to_cpus(settings)
    # The served model; where only the reward model's base is configured, that one.
    base_model = settings.base_model or reward.base_model or build_demo_model("demo", home=hhh_home())
    reward = on_policy_base(reward, base_model)
    with open_event_log() as event_log:
        daemon = TrainingDaemon(event_log, AdapterStore(AdapterSettings().store_root), base_model,
                                settings, reward, PPOSettings(), DPOSettings(), GateSettings())
        daemon.announce_current()
        if not args.once and settings.metrics_port:
            start_http_server(settings.metrics_port, settings.metrics_host)
        failures = 0
        while True:
            try:
                report = daemon.run_round()
            except Exception:  # noqa: BLE001 - a failed round is retried later, never a crash loop
                if args.once:
                    raise
                failures += 1
                ROUND_FAILURES.inc()
                pause = min(max(settings.round_interval_s, 1.0) * 2**failures, settings.max_backoff_s)
                logger.exception("the round failed (%d in a row); the next one in %.0f s", failures, pause)
                time.sleep(pause)
                continue
            failures = 0
            print(f"round {report.round_id}:", *report.steps, sep="\n  ", flush=True)
            if args.once:
                return 0
            time.sleep(settings.round_interval_s)


def _train_reward(args: argparse.Namespace) -> int:
    from streams.backends import open_event_log
    from trainer.config import RewardSettings, TrainerSettings
    from trainer.preferences.ingest import ingest_available
    from trainer.preferences.store import DatasetStore
    from trainer.devices import pin_to_cpus, placement_of
    from trainer.reward.refresh import on_policy_base, refresh_reward_model

    trainer_settings = TrainerSettings()
    placement = placement_of(trainer_settings)  # a GPU that is not there: refused before any work
    pin_to_cpus(trainer_settings)
    settings = on_policy_base(RewardSettings(), trainer_settings.base_model)
    while True:
        dataset = DatasetStore(trainer_settings.dataset_path)
        try:
            with open_event_log() as event_log:
                stored = ingest_available(event_log, dataset)
        finally:
            dataset.close()
        logger.info("reward_ingest new_events=%d", stored)
        outcome = refresh_reward_model(trainer_settings, settings, placement=placement)
        print(outcome.message, flush=True)
        if args.once:
            return 1 if outcome.status == "refused" else 0
        time.sleep(settings.poll_interval_s)


def _evaluate(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from serving.adapters.config import AdapterSettings
    from serving.adapters.store import AdapterStore
    from streams.config import hhh_home
    from trainer.config import EvalSettings, RewardSettings, TrainerSettings
    from trainer.demo_model.build import build_demo_model
    from trainer.devices import placement_of
    from trainer.judges import load_judge
    from trainer.report.compare import EvalSpec, compare_versions
    from trainer.report.render import ReportSetup, gate_history, write_report
    from trainer.report.versions import choose_versions, heldout_conversations
    from trainer.reward.refresh import on_policy_base
    from trainer.reward.scorer import RewardScorer
    from trainer.reward.versions import RewardModelStore
    from trainer.rl.evaluation import SamplingSpec

    trainer_settings = TrainerSettings()
    settings = EvalSettings().model_copy(update={key: value for key, value in (
        ("judge", args.judge), ("prompts", args.prompts), ("samples_per_prompt", args.samples))
        if value is not None})
    base_model = trainer_settings.base_model or build_demo_model("demo", home=hhh_home())
    versions = choose_versions(AdapterStore(AdapterSettings().store_root), base_model, args.versions)
    prompts = heldout_conversations(args.prompts_from, trainer_settings, settings.prompts)
    judge = load_judge(settings.judge, label=settings.judge_label, label_is_good=settings.judge_label_is_good)
    reward = on_policy_base(RewardSettings(), base_model)
    reward_version = RewardModelStore(reward.store_dir).latest()
    placement = placement_of(trainer_settings)
    scorer = RewardScorer.from_store(reward, placement=placement) if reward_version is not None else None
    spec = EvalSpec(SamplingSpec(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                 max_prompt_tokens=settings.max_prompt_tokens,
                                 batch_size=settings.batch_size),
                    settings.samples_per_prompt, settings.confidence, settings.seed, placement)
    results = compare_versions(base_model, versions, prompts, judge,
                               scorer.score if scorer else None, spec)
    now = datetime.now(timezone.utc)
    setup = ReportSetup(base_model.name, f"{args.prompts_from}: the held-out split" if args.prompts_from == "log"
                        else "demo corpus", len(prompts), settings.samples_per_prompt, settings.temperature,
                        settings.max_new_tokens, settings.confidence, judge.name, reward_version, now)
    out = args.out or settings.reports_dir / f"eval-{now:%Y%m%dT%H%M%S}"
    report = write_report(out, setup, results, gate_history(trainer_settings.runs_dir))
    for result in results:
        print(f"{result.label:<16} {judge.name} {result.judge.mean:+.3f} "
              f"[{result.judge.lower:+.3f}, {result.judge.upper:+.3f}]  {result.verdict}")
    print(f"report: {report}")
    return 0
