"""The channel-agnostic core of a sender service (email_sender, sms_sender).

A sender consumes its channel's deliveries topic and that topic's retry tiers with
:class:`herald.streaming.BatchLoop`. For every batch, :class:`SenderHandler` decides what
happens to each ``herald.DeliveryRequest``:

- undecodable or malformed → the channel's DLQ (never stops the stream);
- already sent (the send journal, one query per batch, plus this process's memory of what it
  sent recently) → skipped, never sent twice;
- begun but never confirmed by a sender that died mid-send (journal state ``sending``) →
  sent again only where the provider de-duplicates (``resend_uncertain``, the SMS provider's
  idempotency key); otherwise parked on the DLQ as ``sender.outcome_unknown`` for an operator;
- otherwise the delivery is claimed in the journal, then the channel's ``send(request)`` is
  called:

  - it returns the provider's message id → a ``sent`` status;
  - it raises :class:`~herald.errors.RetryableError` → the next retry tier and a ``retrying``
    status, or the DLQ and a ``dead`` status once the tiers are used up;
  - it raises :class:`~herald.errors.PermanentError` → the DLQ and a ``failed`` status.

The handler only decides and sends; :class:`~herald.streaming.BatchLoop` produces what it
returns and commits the offsets afterwards. Records on a retry tier wait for their
``x-not-before`` in the loop (their partition is paused), not here.

A provider that fails every request must not push the whole topic through the retry tiers
into the DLQ in seconds: after ``breaker_failures`` transient failures in a row the
:class:`Breaker` opens, the rest of the batch is held (rewound and paused, not tried), and the
sender backs off — doubling up to a ceiling — trying one record at a time until one succeeds.
``herald_sender_circuit_open`` is 1 while it waits; alert on it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from confluent_kafka import Message
from prometheus_client import Counter, Gauge
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from herald.db import make_engine
from herald.errors import PermanentError, ProcessingError, RetryableError
from herald.headers import HEADERS_INVALID, header_problems, read_headers
from herald.metrics import DELIVERIES, ERRORS, HEALTH, Backoff
from herald.serde import SerdeError, decode
from herald.settings import KafkaSettings, Settings
from herald.status import status_event, status_outgoing
from herald.streaming import (
    BatchLoop,
    Handled,
    Outgoing,
    failure_record,
    header_not_before,
)
from schemas import CATALOGUE, Catalogue

log = logging.getLogger(__name__)

T = TypeVar("T")

REQUEST_SCHEMA = "herald.DeliveryRequest"
#: Delivery states after which a delivery must never be sent again.
DONE_STATUSES = ("sent", "delivered")
#: The error class of a delivery whose send began but was never confirmed.
OUTCOME_UNKNOWN = "sender.outcome_unknown"

DUPLICATES_SKIPPED = Counter(
    "herald_sender_duplicates_skipped_total",
    "Deliveries not sent because they were already sent",
    ["channel"],
)
CIRCUIT_OPEN = Gauge(
    "herald_sender_circuit_open",
    "1 while the sender backs off from a provider that fails every request",
    ["channel"],
)
JOURNAL_RETRIES = Counter(
    "herald_sender_journal_retries_total",
    "Send-journal statements tried again after the database connection was lost",
    ["service"],
)
CLAIMS_LOST = Counter(
    "herald_sender_claims_lost_total",
    "Deliveries not sent because another sender holds the claim (a duplicate in flight)",
    ["channel"],
)
CIRCUIT_TRIPS = Counter(
    "herald_sender_circuit_trips_total",
    "Times the sender stopped trying its provider after consecutive transient failures",
    ["channel"],
)


class SendFunction(Protocol):
    """A channel's way of sending one delivery.

    Returns the provider's id for the sent message (the email's Message-ID, the SMS sid);
    raises :class:`RetryableError` or :class:`PermanentError` when it could not send.
    """

    def __call__(self, request: Mapping[str, Any]) -> str: ...


class SendJournal(Protocol):
    """Where a sender records, durably and before anything else happens, what it sends.

    ``claim`` before the provider is called, ``confirm`` as soon as it accepted: a sender
    killed in between leaves the claim, and whoever consumes the record again knows the
    outcome is unknown rather than sending blindly a second time.
    """

    def states(self, delivery_ids: Collection[str]) -> dict[str, JournalEntry]:
        """The journal's entries for those of ``delivery_ids`` it knows (one query)."""
        ...

    def claim(
        self, delivery_id: str, channel: str, attempt: int, seen: JournalEntry | None = None
    ) -> bool:
        """Claim the delivery; False when someone else holds (or just took) the claim.

        ``seen`` is the entry :meth:`states` returned: with None the claim is taken only if
        there is none; with an unconfirmed (``sending``) entry, only if it is still that one.
        Two senders handling copies of one delivery therefore never both win.
        """
        ...

    def confirm(self, delivery_id: str, provider_message_id: str) -> None: ...

    def release(self, delivery_id: str) -> None:
        """Drop a claim whose send failed with a known outcome (nothing was sent)."""
        ...


