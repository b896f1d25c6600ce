"""Settings of the gateway (environment variables ``HHH_GATEWAY_*``) and of its labeler queue
(``HHH_LABELING_*``); the adapter hot-swap has its own in `serving.adapters.config`.

Secrets (API keys, the completion-id signing key) are ``SecretStr``: they never appear in
logs, reprs or error messages (errors leave inputs out, and name an API key by its position and
user, never by the key). API keys may be configured as their SHA-256 (``sha256:<hex>``), so the
configuration need not hold them at all. Invalid combinations are refused at start-up with the
values.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.cpus import checked_cpu_setting
from common.errors import UserError
from common.files import PRIVATE_FILE_MODE, write_atomically
from streams.config import private_hhh_home
from streams.user_ids import UserId

_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "xxx", "test"}
_MIN_SIGNING_KEY_CHARS = 32
_HASHED_KEY = re.compile(r"sha256:([0-9a-f]{64})")
HASHED_KEY_PREFIX = "sha256:"
"""An ``api_keys`` entry ``sha256:<64 lowercase hex digits>`` is the SHA-256 of the key, not the key."""


def api_key_digest(key: str) -> str:
    """The hex SHA-256 of an API key: how the gateway looks keys up (``sha256:`` entries give it)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKey(BaseModel):
    """Who an API key belongs to, and what it may do."""

    model_config = {"extra": "forbid", "frozen": True}

    user: UserId = Field(description="The user id the key's requests act as.")
    roles: frozenset[Literal["labeler", "admin"]] = Field(
        default=frozenset(),
        description="labeler: may rate any completion and rank as one of its labeler_ids; "
        "admin: the admin API.",
    )
    labeler_ids: frozenset[UserId] = Field(
        default=frozenset(),
        description="The labeler ids a labeler key may name in a ranking's labeler_id, besides its "
        "own user id (a panel it judges for); any other labeler_id is refused (403).",
    )

    @model_validator(mode="after")
    def _labeler_ids_need_the_role(self) -> ApiKey:
        if self.labeler_ids and "labeler" not in self.roles:
            raise ValueError(
                f"labeler_ids {sorted(self.labeler_ids)} need the labeler role (roles: {sorted(self.roles)})"
            )
        return self


