"""``hhh adapters publish|list|rollback|pin|unpin``: the adapter store from the command line.

Store: ``HHH_ADAPTERS_STORE_ROOT`` (default ``$HHH_HOME/adapters``); events go to the event log
``HHH_EVENTS_*`` selects. Every change is announced on the ``adapters`` topic, which every
gateway replica follows.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from common.errors import UserError
from serving.adapters.config import AdapterSettings
from serving.adapters.store import ADAPTER_CONFIG, AdapterRefused, AdapterStore, Manifest


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``adapters`` and its actions to the ``hhh`` subcommands."""
    adapters = commands.add_parser(
        "adapters", help="the versioned adapter store (HHH_ADAPTERS_* settings)"
    )
    actions = adapters.add_subparsers(dest="adapters_command", required=True, metavar="ACTION")

    publish = actions.add_parser("publish", help="store a PEFT LoRA folder as a new version and announce it")
    publish.add_argument("source", type=Path, metavar="DIR", help="folder saved by PEFT's save_pretrained")
    publish.add_argument("--scope", required=True, help="'global' or 'user:<id>'")
    publish.add_argument("--base-model", type=Path, default=None,
                         help="base model folder (default: HHH_ADAPTERS_BASE_MODEL_DIR, else the "
                         "adapter's base_model_name_or_path)")
    publish.add_argument("--parent", type=int, default=None, help="version it was trained from (default: current)")
    publish.add_argument("--metric", action="append", default=[], metavar="NAME=VALUE",
                         help="a metric to record in the manifest (repeatable)")
    publish.set_defaults(run=_publish)

    listing = actions.add_parser("list", help="versions per scope: current, pinned, refused (with reason)")
    listing.add_argument("--scope", default=None, help="only this scope")
    listing.add_argument("--json", action="store_true", help="one JSON object per version")
    listing.set_defaults(run=_list)

    rollback = actions.add_parser("rollback", help="serve an earlier version of a scope again")
    rollback.add_argument("--scope", required=True)
    rollback.add_argument("--to", type=int, default=None,
                          help="version (default: the newest unrefused one before the current)")
    rollback.set_defaults(run=_rollback)

    pin = actions.add_parser("pin", help="keep serving a version whatever is published next")
    pin.add_argument("--scope", required=True)
    pin.add_argument("--version", type=int, default=None, help="default: the current version")
    pin.set_defaults(run=_pin)

    unpin = actions.add_parser("unpin", help="follow publishes again (serve the current version)")
    unpin.add_argument("--scope", required=True)
    unpin.set_defaults(run=_unpin)


def _store() -> AdapterStore:
    return AdapterStore(AdapterSettings().store_root)


def _announce(manifest: Manifest, verb: str) -> int:
    from serving.adapters.publish import announce
    from streams.backends import open_event_log

    with open_event_log() as event_log:
        event = announce(event_log, _store(), manifest)
    print(f"{verb} {manifest.label} (manifest sha256 {event.sha256[:12]}) at {event.path}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    metrics = {}
    for item in args.metric:
        name, _, value = item.partition("=")
        try:
            metrics[name] = float(value)
        except ValueError:
            raise UserError(f"--metric {item!r} must be NAME=NUMBER") from None
        if not math.isfinite(metrics[name]):
            raise UserError(f"--metric {item!r} must be a finite number, not nan or infinity: "
                            "every replica would refuse the announcement; leave the metric out")
    base_model = args.base_model or AdapterSettings().base_model_dir or _base_of(args.source)
    try:
        manifest = _store().publish(args.source, args.scope, base_model=base_model,
                                    parent=args.parent, metrics=metrics)
    except AdapterRefused as error:
        raise UserError(f"{args.source} refused: {error}") from None
    return _announce(manifest, "published")


def _base_of(source: Path) -> Path:
    config_path = source / ADAPTER_CONFIG
    recorded = json.loads(config_path.read_text()).get("base_model_name_or_path") if config_path.is_file() else None
    if not recorded or not Path(recorded).is_dir():
        raise UserError(
            f"{source}: its base_model_name_or_path {recorded!r} is not a folder here; pass --base-model DIR"
        )
    return Path(recorded)


def _list(args: argparse.Namespace) -> int:
    infos = _store().list(args.scope)
    if args.json:
        for info in infos:
            print(info.model_dump_json())
        return 0
    print(f"{'scope':<24} {'version':>7} {'parent':>6} {'rank':>4}  {'created (UTC)':<19}  state")
    for info in infos:
        manifest = info.manifest
        states = (["current"] if info.current else []) + (["pinned"] if info.pinned else [])
        states += [f"refused by {r.replica}: {r.reason}: {r.detail}" for r in info.refusals]
        metrics = " ".join(f"{k}={v:g}" for k, v in manifest.metrics.items())
        print(f"{manifest.scope:<24} {manifest.version:>7} {manifest.parent_version or '-':>6} "
              f"{manifest.rank:>4}  {manifest.created_at:%Y-%m-%d %H:%M:%S}  "
              f"{', '.join(states) or 'stored'}{'  ' + metrics if metrics else ''}")
    if not infos:
        print(f"(no adapters{' in ' + args.scope if args.scope else ''})")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    return _announce(_store().rollback(args.scope, args.to), "rolled back to")


def _pin(args: argparse.Namespace) -> int:
    return _announce(_store().pin(args.scope, args.version), "pinned")


def _unpin(args: argparse.Namespace) -> int:
    return _announce(_store().unpin(args.scope), "unpinned; serving")
