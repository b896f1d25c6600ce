"""A refused global candidate that nothing showed worse, kept so that the next round resumes it.

One round's PPO (``HHH_TRAINER_PPO_ITERATIONS``, 8 iterations of 64 samples by default) moves
the policy a little; the gate then asks for a reward gain whose lower confidence bound clears
``HHH_GATE_REWARD_MARGIN``. On the demo model the gain of one round was +0.05 to +0.12 with a
standard error of about 0.06 (BENCHMARKS.md, *The closed loop*): real, but under what the gate
can tell from noise. Were such a candidate thrown away, every round would start again from the
deployed adapter and the gains would never add up.

So a candidate refused only for want of evidence (`GateDecision.unproven`: its mean reward gain
is positive, and it failed no check that measures harm — the KL budgets, non-inferiority on
held-out human pairs and on the red team) is kept here, and the next round's policy starts
from it. The next round's reference and gate are still the deployed adapter's: the resumed
candidate is compared with what users are served, on that round's held-out prompts, by the same
test (a candidate no better passes at most 1 − confidence of the time), and its KL to the
deployed adapter grows with every round it is resumed, so the per-round budget
(``HHH_GATE_KL_BUDGET``) now bounds the rounds it holds together. It is dropped when it is
published, when a check that measures harm fails, when its mean gain is not positive, or when
the deployed version is no longer the one it was trained against.

Off by default (``HHH_TRAINER_RESUME_UNPROVEN``): resuming adds up whatever the reward model
asks for, and in the closed loop (BENCHMARKS.md) the reward model had learnt a minority's taste,
so two rounds added up published a version measurably worse for the majority.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trainer.rl.models import PolicyStack

STATE_FILE = "unproven.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnprovenCandidate:
    """A kept candidate: its adapter folder and what the next round needs to resume it."""

    folder: Path
    """The policy adapter (PEFT format) and its value head (`PolicyStack.save_policy`)."""
    parent: int | None
    """The global version it was trained against (None: the base model)."""
    rounds: int
    """PPO rounds it holds (1 after the round that made it)."""
    kl_beta: float
    """The KL coefficient its last round ended with."""
    round_id: str
    """The last round that trained it."""


class UnprovenStore:
    """The one kept global candidate, under ``<runs_dir>/unproven-global``; written whole or not at all."""

    def __init__(self, runs_dir: Path) -> None:
        self.folder = runs_dir / "unproven-global"

    def resumable(self, deployed: int | None) -> UnprovenCandidate | None:
        """The kept candidate if it was trained against `deployed`; otherwise drop it, None."""
        state_file = self.folder / STATE_FILE
        if not state_file.is_file():
            return None
        try:
            state = json.loads(state_file.read_text())
            kept = UnprovenCandidate(self.folder, state["parent"], int(state["rounds"]),
                                     float(state["kl_beta"]), str(state["round_id"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            # Never written so by `keep`: dropped, so that the global round starts afresh
            # rather than failing on it every round.
            logger.warning("dropping an unreadable unproven candidate (%s: %s)", type(error).__name__, error)
            self.discard()
            return None
        if kept.parent != deployed:
            logger.info("dropping the unproven candidate of round %s: trained against version %s, "
                        "version %s is deployed now", kept.round_id, kept.parent, deployed)
            self.discard()
            return None
        return kept

    def keep(
        self, stack: PolicyStack, parent: int | None, rounds: int, kl_beta: float, round_id: str
    ) -> None:
        """Replace the kept candidate by `stack`'s policy (atomically: a rename)."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unproven-", dir=self.folder.parent))
        try:
            stack.save_policy(staging)
            state = {"parent": parent, "rounds": rounds, "kl_beta": kl_beta, "round_id": round_id}
            (staging / STATE_FILE).write_text(json.dumps(state) + "\n")
            self.discard()
            os.rename(staging, self.folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def discard(self) -> None:
        """Drop the kept candidate, if any."""
        if self.folder.is_dir():
            # Renamed away first, so that a kill mid-delete never leaves half a candidate.
            doomed = self.folder.with_name(f".discarded-{os.getpid()}-{self.folder.name}")
            os.rename(self.folder, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
