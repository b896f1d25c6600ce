"""Settings of the adapter store and the hot-swap controller (environment ``HHH_ADAPTERS_*``)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.config import hhh_home


class AdapterSettings(BaseSettings):
    """Where adapters are stored and how a gateway replica swaps them in."""

    model_config = SettingsConfigDict(env_prefix="HHH_ADAPTERS_", extra="forbid")

    store_root: Path = Field(
        default_factory=lambda: hhh_home() / "adapters",
        description="Root of the adapter store; a shared filesystem path with several machines.",
    )
    base_model_dir: Path | None = Field(
        default=None,
        description="Folder of the base model the engines serve (its config.json identifies it, "
        "its weights name the modules adapters may target). Unset: the `root` path the engines "
        "report in /v1/models, which works where gateway and engines share a filesystem.",
    )
    max_lora_rank: int = Field(
        default=16, ge=1, description="The engines' --max-lora-rank; higher ranks are refused."
    )
    replica_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="This gateway replica's name: its consumer group on the adapters topic and "
        "the prefix of the adapter names it loads into engines (replicas sharing an engine each "
        "load their own copy, so one never unloads what another still serves). Keep it stable "
        "across restarts so a restarted replica finds and cleans its own adapters. Unset: "
        "<hostname>-<gateway port>.",
    )
    canary_prompt: str = Field(
        default="The quick brown fox", min_length=1,
        description="Prompt whose next-token logprobs must differ between adapter and base model.",
    )
    canary_min_difference: float = Field(
        default=1e-4, gt=0,
        description="Smallest max |logprob difference| over the top tokens that counts as 'differs'.",
    )
    drain_timeout_s: float = Field(
        default=300.0, gt=0,
        description="Longest wait for the previous version's in-flight requests before unloading it.",
    )
    poll_timeout_s: float = Field(
        default=0.5, gt=0, description="Wait per poll of the adapters topic (bounds stop latency)."
    )
    restore_interval_s: float = Field(
        default=5.0, gt=0,
        description="How often the controller checks that every engine still holds the live adapters "
        "and reloads those an engine lost (a restarted engine starts with none).",
    )

    def replica(self, port: int) -> str:
        """This replica's name: ``replica_id``, else ``<hostname>-<port>``."""
        return self.replica_id or f"{socket.gethostname()}-{port}"[-64:]
