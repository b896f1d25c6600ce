"""Settings of the gateway (environment variables ``HHH_GATEWAY_*``) and of its labeler queue
(``HHH_LABELING_*``); the adapter hot-swap has its own in `serving.adapters.config`.

Secrets (API keys, the completion-id signing key) are ``SecretStr``: they never appear in
logs, reprs or error messages. Invalid combinations are refused at start-up with the values.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.config import hhh_home

_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "xxx", "test"}
_MIN_SIGNING_KEY_CHARS = 32


class ApiKey(BaseModel):
    """Who an API key belongs to, and what it may do."""

    model_config = {"extra": "forbid", "frozen": True}

    user: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$",
                      description="The user id the key's requests act as.")
    roles: frozenset[Literal["labeler", "admin"]] = Field(
        default=frozenset(),
        description="labeler: may rate any completion and name a labeler_id; admin: the admin API.",
    )


class GatewaySettings(BaseSettings):
    """How the gateway listens, whom it lets in, and where it sends requests."""

    model_config = SettingsConfigDict(env_prefix="HHH_GATEWAY_", extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port to listen on.")
    engine_urls: list[str] = Field(
        default_factory=list,
        description="Base URLs of vLLM OpenAI servers (JSON list). Empty: `hhh serve` starts one.",
    )
    engine_api_key: SecretStr | None = Field(
        default=None,
        description="The key the engines require (vLLM's --api-key), sent on every engine request. "
        "`hhh serve` generates one for the engine it starts; set it for engines of your own.",
    )
    served_model_name: str = Field(
        default="hhh", description="The model name clients ask for; it routes to the live adapter."
    )
    auth: bool = Field(
        default=False,
        description="Require `Authorization: Bearer <key>`. Off: the `user` field names the caller.",
    )
    api_keys: dict[SecretStr, ApiKey] = Field(
        default_factory=dict,
        description='API key -> {"user": id, "roles": ["labeler"]} (JSON). Needed when auth is on.',
    )
    api_keys_file: Path | None = Field(
        default=None, description="A JSON file of the same mapping, instead of api_keys."
    )
    anonymous_user: str = Field(
        default="anonymous", description="The caller when auth is off and no `user` is given."
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="HMAC key of completion ids; every replica needs the same one. Unset: a key "
        "generated once and kept in $HHH_HOME/signing.key (one machine).",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="Bearer credential of the admin API (/admin/adapters: list, rollback, pin). "
        "Unset: the admin API is off (404).",
    )
    max_n: int = Field(default=8, ge=1, le=128, description="Largest `n` a request may ask for.")
    max_tokens: int = Field(default=512, ge=1, description="Largest `max_tokens` allowed.")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Largest request body.")
    request_timeout_s: float = Field(
        default=300.0, gt=0,
        description="Per request to an engine; for a stream, the longest the engine may be silent.",
    )
    health_interval_s: float = Field(default=1.0, gt=0, description="Engine health-check period.")

    @field_validator("engine_urls")
    @classmethod
    def _urls_are_http(cls, urls: list[str]) -> list[str]:
        bad = [url for url in urls if not url.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"engine_urls must be http(s) URLs, got {bad}")
        return [url.rstrip("/") for url in urls]

    @model_validator(mode="after")
    def _consistent(self) -> GatewaySettings:
        if self.api_keys and self.api_keys_file:
            raise ValueError("set api_keys or api_keys_file, not both")
        if self.auth and not (self.api_keys or self.api_keys_file):
            raise ValueError("auth=true needs api_keys or api_keys_file (HHH_GATEWAY_API_KEYS)")
        for name, secret in (("signing_key", self.signing_key), ("admin_key", self.admin_key)):
            key = secret.get_secret_value() if secret is not None else None
            if key is not None and (key.lower() in _PLACEHOLDER_SECRETS or len(key) < _MIN_SIGNING_KEY_CHARS):
                raise ValueError(
                    f"{name} must be a random secret of at least {_MIN_SIGNING_KEY_CHARS} "
                    f"characters, not a placeholder (got {len(key)} characters)"
                )
        return self

    def key_table(self) -> dict[str, ApiKey]:
        """API key -> owner, from ``api_keys`` or ``api_keys_file``."""
        if self.api_keys_file is None:
            return {key.get_secret_value(): owner for key, owner in self.api_keys.items()}
        document = json.loads(self.api_keys_file.read_text())
        return {key: ApiKey.model_validate(owner) for key, owner in document.items()}

    def signing_secret(self) -> bytes:
        """The completion-id HMAC key: configured, or generated once under $HHH_HOME."""
        if self.signing_key is not None:
            return self.signing_key.get_secret_value().encode("utf-8")
        path = hhh_home() / "signing.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_hex(32))
        return path.read_text().strip().encode("utf-8")


class LabelingSettings(BaseSettings):
    """How many judgements an item needs and how long a labeler holds one (``HHH_LABELING_*``)."""

    model_config = SettingsConfigDict(env_prefix="HHH_LABELING_", extra="forbid")

    min_rankings: int = Field(default=3, ge=1, description="Labelers per item, at least.")
    max_rankings: int = Field(default=5, ge=1, description="Labelers per item while they disagree.")
    reservation_s: float = Field(default=300.0, gt=0, description="How long `next` holds an item.")
    max_items: int = Field(default=10_000, ge=1, description="Newest items kept in memory.")
    poll_s: float = Field(default=0.5, gt=0, description="How often the event log is read.")
