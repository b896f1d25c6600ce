"""The adapter store: immutable, versioned PEFT LoRA adapters on a local or shared filesystem.

Used by the trainer (it publishes through it), ``hhh adapters`` and every gateway replica, so it
imports neither FastAPI nor vLLM. API::

    store = AdapterStore(root)                       # default root: $HHH_HOME/adapters
    manifest = store.publish(source_dir, "global", base_model=model_dir, metrics={"reward": 0.4})
    store.list("global"); store.get("global", 3); store.latest("global")
    store.rollback("global", to=2); store.pin("global", 2); store.unpin("global")
    store.verify(manifest, base_model_dir)           # raises AdapterRefused(reason, detail)

Then ``serving.adapters.publish.announce`` puts the adapter event on the ``adapters`` topic.

Layout: ``<root>/global/v000003/`` and ``<root>/user/<id>/v000001/`` hold the adapter's files and
``manifest.json`` (base model id and config hash, rank, target modules, parent version, sha256
of every file, metrics, creation time). A version is written under a temporary name and renamed
into place, so a reader never sees half a version; two publishers racing for a number both
succeed with different numbers. Versions are never rewritten. Next to them, ``state.json``
holds what the scope should serve (``current``: the last version announced; ``pinned``), and
``refusals/v000003.json`` why a replica refused a version. State changes take a file lock.

An adapter folder holds plain files only, its weights as safetensors: symbolic links, special
files and pickled weights (``.bin``, ``.pt``, ``.pkl``, ..., which run code when loaded) are
refused at publish and at verify. ``verify`` copies the files it checks, hashing the very bytes
it copies, into ``<root>/.verified/<content hash>/`` (read-only files) and returns that folder:
it is what the engines load, so a version folder changed after the check is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from common.errors import UserError
from common.files import exclusive_lock, sha256_file, write_atomically
from streams.events import Sha256, check_scope, utc_now

MANIFEST = "manifest.json"
ADAPTER_CONFIG = "adapter_config.json"
_VERSION_DIR = re.compile(r"^v(\d{6})$")
WEIGHTS = "adapter_model.safetensors"
VERIFIED = ".verified"
"""Folder under the store root of the verified copies that engines load."""
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
"""Files that torch or pickle would unpickle (running code) when loaded; never served."""
_IGNORED_CONFIG_KEYS = ("_name_or_path", "transformers_version")
_READ_ONLY = 0o444


class AdapterRefused(UserError):
    """An adapter version that must not be served; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Manifest(BaseModel):
    """What a stored adapter version is, written once next to its files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = 1
    scope: str
    version: int = Field(ge=1)
    base_model: str = Field(description="Id of the base model (its folder's name).")
    base_model_config_sha256: Sha256 = Field(description="base_model_fingerprint of the base.")
    rank: int = Field(ge=1, description="LoRA rank r (the largest, with per-module ranks).")
    target_modules: list[str] | str = Field(description="PEFT target_modules, as configured.")
    parent_version: int | None = Field(default=None, ge=1)
    files: dict[str, Sha256] = Field(description="Relative path -> sha256 of every adapter file.")
    metrics: dict[str, FiniteFloat] = Field(default_factory=dict)
    trained_on: dict[str, int] = Field(
        default_factory=dict,
        description="Event-log positions of the data it was trained on: `<topic>/<partition>` -> "
        "next offset (every record before it was in the training data).",
    )
    created_at: datetime = Field(default_factory=utc_now)

    @property
    def label(self) -> str:
        """``global@3``, ``user:ann@2``."""
        return f"{self.scope}@{self.version}"


class Refusal(BaseModel):
    """Why a replica refused to serve a version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str
    detail: str
    replica: str
    at: datetime = Field(default_factory=utc_now)


class ScopeState(BaseModel):
    """What a scope should serve: the last announced version, unless one is pinned."""

    model_config = ConfigDict(extra="forbid")

    current: int | None = None
    pinned: int | None = None

    @property
    def desired(self) -> int | None:
        return self.pinned or self.current


