"""Typed settings, read from the environment (pydantic-settings).

Defaults match the embedded local stack (``herald dev up``); every address can be pointed
elsewhere by its environment variable, and then nothing local is started for it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from herald import PROJECT_ROOT

DEFAULT_KAFKA_PORT = 19092
DEFAULT_KAFKA_CONTROLLER_PORT = 19093
DEFAULT_POSTGRES_PORT = 15432
DEFAULT_SMTP_PORT = 12525
DEFAULT_SMS_PORT = 18025
DEFAULT_INGEST_PORT = 18000
DEFAULT_READ_API_PORT = 18001


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"//{url}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


class KafkaSettings(BaseSettings):
    """Where Kafka is and how clients talk to it."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
    #: Prefix for every topic name; tests set a uuid prefix so they never share topics.
    topic_prefix: str = ""
    session_timeout_ms: int = Field(default=10_000, ge=1_000)

    @field_validator("bootstrap_servers")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS must name at least one host:port")
        for server in servers:
            if ":" not in server:
                raise ValueError(f"KAFKA_BOOTSTRAP_SERVERS entry {server!r} needs host:port")
        return ",".join(servers)

    @property
    def first_address(self) -> tuple[str, int]:
        return _host_port(self.bootstrap_servers.split(",")[0], DEFAULT_KAFKA_PORT)


class DatabaseSettings(BaseSettings):
    """PostgreSQL connection; ``DATABASE_URL`` is a SQLAlchemy URL using psycopg 3."""

    model_config = SettingsConfigDict(extra="ignore")

    database_url: str = f"postgresql+psycopg://herald@127.0.0.1:{DEFAULT_POSTGRES_PORT}/herald"
    #: Schema holding Herald's tables; tests use a uuid-named schema each.
    database_schema: str = "public"

    @field_validator("database_url")
    @classmethod
    def _psycopg_url(cls, value: str) -> str:
        if value.startswith(("postgres://", "postgresql://")):
            # Accept the common libpq form and pin the driver to psycopg 3.
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        if not value.startswith("postgresql+psycopg://"):
            raise ValueError("DATABASE_URL must be a postgresql:// or postgresql+psycopg:// URL")
        return value

    @property
    def address(self) -> tuple[str, int]:
        return _host_port(self.database_url.split("://", 1)[1].split("@")[-1], 5432)

    @property
    def libpq_url(self) -> str:
        """The URL in the form psycopg (without SQLAlchemy) accepts."""
        return "postgresql://" + self.database_url.split("://", 1)[1]


class SmtpSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    smtp_url: str = f"smtp://127.0.0.1:{DEFAULT_SMTP_PORT}"
    email_from: str = "Herald <notifications@herald.local>"

    @property
    def address(self) -> tuple[str, int]:
        return _host_port(self.smtp_url, 25)


class SmsSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    sms_api_url: str = f"http://127.0.0.1:{DEFAULT_SMS_PORT}"
    sms_account_sid: str = "ACherald0000000000000000000000local"
    sms_auth_token: str = "local-token"
    sms_from: str = "+15005550006"

    @property
    def address(self) -> tuple[str, int]:
        return _host_port(self.sms_api_url, 80)


class LocalStackSettings(BaseSettings):
    """Where the embedded local stack keeps its state and which loopback ports it binds."""

    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore")

    local_dir: Path = PROJECT_ROOT / ".local"
    kafka_controller_port: int = DEFAULT_KAFKA_CONTROLLER_PORT
    kafka_heap: str = "768m"
    ingest_port: int = DEFAULT_INGEST_PORT
    read_api_port: int = DEFAULT_READ_API_PORT


class Settings(BaseSettings):
    """Everything a Herald process needs, grouped."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    sms: SmsSettings = Field(default_factory=SmsSettings)
    local: LocalStackSettings = Field(default_factory=LocalStackSettings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
