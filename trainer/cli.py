"""`hhh train [--once]`: the training daemon (`trainer.daemon`), on the embedded defaults or the
configured event log, adapter store and base model."""

from __future__ import annotations

import argparse

from trainer.reward.cli import train_actions


def register(commands: argparse._SubParsersAction) -> None:
    """Make `hhh train` (with no action) run the daemon; `--once` runs one round."""
    train_actions(commands)
    train = commands.choices["train"]
    train.add_argument("--once", action="store_true",
                       help="one round (ingest, reward model, PPO, gate, publish, per-user DPO), then exit")
    train.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    from serving.adapters.config import AdapterSettings
    from serving.adapters.store import AdapterStore
    from streams.backends import open_event_log
    from trainer.config import DPOSettings, PPOSettings, RewardSettings, TrainerSettings
    from trainer.daemon import TrainingDaemon
    from trainer.gate import GateSettings
    from trainer.reward.refresh import resolve_model

    reward = RewardSettings()
    base_model, _ = resolve_model(reward)
    with open_event_log() as event_log:
        daemon = TrainingDaemon(event_log, AdapterStore(AdapterSettings().store_root), base_model,
                                TrainerSettings(), reward, PPOSettings(), DPOSettings(), GateSettings())
        if not args.once:
            daemon.run_forever()
        daemon.announce_current()
        report = daemon.run_round()
    for step in report.steps:
        print(step)
    return 0
