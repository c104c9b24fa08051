"""The channel-agnostic core of a sender service (email_sender, sms_sender).

A sender consumes its channel's deliveries topic and that topic's retry tiers with
:class:`herald.streaming.BatchLoop`. For every batch, :class:`SenderHandler` decides what
happens to each ``herald.DeliveryRequest``:

- undecodable or malformed → the channel's DLQ (never stops the stream);
- already ``sent``/``delivered`` (one database query per batch, plus this process's memory of
  what it sent recently) → skipped, never sent twice;
- otherwise the channel's ``send(request)`` is called:

  - it returns the provider's message id → a ``sent`` status;
  - it raises :class:`~herald.errors.RetryableError` → the next retry tier and a ``retrying``
    status, or the DLQ and a ``dead`` status once the tiers are used up;
  - it raises :class:`~herald.errors.PermanentError` → the DLQ and a ``failed`` status.

The handler only decides and sends; :class:`~herald.streaming.BatchLoop` produces what it
returns and commits the offsets afterwards. Records on a retry tier wait for their
``x-not-before`` in the loop (their partition is paused), not here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Message
from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, select

from herald.db import make_engine
from herald.db.models import NotificationDelivery
from herald.errors import PermanentError, ProcessingError, RetryableError
from herald.metrics import DELIVERIES, ERRORS
from herald.serde import SerdeError, decode
from herald.settings import KafkaSettings, Settings
from herald.status import status_event, status_outgoing
from herald.streaming import (
    H_ATTEMPT,
    BatchLoop,
    Outgoing,
    failure_record,
    header_not_before,
    headers_dict,
)
from schemas import CATALOGUE, Catalogue

log = logging.getLogger(__name__)

REQUEST_SCHEMA = "herald.DeliveryRequest"
#: Delivery states after which a delivery must never be sent again.
DONE_STATUSES = ("sent", "delivered")

DUPLICATES_SKIPPED = Counter(
    "herald_sender_duplicates_skipped_total",
    "Deliveries not sent because they were already sent",
    ["channel"],
)


class SendFunction(Protocol):
    """A channel's way of sending one delivery.

    Returns the provider's id for the sent message (the email's Message-ID, the SMS sid);
    raises :class:`RetryableError` or :class:`PermanentError` when it could not send.
    """

    def __call__(self, request: Mapping[str, Any]) -> str: ...


#: Given delivery ids, return those already sent or delivered (one query per batch).
SentLookup = Callable[[Collection[str]], set[str]]


class FailureLimitExceeded(RuntimeError):
    """Too many records in a row went to the dead-letter topic: something is broken."""


@dataclass(frozen=True)
class SenderRoutes:
    """Where a channel's records come from and where their failures go."""

    channel: str
    source_topic: str
    retry_topics: tuple[str, ...]
    retry_delays_ms: tuple[int, ...]
    dlq_topic: str

    @classmethod
    def for_channel(cls, catalogue: Catalogue, channel: str) -> SenderRoutes:
        """The routes of ``channel``'s deliveries topic, from the (prefixed) catalogue."""
        spec = catalogue.for_channel(channel)
        tiers = spec.retry_topics()
        return cls(
            channel=channel,
            source_topic=spec.name,
            retry_topics=tuple(tier.topic for tier in tiers),
            retry_delays_ms=tuple(tier.delay_ms for tier in tiers),
            dlq_topic=spec.dlq_name,
        )

    @property
    def topics(self) -> list[str]:
        """Every topic the sender consumes: the deliveries topic and its retry tiers."""
        return [self.source_topic, *self.retry_topics]


def attempt_of(message: Message) -> int:
    """The attempt number a record carries (``x-attempt``; 1 when absent or unreadable)."""
    try:
        return max(1, int(headers_dict(message).get(H_ATTEMPT, "1")))
    except ValueError:
        return 1


def decode_request(message: Message, channel: str) -> dict[str, Any]:
    """The record's ``herald.DeliveryRequest``; PermanentError when it is not a valid one."""
    value = message.value()
    if not value:
        raise PermanentError("empty record value", error_class="decode.empty")
    try:
        request = decode(value, REQUEST_SCHEMA)
    except SerdeError as exc:
        raise PermanentError(str(exc), error_class=f"decode.{type(exc).__name__}") from None
    if request["channel"] != channel:
        raise PermanentError(
            f"a {request['channel']!r} delivery on the {channel!r} topic",
            error_class="request.wrong_channel",
        )
    try:
        uuid.UUID(request["delivery_id"])
    except ValueError:
        raise PermanentError(
            f"delivery_id {request['delivery_id']!r} is not a UUID",
            error_class="request.invalid_id",
        ) from None
    return request


