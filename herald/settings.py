"""Typed settings, read from the environment (pydantic-settings).

Defaults match the embedded local stack (``herald dev up``); every address can be pointed
elsewhere by its environment variable, and then nothing local is started for it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from herald import PROJECT_ROOT

DEFAULT_KAFKA_PORT = 19092
DEFAULT_KAFKA_CONTROLLER_PORT = 19093
DEFAULT_POSTGRES_PORT = 15432
DEFAULT_SMTP_PORT = 12525
DEFAULT_SMS_PORT = 18025
#: The local stack's second SMTP sink (``smtp-b``; its API on the next port) and second SMS
#: stand-in (``sms-b``), the failover providers ``herald run`` points the senders at.
DEFAULT_SMTP_B_PORT = 12527
DEFAULT_SMS_B_PORT = 18026
DEFAULT_WEBHOOK_SINK_PORT = 18030
DEFAULT_INGEST_PORT = 18000
DEFAULT_READ_API_PORT = 18001


def _url_list(value: str) -> list[str]:
    """A comma-separated list of URLs (blanks dropped)."""
    return [url.strip() for url in value.split(",") if url.strip()]


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"//{url}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


def cron_expression(value: str, setting: str) -> str:
    """A schedule setting (cron format) stripped; empty means never. ``ValueError`` naming
    ``setting`` when it is not a cron expression."""
    from croniter import croniter

    value = value.strip()
    if value and not croniter.is_valid(value):
        raise ValueError(f"{setting} {value!r} is not a cron expression")
    return value


class KafkaSettings(BaseSettings):
    """Where Kafka is and how clients talk to it."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
    #: Prefix for every topic name; tests set a uuid prefix so they never share topics.
    topic_prefix: str = ""
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    #: How long a producer waits to fill a batch (librdkafka ``linger.ms``). Records travel
    #: in larger batches, so the broker and every consumer handle fewer requests; each hop
    #: waits up to this long (issue 10: 5 → 20 ms took the in-app peak from 3,773 to 4,096
    #: events/s, with lz4).
    linger_ms: int = Field(default=20, ge=0, le=1_000)
    #: Batch compression of Herald's producers (``none``, ``lz4``, ``zstd``, ``gzip``,
    #: ``snappy``). Herald's records are a few hundred bytes of Avro: compression saves
    #: little on them and costs CPU in every producer and the broker (issue 10: lz4 → none
    #: took the in-app peak from 4,096 to 4,322 events/s with everything on one machine).
    #: Choose ``lz4`` or ``zstd`` where the network, not CPU, is the limit.
    compression_type: Literal["none", "lz4", "zstd", "gzip", "snappy"] = "none"

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
    #: Failover relays after ``SMTP_URL``, in order (comma-separated URLs of the same form;
    #: empty: none). The providers are named smtp-a (SMTP_URL), smtp-b, ...
    smtp_fallback_urls: str = ""
    email_from: str = "Herald <notifications@herald.local>"

    @property
    def provider_urls(self) -> list[str]:
        """``SMTP_URL`` then every fallback, in order."""
        return [self.smtp_url, *_url_list(self.smtp_fallback_urls)]

    @property
    def address(self) -> tuple[str, int]:
        return _host_port(self.smtp_url, 25)


class SmsSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    sms_api_url: str = f"http://127.0.0.1:{DEFAULT_SMS_PORT}"
    #: Failover providers after ``SMS_API_URL``, in order (comma-separated; empty: none), with
    #: the same API. ``https://SID:TOKEN@host`` gives one its own account sid and token
    #: (default: SMS_ACCOUNT_SID/SMS_AUTH_TOKEN). Named sms-a (SMS_API_URL), sms-b, ...
    sms_api_fallback_urls: str = ""
    sms_account_sid: str = "ACherald0000000000000000000000local"
    sms_auth_token: str = "local-token"
    sms_from: str = "+15005550006"

    def providers(self) -> list[SmsSettings]:
        """The settings of each provider, ``SMS_API_URL`` first, then every fallback (its
        credentials taken out of its URL when it has some)."""
        out = [self]
        for url in _url_list(self.sms_api_fallback_urls):
            parts = urlsplit(url)
            update = {"sms_api_url": url}
            if parts.username:
                netloc = parts.hostname or ""
                netloc += f":{parts.port}" if parts.port else ""
                update = {
                    "sms_api_url": urlunsplit(parts._replace(netloc=netloc)),
                    "sms_account_sid": unquote(parts.username),
                    "sms_auth_token": unquote(parts.password or ""),
                }
            out.append(self.model_copy(update=update))
        return out

    @property
    def address(self) -> tuple[str, int]:
        return _host_port(self.sms_api_url, 80)


class WebhookSinkSettings(BaseSettings):
    """The local stack's webhook sink (``herald.devstack.webhook_sink``), where local users'
    webhook and Slack endpoints point."""

    model_config = SettingsConfigDict(extra="ignore")

    webhook_sink_url: str = f"http://127.0.0.1:{DEFAULT_WEBHOOK_SINK_PORT}"

    @property
    def address(self) -> tuple[str, int]:
        return _host_port(self.webhook_sink_url, 80)


class LocalStackSettings(BaseSettings):
    """Where the embedded local stack keeps its state and which loopback ports it binds."""

    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore")

    local_dir: Path = PROJECT_ROOT / ".local"
    kafka_controller_port: int = DEFAULT_KAFKA_CONTROLLER_PORT
    kafka_heap: str = "768m"
    ingest_port: int = DEFAULT_INGEST_PORT
    read_api_port: int = DEFAULT_READ_API_PORT
    #: The second SMTP sink (its HTTP API on the next port) and SMS stand-in: the failover
    #: providers smtp-b and sms-b of the local stack.
    smtp_b_port: int = DEFAULT_SMTP_B_PORT
    sms_b_port: int = DEFAULT_SMS_B_PORT


class Settings(BaseSettings):
    """Everything a Herald process needs, grouped."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    sms: SmsSettings = Field(default_factory=SmsSettings)
    webhook_sink: WebhookSinkSettings = Field(default_factory=WebhookSinkSettings)
    local: LocalStackSettings = Field(default_factory=LocalStackSettings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
