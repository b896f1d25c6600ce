"""Settings of the event log and the outbox (environment variables ``HHH_EVENTS_*``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.files import PRIVATE_DIR_MODE

log = logging.getLogger(__name__)


def hhh_home() -> Path:
    """The folder for hhh's local state: ``$HHH_HOME``, else ``.hhh`` in the working folder."""
    return Path(os.environ.get("HHH_HOME", ".hhh"))


def private_hhh_home() -> Path:
    """``hhh_home()``, created 0700 or tightened to 0700: it holds every user's prompts (event
    log, outbox, dataset) and the keys, which no other account on the machine may read.

    A home this process does not own (a volume's mount point, say) cannot be tightened: that is
    logged as a warning, and its files are still created 0600.
    """
    home = hhh_home()
    home.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if home.stat().st_mode & 0o077:
        try:
            home.chmod(PRIVATE_DIR_MODE)
        except PermissionError:
            log.warning("HHH_HOME %s is open to other accounts and not ours to change (mode %o); "
                        "its files are private (0600), but restrict the folder", home,
                        home.stat().st_mode & 0o777)
    return home


class KafkaSettings(BaseSettings):
    """How to reach a Kafka cluster. Security settings are passed through to kafka-python."""

    model_config = SettingsConfigDict(env_prefix="HHH_KAFKA_", extra="forbid")

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Comma-separated host:port list of brokers."
    )
    topic_prefix: str = Field(
        default="hhh.", description="Prefix of every topic name, so several deployments share a cluster."
    )
    partitions: int = Field(default=4, ge=1, description="Partitions of topics hhh creates.")
    replication_factor: int = Field(default=1, ge=1, description="Replicas of topics hhh creates.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How clients talk to the brokers (Kafka's security.protocol)."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism; required with a SASL_* security_protocol."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(default=None, description="Never logged.")
    ssl_cafile: Path | None = Field(default=None, description="CA bundle to verify the brokers.")
    session_timeout_ms: int = Field(
        default=6000,
        ge=1000,
        description="Group session timeout. A join takes about half of it, so keep it short.",
    )
    heartbeat_interval_ms: int = Field(
        default=2000, ge=100, description="Consumer heartbeat period; at most a third of the session timeout."
    )
    request_timeout_ms: int = Field(
        default=30000, ge=1000, description="How long a client waits for a broker's answer."
    )
    producer_batch_bytes: int = Field(
        default=1024 * 1024,
        ge=16 * 1024,
        description="Producer batch size per partition; large batches carry most of the throughput.",
    )
    producer_linger_ms: int = Field(
        default=10, ge=0, description="How long the producer waits to fill a batch."
    )

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms={self.heartbeat_interval_ms} must be at most a third of "
                f"session_timeout_ms={self.session_timeout_ms}"
            )
        uses_sasl = self.security_protocol.startswith("SASL")
        if uses_sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(
                f"security_protocol={self.security_protocol} needs sasl_mechanism, sasl_username "
                "and sasl_password (HHH_KAFKA_SASL_*)"
            )
        if not uses_sasl and self.sasl_mechanism:
            raise ValueError(
                f"sasl_mechanism={self.sasl_mechanism} is set but security_protocol="
                f"{self.security_protocol} does not use SASL"
            )
        return self

    def client_options(self) -> dict[str, object]:
        """Connection and security options shared by kafka-python's producer, consumer, admin."""
        options: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.sasl_mechanism:
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            }
        if self.ssl_cafile:
            options["ssl_cafile"] = str(self.ssl_cafile)
        return options


class EventLogSettings(BaseSettings):
    """Which event log to use: the embedded SQLite file (default) or Kafka."""

    model_config = SettingsConfigDict(env_prefix="HHH_EVENTS_", extra="forbid")

    backend: Literal["sqlite", "kafka"] = Field(
        default="sqlite", description="'sqlite': one machine, nothing to run; 'kafka': a cluster."
    )
    sqlite_path: Path = Field(
        default_factory=lambda: hhh_home() / "events.db", description="The embedded log's file."
    )
    sqlite_partitions: int = Field(default=4, ge=1, description="Partitions per embedded topic.")
    sqlite_durable_sync: bool = Field(
        default=False,
        description="fsync every commit (survives power loss), not only process crashes.",
    )
    outbox_path: Path = Field(
        default_factory=lambda: hhh_home() / "outbox.db",
        description="The outbox of this process group: events wait here until delivered.",
    )
