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
"""

from __future__ import annotations

import argparse
import logging
import time

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


def _train(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from serving.adapters.config import AdapterSettings
    from serving.adapters.store import AdapterStore
    from streams.backends import open_event_log
    from streams.config import hhh_home
    from trainer.config import DPOSettings, GateSettings, PPOSettings, RewardSettings, TrainerSettings
    from trainer.daemon import TrainingDaemon
    from trainer.demo_model.build import build_demo_model
    from trainer.devices import placement_of
    from trainer.metrics import ROUND_FAILURES
    from trainer.reward.refresh import on_policy_base

    settings, reward = TrainerSettings(), RewardSettings()
    placement_of(settings)  # a GPU that is not there is refused before the demo model is built
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
    from trainer.devices import placement_of
    from trainer.reward.refresh import on_policy_base, refresh_reward_model

    trainer_settings = TrainerSettings()
    placement = placement_of(trainer_settings)  # a GPU that is not there: refused before any work
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
