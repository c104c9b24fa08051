"""Settings of the SMS sender (environment prefix ``SMS_SENDER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SmsSenderSettings(BaseSettings):
    """How the SMS sender batches, talks to the provider and reports."""

    model_config = SettingsConfigDict(env_prefix="SMS_SENDER_", extra="ignore")

    #: Records consumed per batch.
    batch_size: int = Field(default=100, ge=1, le=10_000)
    #: Port of the Prometheus /metrics endpoint; 0 disables it.
    metrics_port: int = Field(default=9103, ge=0, le=65_535)
    #: Longest message in segments; longer bodies are truncated with an ellipsis (each
    #: segment is billed, and carriers reassemble long chains unreliably).
    max_segments: int = Field(default=10, ge=1, le=50)
    #: Seconds to wait for the provider's answer (read/write) and for a connection.
    http_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    #: Pooled connections to the provider kept open.
    max_connections: int = Field(default=10, ge=1, le=100)
    #: Time one batch may take; records left when it is spent go to the next retry tier
    #: untried (keeps a batch well inside the consumer's 5-minute max.poll.interval.ms).
    batch_budget_seconds: float = Field(default=120.0, ge=0, le=240)
    #: Stop after this many records in a row went to the dead-letter topic (0: never).
    max_consecutive_failures: int = Field(default=1_000, ge=0)
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
