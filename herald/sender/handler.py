"""The batch handler of a sender: decide what happens to each delivery, send, report.

See the package docstring (:mod:`herald.sender`) for the decisions and the guarantees.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, cast

from confluent_kafka import Message
from prometheus_client import Counter, Gauge

from herald.errors import (
    EndpointRetryableError,
    PermanentError,
    ProcessingError,
    RetryableError,
    SkipDelivery,
)
from herald.headers import (
    H_PROVIDER_PIN,
    HEADERS_INVALID,
    header_problems,
    read_headers,
    write_headers,
)
from herald.identity import check_id_length
from herald.metrics import DELIVERIES, ERRORS, labelled
from herald.observability import observe_final
from herald.sender.breaker import Breaker
from herald.sender.journal import Claim, JournalEntry, SendJournal
from herald.sender.pool import IN_FLIGHT, WAKE, Outcome, SendFunction, SendPool, Sent, as_sent
from herald.sender.providers import PIN_UNKNOWN, with_pin
from herald.serde import SerdeError, decode
from herald.status import status_event, status_outgoing
from herald.streaming import Handled, Outgoing, failure_record
from schemas import Catalogue

log = logging.getLogger(__name__)

REQUEST_SCHEMA = "herald.DeliveryRequest"
#: The error class of a delivery whose send began but was never confirmed.
OUTCOME_UNKNOWN = "sender.outcome_unknown"
#: How long a batch waits for more sends to end before it confirms those that did...
CONFIRM_LINGER_SECONDS = 0.005
#: ... when fewer than this fraction of the sends in flight have ended (1/16).
CONFIRM_GROUP_FRACTION = 16

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
    # The status events carry them to inapp_store, which could not store longer ones.
    for name in ("user_id", "event_type"):
        try:
            check_id_length(request[name], name)
        except ValueError as exc:
            raise PermanentError(str(exc), error_class="request.invalid_id") from None
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

    ``pool`` sends (see :class:`~herald.sender.pool.SendPool`): up to its ``concurrency``
    sends are in flight at once, within its rate limit. The records of a batch are walked in
    order; those to send are claimed in one journal statement per group just before they are
    handed to the pool, and the sends that completed together are confirmed in one statement.
    A record whose delivery id is already in flight waits for that send's outcome. The
    handler returns only when every send of the batch has a known outcome and its
    confirmation is written, so the loop commits offsets only after that.

    ``breaker`` bounds the failure rate (see :class:`Breaker`): while it is open, records are
    held (rewound and paused by the loop), not tried, so a dead provider does not empty the
    topic into the retry tiers and the DLQ. Sends already in flight when it opens finish.

    The number of sends in flight (:meth:`window`) starts at one and grows by one with every
    success (doubling each round trip, up to the pool's ``concurrency``), and every transient
    failure halves it: a sender that starts against a dead provider, or whose provider
    starts failing, probes it with a few requests instead of ``concurrency`` of them.

    ``batch_budget_seconds`` (0 disables) bounds one batch: once it is spent (a provider that
    answers every request only at its timeout), the batch's records not yet handed to the
    pool are not tried but passed to the next retry tier. Otherwise a slow batch could
    outlast the consumer's ``max.poll.interval.ms``, lose its partitions and be sent again by
    another member.
    """

    def __init__(
        self,
        *,
        service: str,
        routes: SenderRoutes,
        catalogue: Catalogue,
        send: SendFunction | None = None,
        journal: SendJournal,
        pool: SendPool | None = None,
        resend_uncertain: bool = False,
        recently_sent: RecentlySent | None = None,
        breaker: Breaker | None = None,
        batch_budget_seconds: float = 0,
        prepare: Callable[[list[dict[str, Any]]], None] | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if pool is None:
            if send is None:
                raise TypeError("SenderHandler needs a send function or a pool")
            pool = SendPool(send, channel=routes.channel)
        self.service = service
        self.routes = routes
        self.catalogue = catalogue
        self.pool = pool
        self.journal = journal
        self.resend_uncertain = resend_uncertain
        self.recently_sent = recently_sent if recently_sent is not None else RecentlySent()
        self.breaker = breaker if breaker is not None else Breaker(failures=0)
        self.batch_budget_seconds = batch_budget_seconds
        #: Called once per batch with its decoded requests before any is sent (e.g. the
        #: webhook sender reads every endpoint of the batch in one query).
        self.prepare = prepare
        self.clock = clock
        self.timer = timer
        self._window = 1
        # Confirms are written by one thread of their own, in order, while the batch goes on
        # refilling the window (a confirm is a database round trip, and the batch loop was the
        # limit at hundreds in flight); the batch waits for all of them before it returns, so
        # no status event is produced and no offset committed before its confirm is stored.
        # Each is kept with how many sends it confirms: those count against the window until
        # it is written, so a sender killed at any moment leaves at most ``concurrency``
        # claims unconfirmed (sends in flight and sends whose confirm was under way).
        self._confirmer = ThreadPoolExecutor(1, thread_name_prefix=f"{routes.channel}-confirm")
        self._confirms: dict[Future[None], int] = {}
        CIRCUIT_OPEN.labels(routes.channel).set(0)

    def close(self) -> None:
        """Stop the pool's threads."""
        self.pool.close()
        self._confirmer.shutdown(wait=True)

    def _confirmed(self, *, wait_all: bool) -> None:
        """Raise the first failure of the confirms written so far (all of them, waiting for
        each, when ``wait_all``; else only those done)."""
        if wait_all:
            wait(self._confirms)
        failed = [f for f in self._confirms if f.done() and f.exception() is not None]
        self._confirms = {f: n for f, n in self._confirms.items() if not f.done()}
        if failed:
            wait(self._confirms)  # the rest end before the error stops the batch
            self._confirms = {}
            raise cast(BaseException, failed[0].exception())

    def window(self) -> int:
        """How many sends may be in flight now (1 up to the pool's ``concurrency``)."""
        return min(self._window, self.pool.concurrency)

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
        if self.prepare is not None and decoded:
            self.prepare([request for _, request in decoded])
        results: list[list[Outgoing]] = [[] for _ in decoded]
        in_flight: set[int] = set()  # indexes of the sends handed to the pool
        busy: set[str] = set()  # delivery ids claimed or in flight
        held_from: int | None = None
        index = 0
        channel = self.routes.channel
        try:
            while (index < len(decoded) and held_from is None) or in_flight:
                group: list[int] = []
                room = self.window() - len(in_flight) - sum(self._confirms.values())
                while held_from is None and index < len(decoded) and len(group) < room:
                    message, request = decoded[index]
                    delivery_id = request["delivery_id"]
                    if delivery_id in busy:
                        break  # a copy of it is being sent: its outcome decides this one
                    if self.breaker.is_open(self.clock()):
                        held_from = index
                        break
                    out_of_time = deadline is not None and self.timer() > deadline
                    entry = journal.get(delivery_id)
                    decided = self._decide(message, request, entry, out_of_time=out_of_time)
                    if decided is None:
                        group.append(index)
                        busy.add(delivery_id)
                    else:
                        results[index] = decided
                    index += 1
                if group:
                    self._start(group, decoded, journal, results, in_flight, busy)
                IN_FLIGHT.labels(channel).set(len(in_flight))
                if in_flight:
                    done = self._completed(in_flight)
                    self._finish(done, decoded, results, in_flight, busy)
                    IN_FLIGHT.labels(channel).set(len(in_flight))
                elif self._confirms and not group:
                    # The window is taken by confirms being written: wait for the first.
                    wait(self._confirms, return_when=FIRST_COMPLETED)
                self._confirmed(wait_all=False)
            self._confirmed(wait_all=True)
        finally:
            while in_flight:
                # Only a journal failure gets here: let the sends end before the loop stops;
                # their claims stay, so whoever takes the records over finds them unconfirmed.
                in_flight.difference_update(outcome.tag for outcome in self.pool.completed())
            IN_FLIGHT.labels(channel).set(0)
            if self._confirms:  # a failure elsewhere: let the confirms under way end
                wait(self._confirms)
                self._confirms = {}
        for result in results:
            outgoing.extend(result)
        if held_from is not None:
            held = [message for message, _ in decoded[held_from:]]
            return Handled(outgoing, held, self.breaker.open_until)
        return outgoing

    def _completed(self, in_flight: set[int]) -> list[Outcome]:
        """The sends done so far, after waiting for at least one. With many in flight, waits
        up to :data:`CONFIRM_LINGER_SECONDS` more for others, so that a confirm (and the claim
        that refills the window) covers a group, not one or two: at 2,000 sends/s, one
        statement per completion would cost PostgreSQL and this process more than the sends."""
        return self.pool.completed(
            at_least=len(in_flight) // CONFIRM_GROUP_FRACTION, linger=CONFIRM_LINGER_SECONDS
        )

    def _start(
        self,
        group: list[int],
        decoded: list[tuple[Message, dict[str, Any]]],
        journal: dict[str, JournalEntry],
        results: list[list[Outgoing]],
        in_flight: set[int],
        busy: set[str],
    ) -> None:
        """Claim the group's deliveries (one statement) and hand those won to the pool, each
        with the provider its record is pinned to (``x-provider-pin``), if any."""
        claims = []
        pins: dict[int, str] = {}
        for i in group:
            message, request = decoded[i]
            delivery_id = request["delivery_id"]
            headers = read_headers(message.headers())
            if headers.provider_pin is not None:
                pins[i] = headers.provider_pin
            claims.append(Claim(delivery_id, headers.attempt or 1, journal.get(delivery_id)))
        won = self.journal.claim_many(claims, self.routes.channel)
        for i in group:
            request = decoded[i][1]
            delivery_id = request["delivery_id"]
            if delivery_id not in won:
                # Another sender claimed it after this batch read the journal: a copy of the
                # delivery (a re-published record, a partition handed over in a rebalance) is
                # being sent there. That sender reports its outcome; sending here could only
                # duplicate it. If it dies mid-send, its own copy comes again to whoever takes
                # its partition and finds the unconfirmed claim.
                busy.discard(delivery_id)
                CLAIMS_LOST.labels(self.routes.channel).inc()
                log.info("claimed by another sender; skipped", extra={"delivery_id": delivery_id})
                continue
            pin = pins.get(i)
            self.pool.submit(i, request if pin is None else with_pin(request, pin))
            in_flight.add(i)

    def _finish(
        self,
        done: list[Outcome],
        decoded: list[tuple[Message, dict[str, Any]]],
        results: list[list[Outgoing]],
        in_flight: set[int],
        busy: set[str],
    ) -> None:
        """Record the outcome of completed sends: confirm those the provider accepted (one
        statement), release the claims of those that certainly failed (one statement)."""
        accepted: list[tuple[int, Sent]] = []
        released: list[str] = []
        # In batch order, so the breaker sees failures in the order the records came.
        for i, result, exc in sorted(done, key=lambda outcome: outcome.tag):
            if i == WAKE:
                continue
            in_flight.discard(i)
            message, request = decoded[i]
            delivery_id = request["delivery_id"]
            attempt = attempt_of(message)
            if exc is None:
                assert result is not None
                accepted.append((i, as_sent(result)))
                continue
            busy.discard(delivery_id)
            if isinstance(exc, SkipDelivery):
                # Not to be sent (e.g. the endpoint was removed): reported, nothing parked.
                released.append(delivery_id)
                results[i] = self._skipped(message, request, attempt, exc)
                continue
            if isinstance(exc, ProcessingError):
                # The channel judged it not sent (a refusal, an error reply, no connection):
                # the claim is released, so a retry or a replay is an ordinary send.
                released.append(delivery_id)
                results[i] = self._failed(message, request, attempt, exc)
                continue
            # A bug or an unmapped library error: retry it like a transient failure, so the
            # record ends on the DLQ (not lost, not retried forever) if it keeps happening.
            # The claim stays: nobody knows whether the provider got the message.
            log.error(
                "unexpected error while sending",
                exc_info=exc,
                extra={"delivery_id": delivery_id},
            )
            error = RetryableError(f"{type(exc).__name__}: {exc}", error_class="unexpected")
            results[i] = self._failed(message, request, attempt, error)
        self.journal.release_many(released)
        if not accepted:
            return
        confirm = self._confirmer.submit(
            self.journal.confirm_many,
            [(decoded[i][1]["delivery_id"], sent.message_id) for i, sent in accepted],
        )
        self._confirms[confirm] = len(accepted)
        # Its room in the window is free once it is written: a batch waiting for sends to end
        # wakes up then, to refill the window.
        confirm.add_done_callback(lambda _: self.pool.wake())
        for i, sent in accepted:
            message, request = decoded[i]
            delivery_id = request["delivery_id"]
            busy.discard(delivery_id)
            self.recently_sent.add(delivery_id)
            self._window = min(self._window + 1, self.pool.concurrency)
            if self.breaker.success():
                CIRCUIT_OPEN.labels(self.routes.channel).set(0)
                log.info(
                    "provider answering again; sending resumes",
                    extra={"delivery_id": delivery_id},
                )
            labelled(DELIVERIES, self.routes.channel, "sent").inc()
            observe_final(self.routes.channel, "sent", message.headers())
            event = status_event(
                request,
                "sent",
                attempt=attempt_of(message),
                provider_message_id=sent.message_id,
                provider=sent.provider,
            )
            results[i] = [status_outgoing(self.catalogue, event)]

    def _decide(
        self,
        message: Message,
        request: dict[str, Any],
        entry: JournalEntry | None,
        *,
        out_of_time: bool = False,
    ) -> list[Outgoing] | None:
        """What to produce for a record that needs no send, or None: send it."""
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
        return None

    def _skip(self, delivery_id: str) -> list[Outgoing]:
        DUPLICATES_SKIPPED.labels(self.routes.channel).inc()
        log.info("already sent; skipped", extra={"delivery_id": delivery_id})
        return []

    def _skipped(
        self, message: Message, request: dict[str, Any], attempt: int, reason: SkipDelivery
    ) -> list[Outgoing]:
        labelled(DELIVERIES, self.routes.channel, "skipped").inc()
        observe_final(self.routes.channel, "skipped", message.headers())
        log.info(
            "delivery skipped",
            extra={
                "delivery_id": request["delivery_id"],
                "error_class": reason.error_class,
                "error": reason.message,
            },
        )
        event = status_event(
            request, "skipped", attempt=attempt, error=reason, provider=reason.provider
        )
        return [status_outgoing(self.catalogue, event)]

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
        labelled(DELIVERIES, self.routes.channel, status).inc()
        if status != "retrying":
            observe_final(self.routes.channel, status, message.headers())
        ERRORS.labels(self.service, error.error_class).inc()
        if (
            isinstance(error, RetryableError)
            and not isinstance(error, EndpointRetryableError)
            and error.error_class not in ("sender.batch_budget", PIN_UNKNOWN)
        ):
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
        event = status_event(request, status, attempt=attempt, error=error, provider=error.provider)
        return [record, status_outgoing(self.catalogue, event)]

    def _provider_failed(self, error: ProcessingError) -> None:
        self._window = max(1, self._window // 2)
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
        """The retry-tier or dead-letter record of a failure, with the provider pin.

        A send whose outcome is unknown pins the delivery to its provider: the record says so
        (``x-provider-pin``), so that its next attempt goes there only, whichever sender
        process takes it (see :mod:`herald.sender.providers`). A pin the record already
        carries is kept (every hop keeps the headers). An unreadable pin is kept under
        ``x-garbled-provider-pin`` and dropped from the record, which is parked on the DLQ
        (``headers.invalid``): an operator's replay is then sent like one of
        ``sender.outcome_unknown``, without a pin."""
        record = failure_record(
            message,
            error,
            retry_topics=self.routes.retry_topics,
            retry_delays_ms=self.routes.retry_delays_ms,
            dlq_topic=self.routes.dlq_topic,
            now=self.clock(),
        )
        if error.uncertain_outcome and error.provider:
            pin: str | None = error.provider
        elif H_PROVIDER_PIN in read_headers(message.headers()).garbled:
            pin = None
        else:
            return record
        return replace(record, headers=write_headers(record.headers, {H_PROVIDER_PIN: pin}))