class VersionInfo(BaseModel):
    """One stored version and its standing, for listings."""

    manifest: Manifest
    path: str
    current: bool
    pinned: bool
    refusals: list[Refusal]


def base_model_fingerprint(model_dir: Path) -> str:
    """sha256 of the base model's ``config.json`` (canonical JSON, path and library version
    left out): two folders with this hash have the same architecture and vocabulary."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise AdapterRefused("wrong_base_model", f"{model_dir} has no config.json; pass a base model folder")
    config = json.loads(config_path.read_text())
    for key in _IGNORED_CONFIG_KEYS:
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def base_module_names(model_dir: Path) -> set[str]:
    """Names of the base model's weight-bearing modules (``model.layers.0.self_attn.q_proj``),
    read from the safetensors headers without loading any weight."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        tensors = set(json.loads(index.read_text())["weight_map"])
    else:
        tensors = set()
        for shard in model_dir.glob("*.safetensors"):
            with shard.open("rb") as file:
                (length,) = struct.unpack("<Q", file.read(8))
                tensors |= set(json.loads(file.read(length))) - {"__metadata__"}
    if not tensors:
        raise AdapterRefused("wrong_base_model", f"{model_dir} holds no safetensors weights")
    return {name.rsplit(".", 1)[0] for name in tensors if name.endswith((".weight", ".bias"))}


def matching_modules(target_modules: list[str] | str, module_names: set[str]) -> set[str]:
    """The modules PEFT's ``target_modules`` selects: a string is a full-match regex (or
    ``all-linear``), a list matches a module whose name is, or ends with ``.``, an entry."""
    if target_modules == "all-linear":
        return {name for name in module_names if not name.endswith(("embed_tokens", "lm_head", "norm"))}
    if isinstance(target_modules, str):
        return {name for name in module_names if re.fullmatch(target_modules, name)}
    return {
        name for name in module_names
        if any(name == target or name.endswith(f".{target}") for target in target_modules)
    }


def read_lora_config(folder: Path) -> tuple[int, list[str] | str]:
    """(rank, target_modules) of a PEFT LoRA folder; ``AdapterRefused`` if it is not one."""
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise AdapterRefused("not_lora", f"{folder} has no {ADAPTER_CONFIG}; save it with PEFT's save_pretrained")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise AdapterRefused("not_lora", f"{config_path} is not valid JSON: {error}") from error
    if config.get("peft_type") != "LORA":
        raise AdapterRefused("not_lora", f"peft_type is {config.get('peft_type')!r}, only 'LORA' is served")
    if not (folder / WEIGHTS).is_file():
        raise AdapterRefused("not_lora", f"{folder} has no {WEIGHTS}; save it with PEFT's save_pretrained "
                             "(safetensors is its default)")
    ranks = [int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())]
    targets = config.get("target_modules")
    if not targets or max(ranks) < 1:
        raise AdapterRefused("not_lora", f"{ADAPTER_CONFIG} needs r >= 1 and target_modules")
    return max(ranks), sorted(targets) if isinstance(targets, list) else targets


def adapter_files(folder: Path) -> list[str]:
    """Relative paths of every file under ``folder`` (sorted); ``AdapterRefused`` for what must
    never be served: a symbolic link, anything but plain files and folders, pickled weights."""
    found = []
    for path in sorted(Path(folder).rglob("*")):
        relative = path.relative_to(folder)
        if path.is_symlink():
            raise AdapterRefused("unsafe_file", f"{relative} is a symbolic link; an adapter folder "
                                 "holds plain files only (copy the file in instead)")
        if path.is_dir():
            continue
        if not path.is_file():
            raise AdapterRefused("unsafe_file", f"{relative} is not a plain file")
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise AdapterRefused(
                "pickled_weights", f"{relative} is a pickle, which runs code when loaded; only "
                f"safetensors weights are served (PEFT writes {WEIGHTS} by default)",
            )
        found.append(str(relative))
    return found


