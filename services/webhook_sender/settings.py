"""Settings of the webhook and Slack senders (prefixes ``WEBHOOK_SENDER_`` and
``SLACK_SENDER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from herald.sender import SenderSettings


class EndpointSenderSettings(SenderSettings):
    """What both kinds configure: batching, HTTP timeouts, Retry-After and the endpoint cache."""

    #: Records consumed per batch (several times ``concurrency``, so the window stays full).
    batch_size: int = Field(default=1_000, ge=1, le=10_000)
    #: Requests in flight at once, to all endpoints together.
    concurrency: int = Field(default=128, ge=1, le=1_000)
    #: Seconds to wait for an endpoint's answer (read/write) and for a connection.
    http_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    #: A 429 whose Retry-After (seconds) is at most this is waited out and sent once more
    #: in the same attempt; a longer one (or a second 429) goes to the next retry tier.
    retry_after_max_wait_seconds: float = Field(default=10.0, ge=0, le=60)
    #: How long an endpoint read from PostgreSQL is trusted (each batch reads its own anyway).
    endpoint_cache_seconds: float = Field(default=5.0, ge=0, le=300)


class WebhookSenderSettings(EndpointSenderSettings):
    model_config = SettingsConfigDict(env_prefix="WEBHOOK_SENDER_", extra="ignore")

    metrics_port: int = Field(default=9105, ge=0, le=65_535)


class SlackSenderSettings(EndpointSenderSettings):
    model_config = SettingsConfigDict(env_prefix="SLACK_SENDER_", extra="ignore")

    metrics_port: int = Field(default=9106, ge=0, le=65_535)


SETTINGS: dict[str, type[EndpointSenderSettings]] = {
    "webhook": WebhookSenderSettings,
    "slack": SlackSenderSettings,
}
