"""Versioned reward models on disk: ``<store_dir>/<version>/``, beside the policy adapters.

A version folder holds the PEFT adapter (``reward/``), the value head
(``value_head.safetensors``, for the ``value_head`` kind), ``pairs.txt`` (the keys of the
training pairs it saw, so a refresh can count the new ones) and ``manifest.json``: version,
parent, the base model and its checksum, the reward normalisation, metrics, data counts,
training settings and the SHA-256 of every file. Versions are numbered 1, 2, ...; a folder is
written under a temporary name and renamed into place under a lock, so readers never see a
half-written version and two writers never take the same number. Versions are never changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"
PAIR_KEYS = "pairs.txt"


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


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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

    def manifest(self, version: int) -> dict[str, Any]:
        """The manifest of ``version``."""
        return json.loads((self.path(version) / MANIFEST).read_text())

    def trained_pair_keys(self, version: int) -> set[str]:
        """Keys of the pairs ``version`` was trained on."""
        return set((self.path(version) / PAIR_KEYS).read_text().split())

    def publish(
        self,
        write_model: Callable[[Path], None],
        manifest: dict[str, Any],
        pair_keys: Iterable[str],
    ) -> int:
        """Store a new version: ``write_model(folder)`` writes the weights, then the pair keys
        and the manifest (given fields plus version and file checksums) are added. Returns the
        version number."""
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = self.root / f".tmp-{uuid.uuid4().hex}"
        scratch.mkdir()
        try:
            write_model(scratch)
            (scratch / PAIR_KEYS).write_text("".join(f"{key}\n" for key in sorted(pair_keys)))
            files = {str(p.relative_to(scratch)): file_sha256(p)
                     for p in sorted(scratch.rglob("*")) if p.is_file()}
            with self._lock():
                version = (self.latest() or 0) + 1
                full = {"version": version, **manifest, "files": files}
                (scratch / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
                os.rename(scratch, self.path(version))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return version

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with (self.root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
