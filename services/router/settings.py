"""The router's own settings (environment prefix ``ROUTER_``); Kafka's come from
:class:`herald.settings.KafkaSettings`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from herald.settings import cron_expression

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class RouterSettings(BaseSettings):
    """How one router worker runs. Several workers share the work by Kafka's group protocol;
    on one machine, give each its own ``ROUTER_WEB_PORT`` (or leave it 0) and metrics port."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore")

    #: Prometheus /metrics port; 0 disables it.
    metrics_port: int = Field(default=9402, ge=0, le=65535)
    #: Faust's own web server (table and assignment pages); 0 (the default) disables it, so
    #: that several workers on one machine never collide on a port.
    web_port: int = Field(default=0, ge=0, le=65535)
    web_bind: str = "127.0.0.1"
    #: Faust's data directory. Tables are in memory (rebuilt from their changelogs), so by
    #: default each process takes a fresh temporary directory and removes it on exit.
    data_dir: Path | None = None
    log_level: str = "INFO"
    #: The asyncio event loop: uvloop (the default; faster for Faust's per-message tasks)
    #: or Python's own.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    #: How long a record waits for a user or event type that this worker's tables do not
    #: hold yet (written a moment before the record; see routing.lookup_deadline).
    lookup_grace_ms: int = Field(default=2000, ge=0, le=60_000)
    #: How often a waiting lookup looks again.
    lookup_poll_ms: int = Field(default=50, ge=1, le=1000)
    #: How long the producer waits to fill a batch: fewer, larger produce requests.
    producer_linger_ms: int = Field(default=5, ge=0, le=1000)
    #: Records produced but not yet acknowledged by the broker, at most: past it the agents
    #: wait for delivery reports (backpressure). Each stage acknowledges a consumed record to
    #: Faust when every record it made is acknowledged (services.router.outputs).
    max_in_flight: int = Field(default=20_000, ge=1, le=1_000_000)
    #: How long the broker may hold a fetch that finds no new records (aiokafka's
    #: ``fetch_max_wait_ms``; Faust fixes it at 1,500 ms). A partition resumed after its stream
    #: buffer drained is fetched once the fetch in flight returns, so this bounds that stall;
    #: an idle worker sends this many more fetches (services.router.app.RouterConsumerThread).
    fetch_max_wait_ms: int = Field(default=100, ge=10, le=5_000)
    #: How often consumed offsets are committed (after the records they produced are acked).
    commit_interval_ms: int = Field(default=1000, ge=50, le=60_000)
    #: How long a partition's commit point may stay behind records the stream skipped before
    #: the router reads them from the broker and routes them itself (services.router.ledger).
    repair_after_ms: int = Field(default=2000, ge=100, le=600_000)

    #: How often the worker holding partition 0 of the recipients topic releases the email and
    #: SMS deliveries held for quiet hours whose window has ended (services.router.holds).
    quiet_release_interval_ms: int = Field(default=5000, ge=100, le=600_000)
    #: At most this many held deliveries per database transaction of the release loop.
    quiet_release_batch: int = Field(default=500, ge=1, le=10_000)

    #: When the weekly digest runs (cron format, UTC; the worker holding partition 0 of the
    #: recipients topic runs it). Empty: never (``herald digest run --now`` still works).
    digest_cron: str = "0 8 * * 1"
    #: How often each worker looks for digest windows that have ended (services.router.digests).
    digest_window_tick_ms: int = Field(default=1000, ge=50, le=60_000)

    @field_validator("digest_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return cron_expression(value, "ROUTER_DIGEST_CRON")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"ROUTER_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}")
        return level