class RecentlySent:
    """The delivery ids this process sent lately (bounded, oldest forgotten first).

    The database learns of a send only when the status event has gone through the status
    sink; this covers that gap for re-delivered records and duplicates within a batch.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, delivery_id: object) -> bool:
        return delivery_id in self._ids

    def add(self, delivery_id: str) -> None:
        """Remember ``delivery_id`` as sent."""
        self._ids[delivery_id] = None
        self._ids.move_to_end(delivery_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


class SenderHandler:
    """The batch handler of a sender: decide, send, and return what to produce.

    ``max_consecutive_failures`` (0 disables) is the dead-letter limit: when that many records
    in a row went to the DLQ, ``on_failure_limit`` is called (the service stops its loop after
    the current batch is produced and committed) — a sender that dead-letters everything is
    misconfigured or broken, and should stop rather than empty its topic into the DLQ.

    ``batch_budget_seconds`` (0 disables) bounds one batch: once it is spent (a provider that
    answers every request only at its timeout), the batch's remaining records are not tried
    but passed to the next retry tier. Otherwise a slow batch could outlast the consumer's
    ``max.poll.interval.ms``, lose its partitions and be sent again by another member.
    """

    def __init__(
        self,
        *,
        service: str,
        routes: SenderRoutes,
        catalogue: Catalogue,
        send: SendFunction,
        already_sent: SentLookup,
        recently_sent: RecentlySent | None = None,
        max_consecutive_failures: int = 0,
        on_failure_limit: Callable[[], None] | None = None,
        batch_budget_seconds: float = 0,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.routes = routes
        self.catalogue = catalogue
        self.send = send
        self.already_sent = already_sent
        self.recently_sent = recently_sent if recently_sent is not None else RecentlySent()
        self.max_consecutive_failures = max_consecutive_failures
        self.on_failure_limit = on_failure_limit
        self.batch_budget_seconds = batch_budget_seconds
        self.clock = clock
        self.timer = timer
        self.consecutive_failures = 0
        self.failure_limit_reached = False

    def __call__(self, messages: list[Message]) -> list[Outgoing]:
        """Handle one batch; return the retry/DLQ records and status events to produce."""
        deadline = self.timer() + self.batch_budget_seconds if self.batch_budget_seconds else None
        outgoing: list[Outgoing] = []
        decoded: list[tuple[Message, dict[str, Any]]] = []
        for message in messages:
            try:
                decoded.append((message, decode_request(message, self.routes.channel)))
            except PermanentError as exc:
                # No status event: an undecodable record names no delivery to report on.
                log.warning(
                    "undecodable delivery request",
                    extra={"error_class": exc.error_class, "error": exc.message},
                )
                outgoing.append(self._route_failure(message, exc))
                self._count_failure(exc, dead_lettered=True)
        done = self.already_sent({request["delivery_id"] for _, request in decoded})
        for message, request in decoded:
            out_of_time = deadline is not None and self.timer() > deadline
            outgoing.extend(self._deliver(message, request, done, out_of_time=out_of_time))
        return outgoing

    def _deliver(
        self,
        message: Message,
        request: dict[str, Any],
        done: Collection[str],
        *,
        out_of_time: bool = False,
    ) -> list[Outgoing]:
        delivery_id = request["delivery_id"]
        if delivery_id in done or delivery_id in self.recently_sent:
            DUPLICATES_SKIPPED.labels(self.routes.channel).inc()
            log.info("already sent; skipped", extra={"delivery_id": delivery_id})
            return []
        attempt = attempt_of(message)
        if out_of_time:
            error = RetryableError(
                f"not tried: the batch used up its {self.batch_budget_seconds:g} s budget",
                error_class="sender.batch_budget",
            )
            return self._failed(message, request, attempt, error)
        try:
            provider_id = self.send(request)
        except ProcessingError as exc:
            return self._failed(message, request, attempt, exc)
        except Exception as exc:
            # A bug or an unmapped library error: retry it like a transient failure, so the
            # record ends on the DLQ (not lost, not retried forever) if it keeps happening.
            log.exception("unexpected error while sending", extra={"delivery_id": delivery_id})
            error = RetryableError(f"{type(exc).__name__}: {exc}", error_class="unexpected")
            return self._failed(message, request, attempt, error)
        self.recently_sent.add(delivery_id)
        self.consecutive_failures = 0
        DELIVERIES.labels(self.routes.channel, "sent").inc()
        event = status_event(request, "sent", attempt=attempt, provider_message_id=provider_id)
        return [status_outgoing(self.catalogue, event)]

    def _failed(
        self, message: Message, request: dict[str, Any], attempt: int, error: ProcessingError
    ) -> list[Outgoing]:
        record = self._route_failure(message, error)
        if record.topic == self.routes.dlq_topic:
            status = "dead" if isinstance(error, RetryableError) else "failed"
        else:
            status = "retrying"
        DELIVERIES.labels(self.routes.channel, status).inc()
        self._count_failure(error, dead_lettered=status != "retrying")
        log.warning(
            "delivery %s",
            status,
            extra={
                "delivery_id": request["delivery_id"],
                "attempt": attempt,
                "error_class": error.error_class,
                "error": error.message,
                "to_topic": record.topic,
            },
        )
        event = status_event(request, status, attempt=attempt, error=error)
        return [record, status_outgoing(self.catalogue, event)]

    def _route_failure(self, message: Message, error: ProcessingError) -> Outgoing:
        return failure_record(
            message,
            error,
            retry_topics=self.routes.retry_topics,
            retry_delays_ms=self.routes.retry_delays_ms,
            dlq_topic=self.routes.dlq_topic,
            now=self.clock(),
        )

    def _count_failure(self, error: ProcessingError, *, dead_lettered: bool) -> None:
        ERRORS.labels(self.service, error.error_class).inc()
        if not dead_lettered:
            return
        self.consecutive_failures += 1
        if (
            self.max_consecutive_failures
            and self.consecutive_failures >= self.max_consecutive_failures
            and not self.failure_limit_reached
        ):
            self.failure_limit_reached = True
            log.error(
                "%d records in a row went to the dead-letter topic; stopping",
                self.consecutive_failures,
                extra={"dlq_topic": self.routes.dlq_topic},
            )
            if self.on_failure_limit is not None:
                self.on_failure_limit()


def sent_lookup(engine: Engine) -> SentLookup:
    """A :data:`SentLookup` reading ``notification_delivery`` (one query per call)."""

    def already_sent(delivery_ids: Collection[str]) -> set[str]:
        if not delivery_ids:
            return set()
        ids = [uuid.UUID(delivery_id) for delivery_id in delivery_ids]
        query = select(NotificationDelivery.id).where(
            NotificationDelivery.id.in_(ids), NotificationDelivery.status.in_(DONE_STATUSES)
        )
        with engine.connect() as connection:
            return {str(row_id) for row_id in connection.scalars(query)}

    return already_sent


def run_sender(
    *,
    service: str,
    channel: str,
    send: SendFunction,
    catalogue: Catalogue,
    kafka: KafkaSettings,
    already_sent: SentLookup,
    batch_size: int,
    max_consecutive_failures: int = 0,
    batch_budget_seconds: float = 0,
    consumer_overrides: Mapping[str, Any] | None = None,
) -> int:
    """Run a sender until SIGTERM/SIGINT (or the DLQ limit); return the exit status
    (0 stopped, 1 dead-letter limit reached, 2 crashed).

    The consumer group is the service name under the topic prefix, so isolated deployments
    (and tests) never share a group. SIGTERM finishes the current batch, commits and exits.
    """
    routes = SenderRoutes.for_channel(catalogue, channel)
    loop: BatchLoop | None = None

    def stop() -> None:
        if loop is not None:
            loop.stop()

    handler = SenderHandler(
        service=service,
        routes=routes,
        catalogue=catalogue,
        send=send,
        already_sent=already_sent,
        max_consecutive_failures=max_consecutive_failures,
        on_failure_limit=stop,
        batch_budget_seconds=batch_budget_seconds,
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
    loop.install_signal_handlers()
    log.info(
        "%s consuming", service, extra={"topics": routes.topics, "dlq_topic": routes.dlq_topic}
    )
    try:
        loop.run()
    except Exception:
        # Infrastructure trouble (database, broker): stop without committing, so the batch is
        # consumed again after a restart; log it as JSON like everything else.
        log.exception("%s crashed", service)
        return 2
    log.info("%s stopped", service)
    return 1 if handler.failure_limit_reached else 0


class SenderSettings(BaseSettings):
    """What every channel sender configures the same way; each channel subclasses it with
    its own environment prefix, metrics port and provider settings."""

    model_config = SettingsConfigDict(extra="ignore")

    #: Records consumed per batch.
    batch_size: int = Field(default=100, ge=1, le=10_000)
    #: Port of the Prometheus /metrics endpoint; 0 disables it.
    metrics_port: int = Field(default=0, ge=0, le=65_535)
    #: Time one batch may take; records left when it is spent go to the next retry tier
    #: untried (keeps a batch well inside the consumer's 5-minute max.poll.interval.ms).
    batch_budget_seconds: float = Field(default=120.0, ge=0, le=240)
    #: Stop after this many records in a row went to the dead-letter topic (0: never).
    max_consecutive_failures: int = Field(default=1_000, ge=0)
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")


def serve_channel(
    *,
    service: str,
    channel: str,
    own: SenderSettings,
    settings: Settings,
    send: SendFunction,
    close: Callable[[], None],
) -> int:
    """A channel sender's main loop: ``run_sender`` with the settings every sender shares,
    then ``close`` (the provider connection) and the database pool, however it ended."""
    engine = make_engine(settings.database, pool_size=1, max_overflow=1)
    try:
        return run_sender(
            service=service,
            channel=channel,
            send=send,
            catalogue=CATALOGUE.with_prefix(settings.kafka.topic_prefix),
            kafka=settings.kafka,
            already_sent=sent_lookup(engine),
            batch_size=own.batch_size,
            max_consecutive_failures=own.max_consecutive_failures,
            batch_budget_seconds=own.batch_budget_seconds,
        )
    finally:
        close()
        engine.dispose()
