"""Settings of the ingest/admin API (environment prefix ``INGEST_``).

Where Kafka and PostgreSQL are comes from the shared settings (``KAFKA_*``, ``DATABASE_*``);
the port from ``HERALD_INGEST_PORT``. This class holds only what is the API's own.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from herald.identity import MAX_RECIPIENTS


class IngestSettings(BaseSettings):
    """Limits and timeouts of the ingest API."""

    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")

    #: Interface to listen on; loopback unless deliberately exposed.
    host: str = "127.0.0.1"
    #: Most events one ``POST /v1/events`` may carry; more is answered 413.
    max_batch_events: int = Field(default=1000, ge=1, le=100_000)
    #: Most recipients one event may name (more is 422); never more than the router's hard
    #: limit (herald.identity.MAX_RECIPIENTS), past which it dead-letters the event.
    max_recipients: int = Field(default=MAX_RECIPIENTS, ge=1, le=MAX_RECIPIENTS)
    #: How long a request waits for Kafka to acknowledge its records before answering 503.
    publish_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: How long an ``Idempotency-Key`` and its stored response are kept (at least 24 h); an
    #: older one counts as never used.
    idempotency_ttl_s: int = Field(default=86_400, ge=86_400)
    #: After how long a request still in progress under an ``Idempotency-Key`` (its process
    #: died) may be taken over by a retry; default: twice ``publish_timeout_s`` plus 30 s.
    idempotency_lock_timeout_s: float | None = Field(default=None, gt=0)
    #: How long /readyz waits for PostgreSQL and Kafka to answer.
    ready_timeout_s: float = Field(default=3.0, gt=0, le=60)
    #: Database connections kept per process (requests beyond wait for one).
    db_pool_size: int = Field(default=10, ge=1, le=200)
    #: A separate Prometheus port (0: none; /metrics on the API port always works).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    #: Requests per second (sustained) and burst allowed per admin API key; past it, 429.
    rate_limit_per_s: float = Field(default=200.0, gt=0)
    rate_limit_burst: int = Field(default=400, ge=1)
    #: Largest request body accepted (a batch of 1,000 events fits); larger bodies get 413.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: Log one line per request (uvicorn's access log).
    #: Connections and requests uvicorn serves at once; past it, 503 (a flood waits outside
    #: instead of queueing on the database pool and Kafka).
    limit_concurrency: int = Field(default=500, ge=1, le=1_000_000)
    access_log: bool = True
    log_level: str = "INFO"

    @property
    def idempotency_lock_s(self) -> float:
        """The lock timeout of an ``Idempotency-Key`` claim, default applied."""
        if self.idempotency_lock_timeout_s is not None:
            return self.idempotency_lock_timeout_s
        return 2 * self.publish_timeout_s + 30
