"""Versioned reward models on disk: ``<store_dir>/<version>/``, beside the policy adapters.

A version folder holds the PEFT adapter (``reward/``), the value head
(``value_head.safetensors``, for the ``value_head`` kind), ``pairs.txt`` (the keys of the
training pairs it saw, so a refresh can count the new ones) and ``manifest.json``: version,
parent, the base model and its checksum, the reward normalisation, metrics, data counts,
training settings and the SHA-256 of every file. Versions are numbered 1, 2, ...; a folder is
written under a temporary name and renamed into place under a lock, so readers never see a
half-written version and two writers never take the same number. Versions are never changed.
A refresh that was worse than its parent is not stored; it is a line of ``refused.jsonl``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from common.files import exclusive_lock, sha256_file
from trainer.reward.model import ModelKind

MANIFEST = "manifest.json"
PAIR_KEYS = "pairs.txt"
REFUSALS = "refused.jsonl"


@dataclass(frozen=True)
class Normalisation:
    """r̂ = (r − mean) / std, with the raw rewards' mean and std over the training completions.

    The Bradley–Terry loss only sees reward differences, so a model's raw offset and scale are
    arbitrary and drift between versions; normalised, PPO sees rewards of mean 0 and std 1 on
    the completions users rated, whichever version scores them.
    """

    mean: float
    std: float

    def apply(self, rewards: torch.Tensor) -> torch.Tensor:
        """(B,) raw rewards -> (B,) normalised rewards."""
        return (rewards - self.mean) / self.std


class RewardTrainingData(BaseModel):
    """What a version was trained and evaluated on."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    dataset: str
    """The dataset store's path."""
    train_pairs: int
    new_pairs: int
    """Training pairs its parent had not seen (all of them for a first version)."""
    eval_pairs: int
    """Held-out pairs, or held-out vote comparisons where pairs were too few (``refresh``)."""
    train_votes: int = 0
    """Thumbs votes on training prompts behind the pointwise term (0 when it is off)."""
    new_votes: int = 0
    """Training votes its parent had not seen."""
    train_prompts: int
    criteria: list[str]
    eval_percent: float
    """Held-out share of prompts (by prompt hash), in percent."""


class RewardTraining(BaseModel):
    """How a version was trained: epochs, time, and the `RewardSettings` that shape the model."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    epochs: int
    seconds: float
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: list[str]
    learning_rate: float
    weight_decay: float
    batch_size: int
    margin: float
    pointwise_weight: float = 0.0
    """λ of the pointwise vote term (0 for versions from before it existed)."""
    max_length: int
    """Tokens per sequence the model was trained on; the scorer encodes with the same."""
    seed: int


class RewardModelDraft(BaseModel):
    """A manifest before it is stored: everything but the version number and file checksums."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    parent_version: int | None
    """The version it was warm-started from; None for a cold start."""
    created_at: datetime
    kind: ModelKind
    model_path: str
    """The base model (or sequence classifier) folder it was built on."""
    model_sha256: str
    """Checksum of that model's weights: a warm start needs the same."""
    normalisation: Normalisation
    metrics: dict[str, float]
    """Held-out accuracy, margin and loss, training loss, reward statistics, pairs/s."""
    data: RewardTrainingData
    training: RewardTraining


class RewardModelManifest(RewardModelDraft):
    """``manifest.json`` of a stored version."""

    version: int
    files: dict[str, str]
    """SHA-256 of every file of the version folder (the manifest aside), by relative path."""


class RewardModelRefusal(BaseModel):
    """A refreshed version that was not stored, and why (a line of ``refused.jsonl``)."""

    model_config = ConfigDict(extra="forbid")

    at: datetime
    parent_version: int
    train_pairs: int
    eval_pairs: int
    eval_accuracy: float
    parent_eval_accuracy: float
    """The parent's accuracy on the same held-out pairs, measured before the refresh."""
    loss_lower_bound: float
    """Lower confidence bound of the accuracy lost (parent − refreshed), share of pairs."""
    reason: str


class RewardModelStore:
    """The reward-model versions under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self) -> list[int]:
        """Stored versions, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit() and p.is_dir())

    def latest(self) -> int | None:
        """The newest version, or None when none is stored."""
        versions = self.versions()
        return versions[-1] if versions else None

    def path(self, version: int) -> Path:
        """The folder of ``version``."""
        return self.root / str(version)

    def manifest(self, version: int) -> RewardModelManifest:
        """The manifest of ``version``."""
        return RewardModelManifest.model_validate_json((self.path(version) / MANIFEST).read_bytes())

    def trained_pair_keys(self, version: int) -> set[str]:
        """Keys of the pairs (and thumbs votes, ``refresh.vote_key``) ``version`` was trained on."""
        return set((self.path(version) / PAIR_KEYS).read_text().split())

    def record_refusal(self, refusal: RewardModelRefusal) -> None:
        """Append a refused refresh to ``refused.jsonl``."""
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.root / ".lock"), (self.root / REFUSALS).open("a") as f:
            f.write(refusal.model_dump_json() + "\n")

    def last_refusal(self) -> RewardModelRefusal | None:
        """The latest refused refresh, or None."""
        path = self.root / REFUSALS
        lines = path.read_text().splitlines() if path.is_file() else []
        return RewardModelRefusal.model_validate_json(lines[-1]) if lines else None

    def publish(
        self,
        write_model: Callable[[Path], None],
        draft: RewardModelDraft,
        pair_keys: Iterable[str],
    ) -> int:
        """Store a new version: ``write_model(folder)`` writes the weights, then the pair keys
        and the manifest (``draft`` plus version and file checksums) are added. Returns the
        version number."""
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = self.root / f".tmp-{uuid.uuid4().hex}"
        scratch.mkdir()
        try:
            write_model(scratch)
            (scratch / PAIR_KEYS).write_text("".join(f"{key}\n" for key in sorted(pair_keys)))
            files = {str(p.relative_to(scratch)): sha256_file(p)
                     for p in sorted(scratch.rglob("*")) if p.is_file()}
            with exclusive_lock(self.root / ".lock"):
                version = (self.latest() or 0) + 1
                manifest = RewardModelManifest(**dict(draft), version=version, files=files)
                (scratch / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
                os.rename(scratch, self.path(version))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return version
