"""Settings of the trainer (environment variables ``HHH_TRAINER_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.config import hhh_home


class TrainerSettings(BaseSettings):
    """Where the trainer keeps its dataset, and how it turns feedback into pairs."""

    model_config = SettingsConfigDict(env_prefix="HHH_TRAINER_", extra="forbid")

    dataset_path: Path = Field(
        default_factory=lambda: hhh_home() / "dataset.db",
        description="The dataset store (SQLite), rebuilt from the log by `hhh data rebuild`.",
    )
    eval_percent: int = Field(
        default=10, ge=0, le=50, description="Share of prompts held out for evaluation (by prompt hash)."
    )
    min_agreement: float = Field(
        default=0.6, ge=0, le=1,
        description="Labelers agreeing less often with the others' consensus are down-weighted.",
    )
