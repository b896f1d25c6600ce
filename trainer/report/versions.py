"""What `hhh eval` compares: the versions named on its command line, and held-out prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.errors import UserError
from serving.adapters.store import AdapterRefused, AdapterStore
from trainer.config import TrainerSettings
from trainer.demo_model.corpus import heldout_prompts
from trainer.preferences.store import DatasetStore
from trainer.report.compare import BASE, VersionToEvaluate
from trainer.rl.rollout import Conversation


def choose_versions(store: AdapterStore, base_model: Path, names: Sequence[str]) -> list[VersionToEvaluate]:
    """The named versions, verified against their manifests; none named: the base model and
    every ``global`` version, oldest first.

    A name is ``base``, ``SCOPE@N``, ``N`` (``global@N``) or a scope alone (its current version).
    """
    if not names:
        names = [BASE] + [f"global@{info.manifest.version}" for info in store.list("global")]
    versions = []
    for name in names:
        if name == BASE:
            versions.append(VersionToEvaluate(BASE, None, None))
            continue
        try:
            scope, version = _scope_and_version(store, name)
            manifest = store.get(scope, version)
            folder = store.verify(manifest, base_model)
        except ValueError as error:  # AdapterRefused, a malformed scope
            detail = error.detail if isinstance(error, AdapterRefused) else str(error)
            raise UserError(f"cannot evaluate {name!r}: {detail}; `hhh adapters list` shows what exists") from None
        versions.append(VersionToEvaluate(manifest.label, folder, manifest))
    return versions


def _scope_and_version(store: AdapterStore, name: str) -> tuple[str, int]:
    if name.isdigit():
        return "global", int(name)
    scope, at, number = name.rpartition("@")
    if not at:
        scope, current = name, store.state(name).desired
        if current is None:
            raise ValueError(f"scope {name!r} has no current version")
        return scope, current
    if not number.isdigit():
        raise ValueError(f"{number!r} is not a version number (SCOPE@N)")
    return scope, int(number)


def heldout_conversations(source: str, settings: TrainerSettings, limit: int) -> list[Conversation]:
    """Up to ``limit`` held-out prompts: the dataset's eval split (``log``) or the demo corpus's
    held-out prompts (``demo``, spread evenly over its intents)."""
    if source == "demo":
        every = heldout_prompts()
        step = max(1, len(every) // limit)
        return [[{"role": "user", "content": p.user}] for p in every[::step][:limit]]
    if not settings.dataset_path.exists():
        raise UserError(f"no dataset at {settings.dataset_path}: run `hhh data rebuild`, or use "
                        "--prompts-from demo")
    dataset = DatasetStore(settings.dataset_path)
    try:
        prompts = dataset.prompts("eval", eval_percent=settings.eval_percent, limit=limit)
    finally:
        dataset.close()
    if len(prompts) < 2:
        raise UserError(f"the dataset holds {len(prompts)} held-out prompt(s); a comparison needs at "
                        "least 2: let users chat with the service first, or use --prompts-from demo")
    return prompts