def check_compatible(
    rank: int, target_modules: list[str] | str, config_sha256: str, base_model_dir: Path,
    *, max_rank: int | None = None,
) -> None:
    """Refuse an adapter that does not fit the base model (or the engine's rank limit)."""
    served = base_model_fingerprint(base_model_dir)
    if config_sha256 != served:
        raise AdapterRefused(
            "wrong_base_model",
            f"the adapter was trained on a base model with config hash {config_sha256[:12]}, "
            f"the served base {Path(base_model_dir).name} has {served[:12]}",
        )
    if max_rank is not None and rank > max_rank:
        raise AdapterRefused(
            "rank_too_high", f"rank {rank} exceeds the engines' max_lora_rank={max_rank}"
        )
    modules = base_module_names(base_model_dir)
    if not matching_modules(target_modules, modules):
        examples = sorted({name.rsplit(".", 1)[-1] for name in modules})[:12]
        raise AdapterRefused(
            "no_matching_modules",
            f"target_modules {target_modules!r} match no module of the base model (it has "
            f"{examples}); the adapter would silently serve the base model",
        )


def scope_dir_parts(scope: str) -> tuple[str, ...]:
    """``global`` -> (global,), ``user:ann`` -> (user, ann); a `UserError` for anything else
    (the user id rule of `streams.user_ids` keeps the folder inside the store)."""
    check_scope(scope)
    return ("global",) if scope == "global" else ("user", scope.removeprefix("user:"))


