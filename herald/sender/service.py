"""Running a sender service: settings every channel shares, the loop, the journal."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from herald.db import make_engine
from herald.observability import DELIVERY_LATENCY, KafkaMetrics, dlq_topics_of
from herald.sender.breaker import Breaker
from herald.sender.handler import CIRCUIT_TRIPS, SenderHandler, SenderRoutes
from herald.sender.journal import JournalStopped, PostgresJournal, SendJournal
from herald.sender.pool import SendFunction, SendPool, TokenBucket
from herald.sender.providers import ProviderChain, Uncertain, never_uncertain
from herald.settings import KafkaSettings, Settings
from herald.streaming import DEAD_LETTERS, RETRIES, BatchLoop, header_not_before
from schemas import CATALOGUE, Catalogue

log = logging.getLogger(__name__)


def run_sender(
    *,
    service: str,
    channel: str,
    send: SendFunction,
    catalogue: Catalogue,
    kafka: KafkaSettings,
    journal: SendJournal,
    batch_size: int,
    concurrency: int = 1,
    max_per_second: float = 0,
    resend_uncertain: bool = False,
    breaker: Breaker | None = None,
    batch_budget_seconds: float = 0,
    prepare: Callable[[list[dict[str, Any]]], None] | None = None,
    consumer_overrides: Mapping[str, Any] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run a sender until SIGTERM/SIGINT; return the exit status (0 stopped, 2 crashed).

    The consumer group is the service name under the topic prefix, so isolated deployments
    (and tests) never share a group. SIGTERM finishes the current batch, commits and exits.
    ``stop`` (shared with the journal, so a wait for the database ends on SIGTERM too)
    becomes the loop's stop event.
    """
    routes = SenderRoutes.for_channel(catalogue, channel)
    # Every series an operator graphs exists from the start, at 0 (not only after a failure).
    for tier in routes.retry_topics:
        RETRIES.labels(service, tier.rpartition(".retry-")[2])
    DEAD_LETTERS.labels(service, routes.dlq_topic)
    CIRCUIT_TRIPS.labels(channel)
    DELIVERY_LATENCY.labels(channel, "sent")
    pool = SendPool(
        send, channel=channel, concurrency=concurrency, limit=TokenBucket(max_per_second)
    )
    handler = SenderHandler(
        service=service,
        routes=routes,
        catalogue=catalogue,
        pool=pool,
        journal=journal,
        resend_uncertain=resend_uncertain,
        breaker=breaker,
        batch_budget_seconds=batch_budget_seconds,
        prepare=prepare,
    )
    loop = BatchLoop(
        service=service,
        kafka=kafka,
        topics=routes.topics,
        handler=handler,
        group_id=f"{kafka.topic_prefix}{service}",
        batch_size=batch_size,
        consumer_overrides=dict(consumer_overrides or {}),
        not_before=header_not_before,
    )
    if stop is not None:
        loop.stop_event = stop
    loop.install_signal_handlers()
    log.info(
        "%s consuming", service, extra={"topics": routes.topics, "dlq_topic": routes.dlq_topic}
    )
    try:
        loop.run()
    except JournalStopped:
        log.info("%s stopped while waiting for the database; the batch is not committed", service)
        return 0
    except Exception:
        # Infrastructure trouble (database, broker): stop without committing, so the batch is
        # consumed again after a restart; log it as JSON like everything else.
        log.exception("%s crashed", service)
        return 2
    finally:
        handler.close()
    log.info("%s stopped", service)
    return 0