def parse_key_table(document: object, source: str) -> dict[str, ApiKey]:
    """``{key or "sha256:<hex>": owner}`` -> {SHA-256 of the key: owner}, refusing bad entries.

    Errors name an entry by its position and user in ``source``, never by its key.
    """
    if not isinstance(document, dict):
        raise UserError(
            f"{source} must be a JSON object of API key -> owner, got {type(document).__name__}"
        )
    table: dict[str, ApiKey] = {}
    for position, (key, owner) in enumerate(document.items(), start=1):
        key = key.get_secret_value() if isinstance(key, SecretStr) else key
        user = owner.get("user") if isinstance(owner, dict) else None
        entry = f"{source} entry {position}" + (f" (user {str(user)[:40]!r})" if user else "")
        try:
            owner = owner if isinstance(owner, ApiKey) else ApiKey.model_validate(owner)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, item['loc'])) or 'owner'}: {item['msg'].removeprefix('Value error, ')}"
                for item in error.errors(include_input=False, include_url=False)
            )
            raise UserError(f"{entry}: {problems}") from None
        if key.startswith(HASHED_KEY_PREFIX):
            if not (hashed := _HASHED_KEY.fullmatch(key)):
                raise UserError(f"{entry}: a hashed key is 'sha256:' and 64 lowercase hex digits")
            digest = hashed.group(1)
        else:
            digest = api_key_digest(key)
        if digest in table:
            raise UserError(f"{entry}: the same key as another entry")
        table[digest] = owner
    return table


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class GatewaySettings(BaseSettings):
    """How the gateway listens, whom it lets in, and where it sends requests."""

    model_config = SettingsConfigDict(
        env_prefix="HHH_GATEWAY_", extra="forbid", hide_input_in_errors=True  # inputs hold secrets
    )

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
        description="Require `Authorization: Bearer <key>`. Off: the `user` field names the caller, "
        "so anyone can act as anyone; refused on a non-loopback host unless "
        "allow_unauthenticated_public is set.",
    )
    allow_unauthenticated_public: bool = Field(
        default=False,
        description="UNSAFE: let auth be off on a non-loopback host (anyone who reaches the port "
        "can act as any user). Only behind a proxy that authenticates; logged as a warning.",
    )
    api_keys: dict[SecretStr, ApiKey] = Field(
        default_factory=dict,
        description='API key (or "sha256:<hex>" of it) -> {"user": id, "roles": ["labeler"], '
        '"labeler_ids": [...]} (JSON). Needed when auth is on.',
    )
    api_keys_file: Path | None = Field(
        default=None, description="A JSON file of the same mapping, instead of api_keys."
    )
    anonymous_user: UserId = Field(
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
    engine_restart_after_s: float = Field(
        default=15.0, gt=0,
        description="How long the engine `hhh serve` starts may fail its health check (GET /health: "
        "503 once vLLM's engine core died) while its process runs before it is restarted. Remote "
        "engines (engine_urls) are only marked down, never restarted.",
    )
    engine_start_timeout_s: float = Field(
        default=900.0, gt=0,
        description="How long the engine `hhh serve` starts may take to answer its first health "
        "check before it is taken for hung and restarted (vLLM on CPU: 30-120 s to load).",
    )
    workers: int = Field(
        default=1, ge=1,
        description="Gateway worker processes behind the one port (`hhh serve`/`hhh up`; the "
        "kernel spreads connections over them, SO_REUSEPORT). 1: the gateway runs in the "
        "`hhh serve` process itself. Each worker has its own replica id (<replica>-w<i>), "
        "hot-swap controller and outbox (<outbox>-w<i>.db); at most the cores this process may "
        "use. The per-caller limits (HHH_LIMITS_*) apply per worker.",
    )
    engine_cpus: str = Field(
        default="auto",
        description="CPUs of the engine `hhh serve` starts (a vLLM CPU build): a cpu list such as "
        "0-3,6 pins its processes and binds its OpenMP threads there; 'auto': under `hhh up`, "
        "beside the trainer, the engine's share of the plan in common/cpus.py (2 CPUs: cpu 0), "
        "alone unpinned; 'all': never pinned. Remote engines (engine_urls) are not affected.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_are_valid(cls, keys: Any) -> Any:
        parse_key_table(keys, "api_keys")  # refuses bad entries without naming their keys
        return keys

    @field_validator("engine_cpus")
    @classmethod
    def _cpus_are_available(cls, value: str) -> str:
        return checked_cpu_setting(value, "HHH_GATEWAY_ENGINE_CPUS")

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
        if not self.auth and not _is_loopback(self.host) and not self.allow_unauthenticated_public:
            raise ValueError(
                f"auth is off but host={self.host!r} is not a loopback address: anyone reaching it "
                "could act as any user. Turn auth on (HHH_GATEWAY_AUTH=true with API keys), listen "
                "on 127.0.0.1, or, behind a proxy that authenticates, set "
                "HHH_GATEWAY_ALLOW_UNAUTHENTICATED_PUBLIC=true"
            )
        for name, secret in (("signing_key", self.signing_key), ("admin_key", self.admin_key)):
            key = secret.get_secret_value() if secret is not None else None
            if key is not None and (key.lower() in _PLACEHOLDER_SECRETS or len(key) < _MIN_SIGNING_KEY_CHARS):
                raise ValueError(
                    f"{name} must be a random secret of at least {_MIN_SIGNING_KEY_CHARS} "
                    f"characters, not a placeholder (got {len(key)} characters)"
                )
        return self

    @property
    def public_without_auth(self) -> bool:
        """Auth is off on a non-loopback address (allowed only by allow_unauthenticated_public)."""
        return not self.auth and not _is_loopback(self.host)

    def key_table(self) -> dict[str, ApiKey]:
        """SHA-256 of each API key -> its owner, from ``api_keys`` or ``api_keys_file`` (read
        now: the gateway calls this at start-up); a `UserError` for a bad file or entry."""
        if self.api_keys_file is None:
            return parse_key_table(self.api_keys, "api_keys")
        source = str(self.api_keys_file)
        try:
            document = json.loads(self.api_keys_file.read_text())
        except OSError as error:
            raise UserError(f"api_keys_file {source}: {error.strerror}") from None
        except ValueError as error:  # JSONDecodeError's message has the position, not the text
            raise UserError(f"api_keys_file {source} is not JSON: {error}") from None
        return parse_key_table(document, source)

    def signing_secret(self) -> bytes:
        """The completion-id HMAC key: configured, or generated once under $HHH_HOME.

        The generated key is written atomically and only where none exists: a crash leaves no
        key file rather than an empty one, and of two replicas starting at once the first wins.
        """
        if self.signing_key is not None:
            return self.signing_key.get_secret_value().encode("utf-8")
        path = private_hhh_home() / "signing.key"
        if not path.exists():
            try:
                write_atomically(path, secrets.token_hex(32), mode=PRIVATE_FILE_MODE, exclusive=True)
            except FileExistsError:
                pass  # another process wrote it first: use theirs
        key = path.read_text().strip()
        if len(key) < _MIN_SIGNING_KEY_CHARS:
            raise UserError(
                f"{path} holds {len(key)} characters, not a signing key (left by a crash of an older "
                "hhh?); delete it to generate a new one (ids signed with it stop verifying)"
            )
        return key.encode("utf-8")


class LabelingSettings(BaseSettings):
    """How many judgements an item needs and how long a labeler holds one (``HHH_LABELING_*``)."""

    model_config = SettingsConfigDict(env_prefix="HHH_LABELING_", extra="forbid")

    min_rankings: int = Field(default=3, ge=1, description="Labelers per item, at least.")
    max_rankings: int = Field(default=5, ge=1, description="Labelers per item while they disagree.")
    reservation_s: float = Field(default=300.0, gt=0, description="How long `next` holds an item.")
    max_items: int = Field(default=10_000, ge=1, description="Newest items kept in memory.")
    poll_s: float = Field(default=0.5, gt=0, description="How often the event log is read.")
