"""Settings of the SMS sender (environment prefix ``SMS_SENDER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from herald.sender import SenderSettings


class SmsSenderSettings(SenderSettings):
    """How the SMS sender batches, talks to the provider and reports."""

    model_config = SettingsConfigDict(env_prefix="SMS_SENDER_", extra="ignore")

    metrics_port: int = Field(default=9103, ge=0, le=65_535)
    #: Records consumed per batch (several times ``concurrency``, so the window stays full).
    batch_size: int = Field(default=1_000, ge=1, le=10_000)
    #: HTTP requests in flight at once (SMS_SENDER_CONCURRENCY): at 100 ms a request, 256
    #: allow ~2,500 sends/s, within SMS_SENDER_MAX_PER_SECOND.
    concurrency: int = Field(default=256, ge=1, le=1_000)
    #: Longest message in segments; longer bodies are truncated with an ellipsis (each
    #: segment is billed, and carriers reassemble long chains unreliably).
    max_segments: int = Field(default=10, ge=1, le=50)
    #: Seconds to wait for the provider's answer (read/write) and for a connection.
    http_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
