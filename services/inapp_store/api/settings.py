"""Settings of the read API (environment prefix ``READ_API_``).

Where PostgreSQL is comes from the shared settings (``DATABASE_URL``, ``DATABASE_SCHEMA``), the
port from ``HERALD_READ_API_PORT``, credentials from :class:`herald.auth.AuthSettings`
(``HERALD_ADMIN_API_KEYS``, ``HERALD_USER_TOKEN_SECRET``, ``HERALD_SESSION_SECRETS``,
``HERALD_SESSION_TTL_S``); Kafka (for preference changes) from ``KAFKA_*``. This class holds
what is the API's own.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from herald.limits import DEFAULT_MAX_BODY_BYTES


class ReadApiSettings(BaseSettings):
    """Limits, pool sizes and stream tuning of the read API."""

    model_config = SettingsConfigDict(env_prefix="READ_API_", extra="ignore")

    #: Interface to listen on; loopback unless deliberately exposed.
    host: str = "127.0.0.1"
    #: Largest request body accepted; larger is answered 413.
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=0)
    #: Requests per second each caller (user token or admin key) may make on average; 0: no limit.
    rate_limit_per_s: float = Field(default=20.0, ge=0)
    #: Requests each caller may make at once before the average applies.
    rate_limit_burst: int = Field(default=60, ge=1)
    #: Open real-time streams per user per process; more are answered 429.
    max_streams_per_user: int = Field(default=10, ge=1, le=10_000)
    #: Open real-time streams per API key per process (a backend streaming for its users);
    #: more are answered 429.
    max_streams_per_key: int = Field(default=100, ge=1, le=100_000)
    #: Open real-time streams per process, whoever opened them; more are answered 503.
    max_streams: int = Field(default=1000, ge=1, le=100_000)
    #: Connections and requests uvicorn serves at once (streams included); past it, 503.
    #: Must leave room above ``max_streams`` for ordinary requests.
    limit_concurrency: int = Field(default=1200, ge=2, le=1_000_000)
    #: Seconds between heartbeat comments on an idle stream (keeps proxies from closing it).
    stream_heartbeat_s: float = Field(default=15.0, gt=0, le=300)
    #: Events buffered per open stream; a client slower than that gets a ``resync`` event.
    stream_queue_size: int = Field(default=256, ge=1, le=100_000)
    #: How long /readyz waits for PostgreSQL.
    ready_timeout_s: float = Field(default=3.0, gt=0, le=60)
    #: How long a preferences change waits for Kafka's acknowledgement before answering 503.
    publish_timeout_s: float = Field(default=10.0, gt=0, le=120)
    #: Database connections kept per process (requests beyond wait for one).
    db_pool_size: int = Field(default=10, ge=1, le=200)
    #: A separate Prometheus port (0: none; /metrics on the API port always works).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    #: Log one line per request (uvicorn's access log; query-string tokens are redacted).
    access_log: bool = True
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _room_for_requests(self) -> ReadApiSettings:
        if self.limit_concurrency <= self.max_streams:
            raise ValueError(
                f"READ_API_LIMIT_CONCURRENCY ({self.limit_concurrency}) must be larger than "
                f"READ_API_MAX_STREAMS ({self.max_streams}): streams would take every slot"
            )
        return self
