"""inapp_store's own settings (environment prefix ``INAPP_STORE_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Consumer group name, after the topic prefix (``<KAFKA_TOPIC_PREFIX>inapp_store``).
SERVICE = "inapp_store"


class InappStoreSettings(BaseSettings):
    """Batching, metrics and database-retry knobs of the in-app store."""

    model_config = SettingsConfigDict(env_prefix="INAPP_STORE_", extra="ignore")

    #: Records consumed (and written in one transaction) per batch.
    batch_size: int = Field(default=2000, ge=1, le=100_000)
    #: How long one consume call waits for a batch to fill; bounds the added latency at low load.
    poll_timeout_ms: int = Field(default=50, ge=1, le=10_000)
    #: Prometheus /metrics port on 127.0.0.1; 0 disables it.
    metrics_port: int = Field(default=9104, ge=0, le=65_535)
    #: How long a batch retries a lost database connection before the service reports itself
    #: degraded (/readyz 503, herald_service_degraded). It keeps retrying after that, forever:
    #: a database outage stalls the partitions, it never stops the process.
    db_retry_seconds: float = Field(default=10.0, ge=0, le=240)
    #: Stop (exit non-zero, offsets not committed) after this many consecutive undecodable or
    #: invalid records: a stream of nothing but garbage means a broken producer or schema, and
    #: two of the three topics have no DLQ to keep it in. 0 disables the limit.
    max_consecutive_invalid: int = Field(default=1000, ge=0)
    log_level: str = "INFO"
