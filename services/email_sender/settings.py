"""Settings of the email sender (environment prefix ``EMAIL_SENDER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EmailSenderSettings(BaseSettings):
    """How the email sender batches, talks SMTP and reports."""

    model_config = SettingsConfigDict(env_prefix="EMAIL_SENDER_", extra="ignore")

    #: Records consumed (and sent over one SMTP connection) per batch.
    batch_size: int = Field(default=100, ge=1, le=10_000)
    #: Port of the Prometheus /metrics endpoint; 0 disables it.
    metrics_port: int = Field(default=9102, ge=0, le=65_535)
    #: Socket timeout of every SMTP command, connecting included.
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    #: A connection idle for longer is checked with NOOP before reuse (servers drop idle
    #: clients; finding out before MAIL FROM avoids failing a delivery for it).
    smtp_idle_check_seconds: float = Field(default=10.0, ge=0)
    #: Time one batch may take; records left when it is spent go to the next retry tier
    #: untried (keeps a batch well inside the consumer's 5-minute max.poll.interval.ms).
    batch_budget_seconds: float = Field(default=120.0, ge=0, le=240)
    #: Stop after this many records in a row went to the dead-letter topic (0: never).
    max_consecutive_failures: int = Field(default=1_000, ge=0)
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
