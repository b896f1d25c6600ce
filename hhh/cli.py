"""The `hhh` command line: one entry point, a subcommand per thing that exists.

Heavy libraries (torch, vLLM) are imported inside the subcommands that need them, so that
``hhh --help`` and the event-log commands start at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from common.errors import UserError
from serving.adapters.cli import register as register_adapter_commands
from streams.config import hhh_home, private_hhh_home
from trainer.cli import register as register_train_commands


def _demo_model(args: argparse.Namespace) -> int:
    from trainer.demo_model.build import build_demo_model

    print(build_demo_model(args.variant, args.seed, home=hhh_home()))
    return 0


def _demo_feedback(args: argparse.Namespace) -> int:
    import httpx

    from trainer.demo_model.labeler import label

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would drown the summary
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=300) as client:
        try:
            report = label(client, prompts=args.prompts, n=args.n, user=args.user, seed=args.seed)
        except httpx.HTTPError as error:
            raise UserError(f"{error} (is `hhh up` running at {args.url}?)") from None
    print(report.summary())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from hhh.serve import serve

    serve(args.model, with_trainer=args.command == "up")
    return 0


def _events_tail(args: argparse.Namespace) -> int:
    from streams.backends import open_event_log

    with open_event_log() as event_log, event_log.consumer(None, args.topics) as reader:
        shown = 0
        while args.limit is None or shown < args.limit:
            batch = reader.poll_batch(max_records=500, timeout_s=args.wait)
            if batch.quiet and not args.follow:  # not at a fetch of only undecodable messages
                break
            records = batch.records
            for record in records[: None if args.limit is None else args.limit - shown]:
                print(f"{record.topic}[{record.partition}]@{record.offset} key={record.key} "
                      f"{record.event.model_dump_json()}")
                shown += 1
    return 0


def _data_rebuild(args: argparse.Namespace) -> int:
    import os
    import uuid

    from streams.backends import open_event_log
    from trainer.config import TrainerSettings
    from trainer.preferences.ingest import ingest_available
    from trainer.preferences.store import DatasetStore

    target = TrainerSettings().dataset_path
    scratch = target.with_name(target.name + ".rebuild")
    for leftover in (scratch, scratch.with_name(scratch.name + "-wal"), scratch.with_name(scratch.name + "-shm")):
        leftover.unlink(missing_ok=True)
    store = DatasetStore(scratch)
    with open_event_log() as event_log:
        stored = ingest_available(
            event_log, store, group=f"rebuild-{uuid.uuid4().hex[:8]}", from_beginning=True, idle_s=args.idle
        )
    store.close()
    os.replace(scratch, target)
    print(f"rebuilt {target} from the log: {stored} events")
    return 0


def _data_stats(args: argparse.Namespace) -> int:
    from trainer.config import TrainerSettings
    from trainer.preferences.report import format_stats
    from trainer.preferences.store import DatasetStore

    settings = TrainerSettings()
    if not settings.dataset_path.exists():
        raise UserError(f"no dataset at {settings.dataset_path}; run `hhh data rebuild` first")
    store = DatasetStore(settings.dataset_path)
    print(format_stats(store.build_pairs(**settings.pair_options())))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="hhh",
        description="A chat service that aligns itself from its users' feedback. "
        "State lives under $HHH_HOME (default ./.hhh).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo-model", help="build (or find cached) the demo base model and print its folder"
    )
    demo.add_argument("--variant", choices=["demo", "tiny"], default="demo",
                      help="'demo' for the service, 'tiny' for fast tests (default: demo)")
    demo.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    demo.set_defaults(run=_demo_model)

    feedback = commands.add_parser(
        "demo-feedback",
        help="an AI labeler (RLAIF): chat with the running service, rank each prompt's answers "
        "by a small constitution and send the rankings, so the trainer has feedback to learn from",
    )
    feedback.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway (default: %(default)s)")
    feedback.add_argument("--prompts", type=int, default=100, help="prompts to ask (default: 100)")
    feedback.add_argument("--n", type=int, default=3, help="answers per prompt to rank (default: 3)")
    feedback.add_argument("--user", default="demo-labeler", help="who the labeler is (auth off)")
    feedback.add_argument("--api-key", default=None, help="API key, where the gateway has auth on")
    feedback.add_argument("--seed", type=int, default=1000, help="which prompts (default: %(default)s)")
    feedback.set_defaults(run=_demo_feedback)

    for name, summary in (
        ("serve", "run the gateway on http://127.0.0.1:8000 (HHH_GATEWAY_* settings); with no "
                  "engine URLs configured, also start and supervise a vLLM engine on the demo model"),
        ("up", "the whole service on one machine: `hhh serve` plus the trainer daemon (`hhh train`) "
               "as a supervised child process (its log: $HHH_HOME/trainer.log)"),
    ):
        serving = commands.add_parser(name, help=summary)
        serving.add_argument("--model", type=Path, default=None,
                             help="model folder the engine serves (and `up`'s trainer trains on); "
                             "default: the demo model, built if missing")
        serving.set_defaults(run=_serve)

    data = commands.add_parser("data", help="the trainer's dataset (HHH_TRAINER_* settings)")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    rebuild = data_commands.add_parser(
        "rebuild", help="replay the event log from the beginning into a fresh dataset store"
    )
    rebuild.add_argument("--idle", type=float, default=2.0,
                         help="seconds without new events that end the replay (default: 2)")
    rebuild.set_defaults(run=_data_rebuild)
    stats = data_commands.add_parser(
        "stats", help="pairs by source and criterion, labeler agreement, per-labeler table"
    )
    stats.set_defaults(run=_data_stats)

    events = commands.add_parser("events", help="inspect the event log (HHH_EVENTS_* settings)")
    event_commands = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    tail = event_commands.add_parser(
        "tail", help="print events of topics from the beginning, one JSON line each"
    )
    tail.add_argument("topics", nargs="+", metavar="TOPIC",
                      help="completions, feedback, adapters or dead-letters")
    tail.add_argument("--limit", type=int, default=None, help="stop after this many events")
    tail.add_argument("--follow", action="store_true", help="keep waiting for new events")
    tail.add_argument("--wait", type=float, default=1.0, help="seconds to wait per poll")
    tail.set_defaults(run=_events_tail)
    register_adapter_commands(commands)
    register_train_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the subcommand named in ``argv`` (default: the process arguments)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        private_hhh_home()
        sys.exit(run(args))
    except KeyboardInterrupt:
        sys.exit(130)
    except (UserError, ValidationError) as error:  # what the user can fix: no traceback
        sys.exit(f"hhh {args.command}: {error}")
