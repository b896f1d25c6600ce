"""When a scope has new evidence to train on, so that a round does not re-optimise what it
already optimised.

A round for a scope trains only if, since the scope's last attempt (published or refused) —
or, before any attempt this trainer remembers, since the data the deployed adapter was trained
on (its manifest's metrics) — the reward model changed (global scope) or enough new examples
arrived: training prompts for the global PPO round, the user's own training pairs for a
personal DPO round. Without that rule every round would run PPO against the same reward model
again, each from the last round's output, and over-optimisation of a fixed reward model would
read as gain.

The evidence of each scope's last attempt is kept in ``<runs_dir>/attempts.json`` (written
atomically; a trainer killed before writing it simply tries again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.files import write_atomically


@dataclass(frozen=True)
class Evidence:
    """What a scope's training data amounted to when it was trained."""

    reward_model_version: int | None
    """The reward model PPO optimised (None for DPO, which uses none)."""
    examples: int
    """Training prompts (global PPO) or the user's own training pairs (personal DPO)."""

    def as_metrics(self) -> dict[str, float]:
        """For a manifest's metrics."""
        metrics = {"train_examples": float(self.examples)}
        if self.reward_model_version is not None:
            metrics["reward_model_version"] = float(self.reward_model_version)
        return metrics

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> Evidence | None:
        """From a manifest's metrics; None for an adapter published without them."""
        if "train_examples" not in metrics:
            return None
        version = metrics.get("reward_model_version")
        return cls(None if version is None else int(version), int(metrics["train_examples"]))

    def lacks_news(self, since: Evidence | None, min_new: int) -> str | None:
        """Why there is nothing new to train on since ``since``; None when there is."""
        if since is None or self.reward_model_version != since.reward_model_version:
            return None
        new = self.examples - since.examples
        if new >= min_new:
            return None
        model = "" if self.reward_model_version is None else \
            f"the reward model (version {self.reward_model_version}) is unchanged and "
        return f"{model}{max(new, 0)} new training examples arrived, {min_new} are needed"


class AttemptLog:
    """The evidence of each scope's last training attempt."""

    def __init__(self, runs_dir: Path) -> None:
        self.path = Path(runs_dir) / "attempts.json"

    def _read(self) -> dict[str, dict]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def last(self, scope: str) -> Evidence | None:
        """The evidence the scope's last attempt trained on; None if it has none on record."""
        entry = self._read().get(scope)
        return None if entry is None else Evidence(entry["reward_model_version"], entry["examples"])

    def record(self, scope: str, evidence: Evidence) -> None:
        """Remember ``evidence`` as the scope's last attempt."""
        entries = self._read()
        entries[scope] = {"reward_model_version": evidence.reward_model_version,
                          "examples": evidence.examples}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(entries, indent=1, sort_keys=True))
