"""`hhh train [--once]`: the training daemon (`trainer.daemon`), on the embedded defaults or the
configured event log, adapter store and base model.

Without ``--once`` it runs rounds until interrupted, ``HHH_TRAINER_ROUND_INTERVAL_S`` apart;
each round's steps are printed when it ends, and Prometheus metrics (`trainer.metrics`) are
served on ``HHH_TRAINER_METRICS_PORT``. At start-up it re-announces every scope's
current adapter version (see the daemon's docstring for why).
"""

from __future__ import annotations

import argparse
import time

from trainer.reward.cli import train_actions


def register(commands: argparse._SubParsersAction) -> None:
    """Make the bare `hhh train` run the daemon; `--once` runs one round."""
    train_actions(commands)
    train = commands.choices["train"]
    train.add_argument("--once", action="store_true",
                       help="one round (ingest, reward model, PPO, gate, publish, per-user DPO), then exit")
    train.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    from serving.adapters.config import AdapterSettings
    from serving.adapters.store import AdapterStore
    from streams.backends import open_event_log
    from prometheus_client import start_http_server

    from trainer.config import DPOSettings, PPOSettings, RewardSettings, TrainerSettings
    from trainer.daemon import TrainingDaemon
    from trainer.gate import GateSettings
    from streams.config import hhh_home
    from trainer.demo_model.build import build_demo_model
    from trainer.reward.refresh import on_policy_base

    settings, reward = TrainerSettings(), RewardSettings()
    # The served model; where only the reward model's base is configured, that one.
    base_model = settings.base_model or reward.base_model or build_demo_model("demo", home=hhh_home())
    reward = on_policy_base(reward, base_model)
    with open_event_log() as event_log:
        daemon = TrainingDaemon(event_log, AdapterStore(AdapterSettings().store_root), base_model,
                                settings, reward, PPOSettings(), DPOSettings(), GateSettings())
        daemon.announce_current()
        if not args.once and settings.metrics_port:
            start_http_server(settings.metrics_port, settings.metrics_host)
        while True:
            report = daemon.run_round()
            print(f"round {report.round_id}:", *report.steps, sep="\n  ", flush=True)
            if args.once:
                return 0
            time.sleep(settings.round_interval_s)
