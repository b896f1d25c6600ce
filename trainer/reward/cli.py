"""`hhh train reward [--once]`, and the `hhh train` action group other trainers add to.

Each round ingests what the event log holds into the dataset store, then refreshes the reward
model if enough new pairs arrived (``trainer.reward.refresh``). ``--once`` runs one round and
exits: 0 when a version was stored or none was due, 1 when the pairs were refused (the
message says why).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

logger = logging.getLogger(__name__)


def train_actions(commands: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The action group of `hhh train`, created on first use: each trainer module adds its own
    action with ``train_actions(commands).add_parser(...)``."""
    train = commands.choices.get("train")
    if train is None:
        train = commands.add_parser(
            "train", help="train models from the dataset (HHH_TRAINER_*, HHH_REWARD_* settings)"
        )
        # Not required: a module may make the bare `hhh train` run something of its own.
        actions = train.add_subparsers(dest="train_command", metavar="ACTION")
        train.set_defaults(train_actions=actions, run=lambda _: _usage_error(train))
    return train.get_default("train_actions")


def _usage_error(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return 2


def register(commands: argparse._SubParsersAction) -> None:
    """Add `hhh train reward`."""
    reward = train_actions(commands).add_parser(
        "reward",
        help="ingest new feedback and train a new reward-model version when enough new pairs "
        "arrived (HHH_REWARD_REFRESH_MIN_NEW_PAIRS); versions go to $HHH_HOME/reward-models/",
    )
    reward.add_argument("--once", action="store_true",
                        help="one round, then exit (1 if the pairs were too few or too one-sided)")
    reward.set_defaults(run=_train_reward)


def _train_reward(args: argparse.Namespace) -> int:
    from streams.backends import open_event_log
    from trainer.config import RewardSettings, TrainerSettings
    from trainer.preferences.ingest import ingest_available
    from trainer.preferences.store import DatasetStore
    from trainer.reward.refresh import on_policy_base, refresh_reward_model

    trainer_settings = TrainerSettings()
    settings = on_policy_base(RewardSettings(), trainer_settings.base_model)
    while True:
        dataset = DatasetStore(trainer_settings.dataset_path)
        try:
            with open_event_log() as event_log:
                stored = ingest_available(event_log, dataset)
        finally:
            dataset.close()
        logger.info("reward_ingest new_events=%d", stored)
        outcome = refresh_reward_model(trainer_settings, settings)
        print(outcome.message, flush=True)
        if args.once:
            return 1 if outcome.status == "refused" else 0
        time.sleep(settings.poll_interval_s)