class AdapterStore:
    """Immutable adapter versions per scope under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- writing -------------------------------------------------------------------------------

    def publish(
        self,
        source_dir: Path,
        scope: str,
        *,
        base_model: Path,
        parent: int | None = None,
        metrics: dict[str, float] | None = None,
        trained_on: dict[str, int] | None = None,
    ) -> Manifest:
        """Copy the PEFT LoRA folder ``source_dir`` in as the scope's next version.

        ``base_model``: folder of the base model it was trained on (its config hash goes into
        the manifest; its module names must match the adapter's targets). ``parent``: the
        version it was trained from (default: the scope's current version). The new version
        becomes ``current``. Raises ``AdapterRefused`` (nothing is stored) or ``UserError``.
        """
        source_dir = Path(source_dir)
        scope_dir = self._scope_dir(scope)
        non_finite = {name: value for name, value in (metrics or {}).items() if not math.isfinite(value)}
        if non_finite:
            raise UserError(f"metrics must be finite numbers, got {non_finite}; leave out a metric "
                            "that could not be computed")
        rank, targets = read_lora_config(source_dir)
        files = [name for name in adapter_files(source_dir) if name != MANIFEST]
        config_sha256 = base_model_fingerprint(base_model)
        check_compatible(rank, targets, config_sha256, base_model)
        scope_dir.mkdir(parents=True, exist_ok=True)
        staging = scope_dir / f".staging-{uuid.uuid4().hex}"
        try:
            shutil.copytree(source_dir, staging, ignore=shutil.ignore_patterns(MANIFEST))
            checksums = {name: sha256_file(staging / name) for name in files}
            with self._locked(scope):
                state = self._state(scope)
                if parent is not None and not (scope_dir / _version_name(parent)).is_dir():
                    raise UserError(f"parent version {parent} of {scope} is not in the store")
                version = max(self._versions(scope), default=0) + 1
                manifest = Manifest(
                    scope=scope, version=version, base_model=Path(base_model).name,
                    base_model_config_sha256=config_sha256, rank=rank, target_modules=targets,
                    parent_version=parent if parent is not None else state.current,
                    files=checksums, metrics=metrics or {}, trained_on=trained_on or {},
                )
                (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
                os.rename(staging, scope_dir / _version_name(version))
                state.current = version
                self._write_state(scope, state)
            return manifest
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def rollback(self, scope: str, to: int | None = None) -> Manifest:
        """Make ``to`` (default: the newest unrefused version before the current one) current."""
        with self._locked(scope):
            state = self._state(scope)
            if state.pinned is not None:
                raise UserError(f"{scope} is pinned to version {state.pinned}; unpin it first")
            if to is None:
                refused = {v for v in self._versions(scope) if self.refusals(scope, v)}
                earlier = [v for v in self._versions(scope) if v < (state.current or 0) and v not in refused]
                if not earlier:
                    raise UserError(f"{scope} has no earlier unrefused version than {state.current}")
                to = max(earlier)
            manifest = self.get(scope, to)
            state.current = to
            self._write_state(scope, state)
        return manifest

    def pin(self, scope: str, version: int | None = None) -> Manifest:
        """Serve ``version`` (default: the current one) whatever is published until ``unpin``."""
        with self._locked(scope):
            state = self._state(scope)
            version = version or state.current
            if version is None:
                raise UserError(f"{scope} has no version to pin; publish one first")
            manifest = self.get(scope, version)
            state.pinned = version
            self._write_state(scope, state)
        return manifest

    def unpin(self, scope: str) -> Manifest:
        """Follow publishes again; return the version the scope serves now (the current one)."""
        with self._locked(scope):
            state = self._state(scope)
            if state.pinned is None:
                raise UserError(f"{scope} is not pinned")
            state.pinned = None
            self._write_state(scope, state)
            if state.current is None:
                raise UserError(f"{scope} has no current version")
            return self.get(scope, state.current)

    def record_refusal(self, scope: str, version: int, refusal: Refusal) -> None:
        """Note that a replica refused ``version`` (shown by ``list``; skipped by ``rollback``)."""
        folder = self._scope_dir(scope) / "refusals"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_version_name(version)}.{refusal.replica}.json"
        write_atomically(path, refusal.model_dump_json())

    # -- reading -------------------------------------------------------------------------------

    def scopes(self) -> list[str]:
        """Every scope with at least one version."""
        found = ["global"] if list(self._versions("global")) else []
        users = self.root / "user"
        if users.is_dir():
            found += sorted(f"user:{p.name}" for p in users.iterdir() if list(self._versions(f"user:{p.name}")))
        return found

    def path(self, scope: str, version: int) -> Path:
        """The folder of one version (whether or not it exists)."""
        return self._scope_dir(scope) / _version_name(version)

    def get(self, scope: str, version: int) -> Manifest:
        """The manifest of a stored version; ``AdapterRefused`` if missing or unreadable."""
        manifest_path = self.path(scope, version) / MANIFEST
        if not manifest_path.is_file():
            raise AdapterRefused("not_found", f"{scope}@{version} is not in the store at {self.root}")
        try:
            manifest = Manifest.model_validate_json(manifest_path.read_bytes())
        except ValidationError as error:
            raise AdapterRefused("invalid_manifest", f"{manifest_path}: {error}") from error
        if (manifest.scope, manifest.version) != (scope, version):
            raise AdapterRefused("invalid_manifest", f"{manifest_path} describes {manifest.label}")
        return manifest

    def manifest_sha256(self, scope: str, version: int) -> str:
        """Checksum of a version's manifest (the adapter event carries it)."""
        return sha256_file(self.path(scope, version) / MANIFEST)

    def latest(self, scope: str) -> Manifest | None:
        """The newest stored version of ``scope``, or None."""
        newest = max(self._versions(scope), default=None)
        return None if newest is None else self.get(scope, newest)

    def state(self, scope: str) -> ScopeState:
        """The scope's current and pinned versions."""
        return self._state(scope)

    def refusals(self, scope: str, version: int) -> list[Refusal]:
        """Why replicas refused ``version`` (empty: none did)."""
        folder = self._scope_dir(scope) / "refusals"
        return [
            Refusal.model_validate_json(path.read_bytes())
            for path in sorted(folder.glob(f"{_version_name(version)}.*.json"))
        ]

    def list(self, scope: str | None = None) -> list[VersionInfo]:
        """Every version of ``scope`` (default: of every scope), oldest first per scope."""
        infos = []
        for each in [scope] if scope else self.scopes():
            state = self._state(each)
            for version in sorted(self._versions(each)):
                infos.append(VersionInfo(
                    manifest=self.get(each, version), path=str(self.path(each, version)),
                    current=version == state.current, pinned=version == state.pinned,
                    refusals=self.refusals(each, version),
                ))
        return infos

    def verify(self, manifest: Manifest, base_model_dir: Path, *, max_rank: int | None = None) -> Path:
        """Check a version's files against its manifest and its fit to ``base_model_dir``; return
        the verified copy of its files (the folder to load, see the module docstring). Raises
        ``AdapterRefused`` with the first problem found."""
        folder = self.path(manifest.scope, manifest.version)
        present = set(adapter_files(folder)) - {MANIFEST}
        if missing := sorted(set(manifest.files) - present):
            raise AdapterRefused("missing_file", f"{manifest.label} lacks {missing}")
        if extra := sorted(present - set(manifest.files)):
            raise AdapterRefused("checksum_mismatch", f"{manifest.label} has files not in its manifest: {extra}")
        for name, expected in manifest.files.items():
            if sha256_file(folder / name) != expected:
                raise AdapterRefused("checksum_mismatch", f"{manifest.label}: {name} does not match its sha256")
        copy = self._verified_copy(manifest, folder)
        rank, targets = read_lora_config(copy)
        if (rank, targets) != (manifest.rank, manifest.target_modules):
            raise AdapterRefused("invalid_manifest", f"{manifest.label}: adapter_config.json disagrees with the manifest")
        check_compatible(rank, targets, manifest.base_model_config_sha256, base_model_dir, max_rank=max_rank)
        return copy

    # -- internals -----------------------------------------------------------------------------

    def _verified_copy(self, manifest: Manifest, folder: Path) -> Path:
        """``<root>/.verified/<content hash>/``: the manifest's files, copied from ``folder`` while
        hashing the copied bytes (a file changed since it was checked is caught here), read-only;
        an existing copy (the same files, verified before) is checked again instead."""
        content = hashlib.sha256(json.dumps(manifest.files, sort_keys=True).encode()).hexdigest()
        target = self.root / VERIFIED / content
        if not target.is_dir():
            staging = self.root / VERIFIED / f".staging-{uuid.uuid4().hex}"
            try:
                for name, expected in manifest.files.items():
                    if _copy_hashed(folder / name, staging / name) != expected:
                        raise AdapterRefused("checksum_mismatch",
                                             f"{manifest.label}: {name} does not match its sha256")
                try:
                    os.rename(staging, target)
                except OSError:  # another replica made it meanwhile: checked below like any copy
                    if not target.is_dir():
                        raise
                else:
                    return target
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        if set(adapter_files(target)) != set(manifest.files) or any(
            sha256_file(target / name) != expected for name, expected in manifest.files.items()
        ):
            raise AdapterRefused("checksum_mismatch", f"{manifest.label}: its verified copy {target} "
                                 "was changed; delete that folder to have it copied again")
        return target

    def _scope_dir(self, scope: str) -> Path:
        return self.root.joinpath(*scope_dir_parts(scope))

    def _versions(self, scope: str) -> Iterator[int]:
        folder = self._scope_dir(scope)
        if folder.is_dir():
            for entry in folder.iterdir():
                if match := _VERSION_DIR.match(entry.name):
                    yield int(match.group(1))

    def _state(self, scope: str) -> ScopeState:
        path = self._scope_dir(scope) / "state.json"
        return ScopeState.model_validate_json(path.read_bytes()) if path.is_file() else ScopeState()

    def _write_state(self, scope: str, state: ScopeState) -> None:
        write_atomically(self._scope_dir(scope) / "state.json", state.model_dump_json())

    @contextmanager
    def _locked(self, scope: str) -> Iterator[None]:
        folder = self._scope_dir(scope)
        folder.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(folder / ".lock"):
            yield


def _version_name(version: int) -> str:
    return f"v{version:06d}"


def _copy_hashed(source: Path, destination: Path) -> str:
    """Copy ``source`` to a new read-only ``destination``; the sha256 of the bytes copied."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    created = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _READ_ONLY)
    with source.open("rb") as reader, open(created, "wb") as writer:
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()