@dataclass(frozen=True)
class JournalEntry:
    """``state``: ``sending`` (claimed, outcome unknown), ``sent`` (the provider accepted it)
    or ``recorded`` (its sent/delivered status is already in ``notification_delivery``)."""

    state: str
    provider_message_id: str | None = None
    #: The token of the claim (``sending``), compared when a sender takes the claim over.
    claim_token: str | None = None


@dataclass
class Breaker:
    """Consecutive transient failures open it; it then holds records for a back-off that
    doubles on every failed probe (up to ``backoff_max``) and closes on the first success.

    ``failures=0`` disables it.
    """

    failures: int = 20
    backoff: float = 5.0
    backoff_max: float = 300.0
    consecutive: int = 0
    open_until: float = 0.0
    current_backoff: float = 0.0

    def is_open(self, now: float) -> bool:
        return now < self.open_until

    def success(self) -> bool:
        """Record a success; True when this closed a tripped breaker."""
        tripped = self.current_backoff > 0
        self.consecutive = 0
        self.current_backoff = 0.0
        self.open_until = 0.0
        return tripped

    def failure(self, now: float) -> bool:
        """Record a transient failure; True when the breaker (re)opens because of it."""
        self.consecutive += 1
        if not self.failures or self.consecutive < self.failures:
            return False
        if self.current_backoff:
            self.current_backoff = min(self.current_backoff * 2, self.backoff_max)
        else:
            self.current_backoff = min(self.backoff, self.backoff_max)
        self.open_until = now + self.current_backoff
        return True


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


def replay_count_of(message: Message) -> int:
    """How often an operator replayed the record (``x-replay-count``; 0 when absent or
    unreadable: :func:`decode_request` refuses a record with unreadable headers anyway)."""
    return read_headers(message.headers()).replay_count or 0


def attempt_of(message: Message) -> int:
    """The attempt number a record carries (``x-attempt``; 1 when absent or unreadable)."""
    return read_headers(message.headers()).attempt or 1