class SenderSettings(BaseSettings):
    """What every channel sender configures the same way; each channel subclasses it with
    its own environment prefix, metrics port and provider settings."""

    model_config = SettingsConfigDict(extra="ignore")

    #: Records consumed per batch.
    batch_size: int = Field(default=100, ge=1, le=10_000)
    #: Sends in flight at once (threads; each waits on the provider, not the CPU). A batch
    #: keeps at most this many in flight, so ``batch_size`` should be a few times larger.
    concurrency: int = Field(default=16, ge=1, le=1_000)
    #: The provider's rate limit, in sends per second across all sends in flight (0: none).
    max_per_second: float = Field(default=0, ge=0)
    #: Port of the Prometheus /metrics endpoint; 0 disables it.
    metrics_port: int = Field(default=0, ge=0, le=65_535)
    #: Time one batch may take; records left when it is spent go to the next retry tier
    #: untried (keeps a batch well inside the consumer's 5-minute max.poll.interval.ms).
    batch_budget_seconds: float = Field(default=120.0, ge=0, le=240)
    #: Transient failures in a row after which the sender stops trying and backs off
    #: (0: never; every record then walks the retry tiers to the DLQ at full speed).
    breaker_failures: int = Field(default=20, ge=0)
    #: First back-off once the breaker opens; doubled after each failed probe.
    breaker_backoff_seconds: float = Field(default=5.0, gt=0, le=3600)
    #: Longest back-off between two probes of a failing provider.
    breaker_backoff_max_seconds: float = Field(default=300.0, gt=0, le=3600)
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")

    def breaker(self) -> Breaker:
        return Breaker(
            failures=self.breaker_failures,
            backoff=self.breaker_backoff_seconds,
            backoff_max=self.breaker_backoff_max_seconds,
        )

    #: Provider failover (several providers, :mod:`herald.sender.providers`): transient
    #: failures in a row after which a provider is skipped and sends go to the next one.
    provider_breaker_failures: int = Field(default=5, ge=1)
    #: How long a failing provider is skipped before one send probes it; doubled after each
    #: failed probe up to ``provider_backoff_max_seconds``.
    provider_backoff_seconds: float = Field(default=5.0, gt=0, le=3600)
    provider_backoff_max_seconds: float = Field(default=60.0, gt=0, le=3600)

    def provider_chain(
        self,
        channel: str,
        providers: Sequence[tuple[str, SendFunction]],
        uncertain: Uncertain = never_uncertain,
    ) -> ProviderChain:
        """The channel's providers, in order, as one send function with failover."""
        return ProviderChain(
            channel,
            providers,
            failures=self.provider_breaker_failures,
            backoff=self.provider_backoff_seconds,
            backoff_max=self.provider_backoff_max_seconds,
            uncertain=uncertain,
        )


def serve_channel(
    *,
    service: str,
    channel: str,
    own: SenderSettings,
    settings: Settings,
    send: SendFunction,
    close: Callable[[], None],
    resend_uncertain: bool = False,
    prepare: Callable[[list[dict[str, Any]]], None] | None = None,
) -> int:
    """A channel sender's main loop: ``run_sender`` with the settings every sender shares,
    then ``close`` (the provider connection) and the database pool, however it ended."""
    engine = make_engine(settings.database, pool_size=1, max_overflow=1)
    stop = threading.Event()
    journal = PostgresJournal(engine, service=service, stop=stop)
    catalogue = CATALOGUE.with_prefix(settings.kafka.topic_prefix)
    # herald_consumer_lag and herald_dlq_depth of this sender's group and DLQ, when served.
    topics = SenderRoutes.for_channel(catalogue, channel).topics
    kafka_metrics = KafkaMetrics.start_for(
        settings.kafka,
        group=f"{settings.kafka.topic_prefix}{service}",
        topics=topics,
        dlq_topics=dlq_topics_of(catalogue, topics),
        enabled=own.metrics_port != 0,
    )
    try:
        return run_sender(
            service=service,
            channel=channel,
            send=send,
            catalogue=catalogue,
            kafka=settings.kafka,
            journal=journal,
            batch_size=own.batch_size,
            concurrency=own.concurrency,
            max_per_second=own.max_per_second,
            resend_uncertain=resend_uncertain,
            breaker=own.breaker(),
            batch_budget_seconds=own.batch_budget_seconds,
            prepare=prepare,
            stop=stop,
        )
    finally:
        if kafka_metrics is not None:
            kafka_metrics.stop()
        close()
        journal.close()
        engine.dispose()