def decode_request(message: Message, channel: str) -> dict[str, Any]:
    """The record's ``herald.DeliveryRequest``; PermanentError when it is not a valid one, or
    when its ``x-*`` headers cannot be read (``headers.invalid``: the attempt, the retry time
    and the replay count would be guesses, so the record is parked, not sent)."""
    problems = header_problems(message.headers())
    if problems:
        raise PermanentError(
            "unreadable header " + "; ".join(problems), error_class=HEADERS_INVALID
        )
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

    ``journal`` makes "never sent twice" hold across crashes (see :class:`SendJournal`);
    ``resend_uncertain`` says what to do with a delivery a dead sender claimed but never
    confirmed: send it again (only safe where the provider de-duplicates on the delivery id)
    or park it on the DLQ as ``sender.outcome_unknown`` for an operator to replay.

    ``breaker`` bounds the failure rate (see :class:`Breaker`): while it is open, records are
    held (rewound and paused by the loop), not tried, so a dead provider does not empty the
    topic into the retry tiers and the DLQ.

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
        journal: SendJournal,
        resend_uncertain: bool = False,
        recently_sent: RecentlySent | None = None,
        breaker: Breaker | None = None,
        batch_budget_seconds: float = 0,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.routes = routes
        self.catalogue = catalogue
        self.send = send
        self.journal = journal
        self.resend_uncertain = resend_uncertain
        self.recently_sent = recently_sent if recently_sent is not None else RecentlySent()
        self.breaker = breaker if breaker is not None else Breaker(failures=0)
        self.batch_budget_seconds = batch_budget_seconds
        self.clock = clock
        self.timer = timer
        CIRCUIT_OPEN.labels(routes.channel).set(0)

    def __call__(self, messages: list[Message]) -> list[Outgoing] | Handled:
        """Handle one batch; return the retry/DLQ records and status events to produce,
        and the records held back while the breaker is open."""
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
                ERRORS.labels(self.service, exc.error_class).inc()
        journal = self.journal.states({request["delivery_id"] for _, request in decoded})
        for index, (message, request) in enumerate(decoded):
            if self.breaker.is_open(self.clock()):
                held = [m for m, _ in decoded[index:]]
                return Handled(outgoing, held, self.breaker.open_until)
            out_of_time = deadline is not None and self.timer() > deadline
            entry = journal.get(request["delivery_id"])
            outgoing.extend(self._deliver(message, request, entry, out_of_time=out_of_time))
        return outgoing

    def _deliver(
        self,
        message: Message,
        request: dict[str, Any],
        entry: JournalEntry | None,
        *,
        out_of_time: bool = False,
    ) -> list[Outgoing]:
        delivery_id = request["delivery_id"]
        attempt = attempt_of(message)
        if delivery_id in self.recently_sent or (entry and entry.state == "recorded"):
            return self._skip(delivery_id)
        if entry and entry.state == "sent":
            # Sent, but the sender stopped before its status event was out: report it now.
            self._skip(delivery_id)
            self.recently_sent.add(delivery_id)
            event = status_event(
                request, "sent", attempt=attempt, provider_message_id=entry.provider_message_id
            )
            return [status_outgoing(self.catalogue, event)]
        if entry and entry.state == "sending":
            if not self.resend_uncertain and replay_count_of(message) == 0:
                error: ProcessingError = PermanentError(
                    "a sender stopped after it began sending this delivery and before the "
                    "provider's answer was recorded, so it may have arrived; sending it again "
                    "could duplicate it. Replay it (`herald dlq replay --error-class "
                    f"{OUTCOME_UNKNOWN}`) to send it again.",
                    error_class=OUTCOME_UNKNOWN,
                )
                return self._failed(message, request, attempt, error, status="dead")
            log.info(
                "resending a delivery whose outcome is unknown",
                extra={"delivery_id": delivery_id, "replayed": replay_count_of(message) > 0},
            )
        if out_of_time:
            error = RetryableError(
                f"not tried: the batch used up its {self.batch_budget_seconds:g} s budget",
                error_class="sender.batch_budget",
            )
            return self._failed(message, request, attempt, error)
        if not self.journal.claim(delivery_id, self.routes.channel, attempt, entry):
            # Another sender claimed it after this batch read the journal: a copy of the
            # delivery (a re-published record, a partition handed over in a rebalance) is
            # being sent there. That sender reports its outcome; sending here could only
            # duplicate it. If it dies mid-send, its own copy comes again to whoever takes its
            # partition and finds the unconfirmed claim.
            CLAIMS_LOST.labels(self.routes.channel).inc()
            log.info("claimed by another sender; skipped", extra={"delivery_id": delivery_id})
            return []
        try:
            provider_id = self.send(request)
        except ProcessingError as exc:
            # The channel judged it not sent (a refusal, an error reply, no connection): the
            # claim is released, so a retry or a replay is an ordinary send.
            self.journal.release(delivery_id)
            return self._failed(message, request, attempt, exc)
        except Exception as exc:
            # A bug or an unmapped library error: retry it like a transient failure, so the
            # record ends on the DLQ (not lost, not retried forever) if it keeps happening.
            # The claim stays: nobody knows whether the provider got the message.
            log.exception("unexpected error while sending", extra={"delivery_id": delivery_id})
            error = RetryableError(f"{type(exc).__name__}: {exc}", error_class="unexpected")
            return self._failed(message, request, attempt, error)
        self.journal.confirm(delivery_id, provider_id)
        self.recently_sent.add(delivery_id)
        if self.breaker.success():
            CIRCUIT_OPEN.labels(self.routes.channel).set(0)
            log.info(
                "provider answering again; sending resumes", extra={"delivery_id": delivery_id}
            )
        DELIVERIES.labels(self.routes.channel, "sent").inc()
        event = status_event(request, "sent", attempt=attempt, provider_message_id=provider_id)
        return [status_outgoing(self.catalogue, event)]

    def _skip(self, delivery_id: str) -> list[Outgoing]:
        DUPLICATES_SKIPPED.labels(self.routes.channel).inc()
        log.info("already sent; skipped", extra={"delivery_id": delivery_id})
        return []

    def _failed(
        self,
        message: Message,
        request: dict[str, Any],
        attempt: int,
        error: ProcessingError,
        *,
        status: str | None = None,
    ) -> list[Outgoing]:
        record = self._route_failure(message, error)
        if status is None and record.topic == self.routes.dlq_topic:
            status = "dead" if isinstance(error, RetryableError) else "failed"
        status = status or "retrying"
        DELIVERIES.labels(self.routes.channel, status).inc()
        ERRORS.labels(self.service, error.error_class).inc()
        if isinstance(error, RetryableError) and error.error_class != "sender.batch_budget":
            self._provider_failed(error)
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

    def _provider_failed(self, error: ProcessingError) -> None:
        if not self.breaker.failure(self.clock()):
            return
        CIRCUIT_OPEN.labels(self.routes.channel).set(1)
        CIRCUIT_TRIPS.labels(self.routes.channel).inc()
        log.error(
            "%d transient failures in a row; holding records for %g s before trying again",
            self.breaker.consecutive,
            self.breaker.current_backoff,
            extra={"error_class": error.error_class, "error": error.message},
        )

    def _route_failure(self, message: Message, error: ProcessingError) -> Outgoing:
        return failure_record(
            message,
            error,
            retry_topics=self.routes.retry_topics,
            retry_delays_ms=self.routes.retry_delays_ms,
            dlq_topic=self.routes.dlq_topic,
            now=self.clock(),
        )


class JournalStopped(RuntimeError):
    """The sender was stopped while the journal waited for its database."""


class PostgresJournal:
    """:class:`SendJournal` in PostgreSQL (``send_journal``), one autocommit statement per
    claim or confirmation.

    ``synchronous_commit`` is off for these statements: a sender killed at any point loses
    nothing (the server has the row), and only a crash of PostgreSQL itself within its
    ~0.6 s WAL-writer window could forget a claim. That trade keeps a send at two cheap round
    trips instead of two disk flushes.

    A lost connection (PostgreSQL restarting, a failover, ``AdminShutdown``) is never fatal:
    the statement is tried again on a new connection after a growing pause (``backoff``), for
    as long as it takes, with ``herald_service_degraded{reason="database"}`` set meanwhile;
    only ``stop`` (the loop's stop event) ends the wait, with :class:`JournalStopped` (the
    batch is then not committed). Claims are compare-and-set on a token per claim, so a claim
    whose answer was lost with the connection is recognised as ours when tried again.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        service: str = "sender",
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.engine = engine
        self.service = service
        self.backoff = backoff or Backoff(0.2, 10.0)
        self.stop = stop or threading.Event()
        self._connection: Connection | None = None
        #: The token of each claim this sender holds and has not confirmed or released.
        self._claims: dict[str, uuid.UUID] = {}

    def _conn(self) -> Connection:
        if self._connection is None or self._connection.closed:
            connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(text("SET synchronous_commit TO off"))
            self._connection = connection
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(DBAPIError):
                self._connection.close()
            self._connection = None

    def _retrying(self, work: Callable[[Connection], T], what: str) -> T:
        """Run ``work`` on the connection; on a lost connection, reconnect and run it again."""
        while True:
            try:
                result = work(self._conn())
            except DBAPIError as exc:
                if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
                    raise
                if self._connection is not None:
                    with contextlib.suppress(DBAPIError):
                        self._connection.invalidate()
                self.close()
                delay = self.backoff.next()
                detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                HEALTH.degraded(self.service, "database", detail)
                JOURNAL_RETRIES.labels(self.service).inc()
                log.warning(
                    "send journal: database unavailable; trying again",
                    extra={"statement": what, "error": detail, "retry_in_s": delay},
                )
                if self.stop.wait(delay):
                    raise JournalStopped(f"stopped while the database was away ({what})") from exc
                continue
            if self.backoff.current:
                self.backoff.reset()
                HEALTH.recovered(self.service, "database")
            return result

    def states(self, delivery_ids: Collection[str]) -> dict[str, JournalEntry]:
        if not delivery_ids:
            return {}
        ids = [uuid.UUID(delivery_id) for delivery_id in delivery_ids]
        rows = self._retrying(
            lambda conn: conn.execute(
                text(
                    "SELECT id::text, 'recorded', provider_message_id, NULL::text"
                    " FROM notification_delivery WHERE id = ANY(:ids) AND status = ANY(:done)"
                    " UNION ALL SELECT delivery_id::text, state, provider_message_id,"
                    " claim_token::text FROM send_journal WHERE delivery_id = ANY(:ids)"
                ),
                {"ids": ids, "done": list(DONE_STATUSES)},
            ).all(),
            "states",
        )
        found: dict[str, JournalEntry] = {}
        for delivery_id, state, provider_id, token in rows:
            if found.get(delivery_id, JournalEntry("")).state != "recorded":
                found[delivery_id] = JournalEntry(state, provider_id, token)
        return found

    def claim(
        self, delivery_id: str, channel: str, attempt: int, seen: JournalEntry | None = None
    ) -> bool:
        key = uuid.UUID(delivery_id)
        token = uuid.uuid4()
        params: dict[str, Any] = {"id": key, "channel": channel, "attempt": attempt, "token": token}
        if seen is None or seen.state != "sending":
            # Nobody had claimed it: take it only if that is still so.
            statement = text(
                "INSERT INTO send_journal (delivery_id, channel, state, attempt, claim_token)"
                " VALUES (:id, :channel, 'sending', :attempt, :token)"
                " ON CONFLICT (delivery_id) DO NOTHING RETURNING claim_token"
            )
        else:
            # Taking over an unconfirmed claim: only if it is still the one that was read.
            statement = text(
                "UPDATE send_journal SET attempt = :attempt, claim_token = :token,"
                " updated_at = now() WHERE delivery_id = :id AND state = 'sending'"
                " AND claim_token IS NOT DISTINCT FROM CAST(:seen AS uuid)"
                " RETURNING claim_token"
            )
            params["seen"] = seen.claim_token
        tried = [False]

        def take(conn: Connection) -> bool:
            if tried[0]:
                # The last try lost its connection: it may have gone through.
                holder = conn.execute(
                    text("SELECT claim_token FROM send_journal WHERE delivery_id = :id"),
                    {"id": key},
                ).scalar()
                if holder == token:
                    return True
            tried[0] = True
            return conn.execute(statement, params).first() is not None

        won = self._retrying(take, "claim")
        if won:
            self._claims[delivery_id] = token
        return won

    def confirm(self, delivery_id: str, provider_message_id: str) -> None:
        # A fact whoever holds the claim: the provider accepted it.
        self._claims.pop(delivery_id, None)
        self._retrying(
            lambda conn: conn.execute(
                text(
                    "UPDATE send_journal SET state = 'sent', provider_message_id = :provider,"
                    " updated_at = now() WHERE delivery_id = :id"
                ),
                {"id": uuid.UUID(delivery_id), "provider": provider_message_id},
            ),
            "confirm",
        )

    def release(self, delivery_id: str) -> None:
        token = self._claims.pop(delivery_id, None)
        if token is None:
            return  # not our claim: never release someone else's
        self._retrying(
            lambda conn: conn.execute(
                text(
                    "DELETE FROM send_journal WHERE delivery_id = :id AND state = 'sending'"
                    " AND claim_token = :token"
                ),
                {"id": uuid.UUID(delivery_id), "token": token},
            ),
            "release",
        )


def run_sender(
    *,
    service: str,
    channel: str,
    send: SendFunction,
    catalogue: Catalogue,
    kafka: KafkaSettings,
    journal: SendJournal,
    batch_size: int,
    resend_uncertain: bool = False,
    breaker: Breaker | None = None,
    batch_budget_seconds: float = 0,
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
    handler = SenderHandler(
        service=service,
        routes=routes,
        catalogue=catalogue,
        send=send,
        journal=journal,
        resend_uncertain=resend_uncertain,
        breaker=breaker,
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
    log.info("%s stopped", service)
    return 0


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


def serve_channel(
    *,
    service: str,
    channel: str,
    own: SenderSettings,
    settings: Settings,
    send: SendFunction,
    close: Callable[[], None],
    resend_uncertain: bool = False,
) -> int:
    """A channel sender's main loop: ``run_sender`` with the settings every sender shares,
    then ``close`` (the provider connection) and the database pool, however it ended."""
    engine = make_engine(settings.database, pool_size=1, max_overflow=1)
    stop = threading.Event()
    journal = PostgresJournal(engine, service=service, stop=stop)
    try:
        return run_sender(
            service=service,
            channel=channel,
            send=send,
            catalogue=CATALOGUE.with_prefix(settings.kafka.topic_prefix),
            kafka=settings.kafka,
            journal=journal,
            batch_size=own.batch_size,
            resend_uncertain=resend_uncertain,
            breaker=own.breaker(),
            batch_budget_seconds=own.batch_budget_seconds,
            stop=stop,
        )
    finally:
        close()
        journal.close()
        engine.dispose()
