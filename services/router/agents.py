"""The router's agents: thin adapters between Faust and the pure functions of routing.py.

- ``expand_events`` (stage 1): ``herald.events.v1`` → one record per recipient on
  ``herald.recipients.v1``, keyed by user id.
- ``route_recipients`` (stage 2): each recipient's copy → notification, delivery requests and
  ``pending``/``skipped`` statuses, from the user, preferences and event type tables.
  A ``user.login`` also updates the user's known devices; a new device raises a
  ``security.login_alert``, routed the same way (services.router.devices).
  Email and SMS held for the user's quiet hours are stored in PostgreSQL
  (services.router.holds) before the record's offset can be committed.
- ``release_held``: a timer (``ROUTER_QUIET_RELEASE_INTERVAL_MS``) producing the held
  deliveries whose quiet hours have ended to their channel topics, from one worker.
- ``weekly_digest``: a crontab (``ROUTER_DIGEST_CRON``) publishing the weekly digest events
  (herald.digest) from one worker.
- ``load_event_types``, ``load_users``, ``load_preferences``: keep the tables up to date from
  the compacted topics (a tombstone deletes).

Poison (undecodable bytes, an unknown schema, an unknown or inactive event type, an unknown
user, a template that cannot render) goes to the events DLQ with the design's ``x-*`` headers;
the stream goes on. Both stages iterate their streams without Faust's automatic acks and hand
what each record made to :class:`services.router.outputs.Outputs`: one confluent-kafka
producer, pipelined, which reports a record finished to the ledger (services.router.ledger)
only when the broker acknowledged every record it produced. Every
``ROUTER_COMMIT_INTERVAL_MS`` the consumer commits, per partition, up to the first record not
finished, so a commit never runs ahead of the output (at least once; every output has a
deterministic id and the consumers downstream are idempotent). ``repair_gaps`` routes the
records a stream skipped, read from the broker, so that no skip holds a partition back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any, cast

from aiokafka.partitioner import murmur2
from confluent_kafka import Message as KafkaMessage
from faust.types import TP, EventT, StreamT
from faust.types.tuples import Message
from prometheus_client import Counter

from herald.digest import run_digest
from herald.dlqlimit import GUARD_TRIPPED, GUARD_TRIPS, DlqLimit, DlqLimitSettings
from herald.errors import PermanentError
from herald.metrics import DELIVERIES, ERRORS, HEALTH, RECORDS_IN, RECORDS_OUT, Backoff
from herald.producer import AckedProducer
from herald.seed import LOGIN_ALERT
from herald.serde import Record, decode
from herald.streaming import Outgoing, failure_record, producer_config
from services.router import devices, routing
from services.router.app import (
    SERVICE,
    app,
    catalogue,
    event_types,
    event_types_topic,
    events_topic,
    known_devices,
    ledger,
    preferences,
    preferences_topic,
    recipients_topic,
    router_settings,
    settings,
    users,
    users_topic,
)
from services.router.holds import HoldStore
from services.router.outputs import Outputs
from services.router.repair import GapReader, repair

log = logging.getLogger(__name__)

_GRACE_S = router_settings.lookup_grace_ms / 1000
_POLL_S = router_settings.lookup_poll_ms / 1000

#: Held deliveries (quiet hours) in PostgreSQL; connects on first use.
hold_store = HoldStore(settings.database, settings.kafka, catalogue)


#: The DLQ-flood guard's limits (``HERALD_DLQ_GUARD_*``), one guard per stage.
_guard_settings = DlqLimitSettings()

LOCAL = Counter(
    "herald_router_local_recipients_total",
    "Recipients stage 1 routed on this worker (it holds their user's tables) instead of "
    "writing them to the recipients topic.",
)
REPAIRED = Counter(
    "herald_router_gap_records_total",
    "Records the router's stream skipped and the router routed from the broker instead "
    "(services.router.ledger); each is a Faust skip that would otherwise hold a commit back.",
    ["topic"],
)

#: The offset of the last record each table feeder stored (or skipped), by partition.
_stored: dict[TP, int] = {}


class _Readiness:
    """When this worker's tables last started catching up (start-up or a rebalance)."""

    at: float = time.time()


def _on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
    _Readiness.at = time.time()
    topic = recipients_topic.get_topic_name()
    mine = sorted(tp.partition for tp in assigned if tp.topic == topic)
    # Operators (and the multi-worker test) read who routes which users from this line.
    log.info("partitions assigned", extra={"recipients_partitions": mine})


# mode's handler type (mypy_extensions NamedArg in a Union) matches no plain function.
app.on_partitions_assigned.connect(_on_assigned)  # type: ignore[arg-type]


class _Stage:
    """One routing stage: its handler and its DLQ-flood guard (one guard per stage, shared by
    the stream and the gap repairs of its topic)."""

    def __init__(self, name: str, handle: Callable[[Message], Awaitable[list[Outgoing]]]):
        self.name = name
        self.handle = handle
        self.guard = _guard_settings.limit()

    async def route(self, message: Message) -> None:
        """Route one record and hand what it made to :data:`outputs` (the ledger has it as
        received, and as finished once all of it is on the broker)."""
        ledger.received(message.tp, message.offset)
        _records_in(message.topic).inc()
        outgoing = await self.handle(message)
        if _is_dead_letter(outgoing):
            outgoing = await _guarded(self.name, self.guard, message, outgoing, self.handle)
        else:
            self.guard.check([False])
        await outputs.submit(message, outgoing)


async def _route_stream(stage: _Stage, stream: StreamT[bytes]) -> None:
    """Route each record of ``stream`` with ``stage``.

    ``noack()``: Faust acknowledges nothing by itself; the ledger commits a record only once
    its output is acknowledged, whatever stops this loop (a rebalance, a stop, a crash).
    ``handle`` parks every bad record on the DLQ itself; an exception out of here is a bug,
    which marks the worker unready (``/readyz``) before it propagates.
    """
    manual = cast(Any, stream).noack()  # StreamT does not declare noack; Stream has it
    try:
        async for event in manual.events():
            await stage.route(event.message)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        HEALTH.degraded(SERVICE, f"agent.{stage.name}", f"crashed: {type(exc).__name__}: {exc}")
        log.critical("router agent crashed", extra={"agent": stage.name}, exc_info=True)
        raise


def _is_dead_letter(outgoing: Sequence[Outgoing]) -> bool:
    return any(record.dead_letter for record in outgoing)


async def _guarded(
    stage: str,
    guard: DlqLimit,
    message: Message,
    outgoing: list[Outgoing],
    handle: Callable[[Message], Awaitable[list[Outgoing]]],
) -> list[Outgoing]:
    """The DLQ-flood guard (herald.dlqlimit): when too many records in a row, or too large a
    share, would go to the events DLQ — a bad deploy or a missing table, not bad data — the
    stage stops there instead of draining its topic into the DLQ: it alerts
    (``herald_dlq_guard_tripped{service="router"}``, ``/readyz``, an error in the log), waits,
    and routes the same record again, until it routes or the guard lets it through."""
    pause = _guard_settings.backoff_seconds
    tripped = False
    while True:
        index, reason = guard.check([_is_dead_letter(outgoing)])
        if index is None:
            if tripped:
                GUARD_TRIPPED.labels(SERVICE).set(0)
                HEALTH.recovered(SERVICE, f"dlq_guard.{stage}")
            return outgoing
        tripped = True
        GUARD_TRIPPED.labels(SERVICE).set(1)
        GUARD_TRIPS.labels(SERVICE).inc()
        HEALTH.degraded(SERVICE, f"dlq_guard.{stage}", f"{reason}; routing paused")
        log.error(
            "DLQ-flood guard tripped: not dead-lettering, routing again after a pause",
            extra={**_where(message), "agent": stage, "reason": reason, "retry_in_s": pause},
        )
        await asyncio.sleep(pause)
        outgoing = await handle(message)


# --- stage 1 -------------------------------------------------------------------------------


@app.agent(events_topic)
async def expand_events(stream: StreamT[bytes]) -> None:
    """Stage 1: validate each event and fan it out, one record per recipient."""
    await _route_stream(_STAGES[events_topic.get_topic_name()], stream)


async def _expand(message: Message) -> list[Outgoing]:
    try:
        record = routing.decode_input(message.value, routing.EVENT)
        event_type = await _lookup(event_types, record["event_type"], routing.EVENT_TYPE, message)
        routing.check_event_type(record, event_type)
        recipients = routing.expand(record)
    except Exception as exc:
        return [_dead_letter(message, _permanent(exc))]
    outgoing: list[Outgoing] = []
    for recipient in recipients:
        outgoing += await _route_here_or_send(recipient, message)
    return outgoing


async def _route_here_or_send(recipient: Record, event: Message) -> list[Outgoing]:
    """Route a recipient's copy here when this worker holds its user's tables (the recipients
    partition is assigned here, its tables recovered), else write it to the recipients topic
    for the worker that holds them. Routing here saves a produce, a Faust consume and a
    decode per recipient; with one worker every recipient is routed here.

    A login goes through the topic always: its known-device write must land on the changelog
    partition of the recipients record, which Faust takes from the record being processed.
    If a rebalance starts while routing here, the result is dropped and the copy written to
    the topic: the tables may have been given up mid-way (a user would look unknown).
    Routing here has no side effect that routing the copy again would repeat: a quiet-hours
    hold is inserted once per delivery id."""
    key = recipient["user_id"].encode()
    tp = _RECIPIENT_TPS[_partition_of(key)]
    if devices.is_login(recipient["event"]) or not _holds_tables(tp):
        return [routing.recipient_output(recipient, catalogue)]
    generation = app.consumer_generation_id
    message = Message(
        topic=tp.topic,
        partition=tp.partition,
        offset=-1,  # never on the topic (a copy that cannot be routed here is sent there)
        timestamp=event.timestamp,
        timestamp_type=event.timestamp_type,
        headers=event.headers,
        key=key,
        value=None,
        checksum=None,
        tp=tp,
    )
    try:
        outgoing: list[Outgoing] | None = await _route_recipient(recipient, message)
    except Exception:
        outgoing = None  # stage 2 parks it (or meets the same bug) with the copy's offset
    moved = app.consumer_generation_id != generation or not _holds_tables(tp)
    if outgoing is None or moved or not outputs.fit(outgoing):
        # A copy that cannot be routed (or whose output the broker would refuse as too large)
        # goes through the topic too: stage 2 parks that recipient's copy alone, with the
        # offset it has there (replayable like any), and counts it in its own DLQ guard.
        return [routing.recipient_output(recipient, catalogue)]
    LOCAL.inc()
    return outgoing


class _Actives:
    """The active table partitions of this worker, per consumer generation (Faust's assignor
    builds a new set on every call)."""

    generation: int = -1
    partitions: frozenset[TP] = frozenset()


def _holds_tables(tp: TP) -> bool:
    """Whether the user tables of recipients partition ``tp`` are active and recovered here."""
    if app.rebalancing or not cast(Any, app.tables).recovery.completed.is_set():
        return False
    if _Actives.generation != app.consumer_generation_id:
        _Actives.partitions = frozenset(app.assignor.assigned_actives())
        _Actives.generation = app.consumer_generation_id
    return tp in _Actives.partitions


#: The recipients topic's partitions, made once (a named tuple per recipient costs).
_RECIPIENT_TPS = [
    TP(recipients_topic.get_topic_name(), p) for p in range(catalogue.recipients.partitions)
]


@lru_cache(maxsize=65_536)
def _partition_of(key: bytes) -> int:
    """The recipients partition of a user id: murmur2 as the Java client, aiokafka and Faust
    (and Herald's producers, herald.streaming.producer_config) partition keys."""
    return int(murmur2(key) & 0x7FFFFFFF) % catalogue.recipients.partitions


# --- stage 2 -------------------------------------------------------------------------------


@app.agent(recipients_topic)
async def route_recipients(stream: StreamT[bytes]) -> None:
    """Stage 2: route each recipient's copy of an event with this worker's tables."""
    await _route_stream(_STAGES[recipients_topic.get_topic_name()], stream)


async def _route(message: Message) -> list[Outgoing]:
    try:
        recipient = routing.decode_input(message.value, routing.RECIPIENT_EVENT)
        return await _route_recipient(recipient, message)
    except Exception as exc:
        return [_dead_letter(message, _permanent(exc))]


async def _route_recipient(recipient: Record, message: Message) -> list[Outgoing]:
    """Route one recipient's copy with this worker's tables (``message`` says where it is:
    its partition picks the tables to wait for). Raises what makes it poison."""
    user_id = recipient["user_id"]
    code = recipient["event"]["event_type"]
    # A preference changed just before this event must rule it: let the feeders of this
    # partition's user and preferences rows store what their topics hold first.
    await _wait_until_fed(message.partition, _deadline(message))
    user = await _lookup(users, user_id, routing.USER, message)
    if user is None:
        raise PermanentError(
            f"user {user_id!r} is unknown (no record on the users topic)",
            error_class="user.unknown",
        )
    event_type = routing.check_event_type(
        recipient["event"], await _lookup(event_types, code, routing.EVENT_TYPE, message)
    )
    raw_preferences = preferences.get(user_id.encode())
    user_preferences = _decoded(raw_preferences, routing.PREFERENCES) if raw_preferences else None
    now = datetime.now(UTC)
    routed = routing.route(recipient, user, user_preferences, event_type, now)
    outgoing = routing.routed_outputs(routed, catalogue)
    if devices.is_login(recipient["event"]):
        outgoing += await _login_alert(recipient, user, user_preferences, now, message)
    for status in routed.statuses:
        DELIVERIES.labels(status["channel"], status["status"]).inc()
    await _hold(routing.held_rows(routed))
    return outgoing


async def _login_alert(
    recipient: Record,
    user: Record,
    user_preferences: Record | None,
    now: datetime,
    message: Message,
) -> list[Outgoing]:
    """Learn a login's device; a device new for this user raises a ``security.login_alert``,
    routed like any event (see services.router.devices). The table is updated only once the
    alert is routed, so a login parked on the DLQ is decided again when replayed."""
    key = recipient["user_id"].encode()
    known = devices.decode_devices(known_devices.get(key))
    updated, is_new = devices.observe_login(known, recipient["event"], now)
    outgoing: list[Outgoing] = []
    if is_new:
        alert = devices.login_alert(recipient)
        alert_type = routing.check_event_type(
            alert["event"], await _lookup(event_types, LOGIN_ALERT, routing.EVENT_TYPE, message)
        )
        routed = routing.route(alert, user, user_preferences, alert_type, now)
        outgoing = routing.routed_outputs(routed, catalogue)
        for status in routed.statuses:
            DELIVERIES.labels(status["channel"], status["status"]).inc()
        await _hold(routing.held_rows(routed))
    if updated != known:
        known_devices[key] = devices.encode_devices(updated)
    return outgoing


# --- quiet hours ---------------------------------------------------------------------------


async def _hold(rows: list[dict[str, Any]]) -> None:
    """Store held deliveries before the agent moves on (and Faust may commit the record's
    offset). A database that does not answer is waited for, with growing pauses, for as long
    as it takes: the alternatives are losing the delivery or sending it during quiet hours.
    The partition stalls meanwhile, and the log says why."""
    if not rows:
        return
    backoff = Backoff(initial=0.5, maximum=30.0)
    while True:
        try:
            await asyncio.to_thread(hold_store.hold, rows)
            return
        except Exception:
            pause = backoff.next()
            ERRORS.labels(SERVICE, "quiet_hours.store").inc()
            log.exception(
                "could not store held deliveries; retrying",
                extra={"deliveries": [row["delivery_id"] for row in rows], "retry_in_s": pause},
            )
            await asyncio.sleep(pause)


@app.timer(router_settings.quiet_release_interval_ms / 1000)
async def release_held() -> None:
    """Produce the held deliveries whose quiet hours have ended to their channel topics; one
    worker only (the rows are locked ``SKIP LOCKED``, so two would not collide either)."""
    if not _leads():
        return
    batch = router_settings.quiet_release_batch
    try:
        while True:
            released = await asyncio.to_thread(hold_store.release_due, batch)
            if released:
                log.info("held deliveries released", extra={"count": released})
            if released < batch:
                return
    except Exception:  # the next tick tries again; the rows are still there
        ERRORS.labels(SERVICE, "quiet_hours.release").inc()
        log.exception("releasing held deliveries failed")


# --- the weekly digest ----------------------------------------------------------------------


def _leads() -> bool:
    """Whether this worker runs the work that one worker does for all (the weekly digest,
    releasing held deliveries): the one holding partition 0 of the recipients topic (Faust's
    own leader election is off, see app.py; this is the same idea)."""
    assigned = app.consumer.assignment() if app.consumer else set()
    return TP(recipients_topic.get_topic_name(), 0) in assigned


if router_settings.digest_cron:

    @app.crontab(router_settings.digest_cron, timezone=UTC)
    async def weekly_digest() -> None:
        """Publish every user's weekly digest event (herald.digest); one worker only."""
        if not _leads():
            return
        try:
            digests = await asyncio.to_thread(run_digest, settings, datetime.now(UTC))
        except Exception:  # a failed run must not stop the router; the next one retries
            log.exception("weekly digest failed")
            return
        log.info("weekly digest published", extra={"users": len(digests)})


# --- tables -------------------------------------------------------------------------------


@app.agent(event_types_topic)
async def load_event_types(stream: StreamT[bytes]) -> None:
    """Keep the global event types table equal to the event types topic."""
    async for event in stream.events():
        _store(event, event_types, routing.EVENT_TYPE)


@app.agent(users_topic)
async def load_users(stream: StreamT[bytes]) -> None:
    """Keep this worker's partitions of the users table equal to the users topic."""
    async for event in stream.events():
        _store(event, users, routing.USER)


@app.agent(preferences_topic)
async def load_preferences(stream: StreamT[bytes]) -> None:
    """Keep this worker's partitions of the preferences table equal to the preferences topic."""
    async for event in stream.events():
        _store(event, preferences, routing.PREFERENCES)


def _store(event: EventT, table: Any, full_name: str) -> None:
    """Copy one compacted-topic record into its table: a tombstone deletes, an invalid record
    is logged and left out (the table keeps the last valid version)."""
    message = event.message
    _records_in(message.topic).inc()
    _stored[message.tp] = message.offset
    if not message.key:
        log.warning("record without a key ignored", extra=_where(message))
        return
    if message.value is None:
        table.pop(message.key, None)
        return
    try:
        routing.decode_input(message.value, full_name)
    except PermanentError as exc:
        ERRORS.labels(SERVICE, exc.error_class).inc()
        log.warning(
            "invalid table record ignored",
            extra={**_where(message), "error_class": exc.error_class, "error": exc.message},
        )
        return
    # The Avro bytes as they came: the changelog then holds records any Herald tool can read,
    # and values written by an older schema still resolve when looked up.
    table[message.key] = message.value


# --- plumbing -----------------------------------------------------------------------------


async def _lookup(table: Any, key: str, full_name: str, message: Message) -> Record | None:
    """The table's record for ``key``, waiting a bounded time (see routing.lookup_deadline)
    for one written just before ``message``. Waiting sleeps this agent only; the agents that
    feed the tables go on."""
    raw_key = key.encode()
    raw = table.get(raw_key)
    if raw is None:
        deadline = _deadline(message)
        while raw is None and time.time() < deadline:
            await asyncio.sleep(_POLL_S)
            raw = table.get(raw_key)
    return _decoded(raw, full_name) if raw is not None else None


def _deadline(message: Message) -> float:
    return routing.lookup_deadline(
        message.timestamp or time.time(), _Readiness.at, time.time(), _GRACE_S
    )


async def _wait_until_fed(partition: int, deadline: float) -> None:
    """Wait (until ``deadline`` at most) until the users and preferences agents have stored
    every record their topics' ``partition`` held when last fetched. Table rows are keyed
    like the recipients, so that partition holds this recipient's rows."""
    feeds = [TP(topic.get_topic_name(), partition) for topic in (users_topic, preferences_topic)]
    while _behind(feeds) and time.time() < deadline:
        await asyncio.sleep(_POLL_S)


def _behind(partitions: Sequence[TP]) -> bool:
    for tp in partitions:
        try:
            highwater = app.consumer.highwater(tp)
        except Exception:  # not assigned any more (a rebalance): nothing to wait for here
            return False
        done = _fed_up_to(tp)
        if highwater is not None and done is not None and done < highwater:
            return True
    return False


def _fed_up_to(tp: TP) -> int | None:
    """The offset up to which this worker's table holds ``tp``'s records: past the last one
    stored, or the group's committed offset (where this worker took the partition over),
    whichever is further; None when neither is known yet."""
    # Faust keeps the committed offsets it seeks to after each rebalance, and updates them on
    # commit; it has no public accessor for them.
    committed: dict[TP, int | None] = getattr(app.consumer, "_committed_offset", {})
    stored = _stored.get(tp)
    after_stored = None if stored is None else stored + 1
    known = [offset for offset in (committed.get(tp), after_stored) if offset is not None]
    return max(known) if known else None


@lru_cache(maxsize=8192)
def _decoded(raw: bytes, full_name: str) -> Record:
    # Table values are read far more often than written (one event type for many events):
    # decode each version once. The records are shared: routing never mutates its inputs.
    return decode(raw, full_name)


def _permanent(exc: Exception) -> PermanentError:
    """Poison as a typed error. Anything else a record makes the decision code raise is a bug
    met by this record: it is parked too (``router.unexpected``, replayable once fixed), so
    that one record never stops its partition."""
    if isinstance(exc, PermanentError):
        return exc
    log.exception("unexpected error routing a record")
    return PermanentError(f"{type(exc).__name__}: {exc}", error_class="router.unexpected")


def _dead_letter(message: Message, error: PermanentError) -> Outgoing:
    """The poison record for the events DLQ, with the x-* headers of the design."""
    ERRORS.labels(SERVICE, error.error_class).inc()
    log.warning(
        "record dead-lettered",
        extra={**_where(message), "error_class": error.error_class, "error": error.message},
    )
    original = KafkaMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=_headers(message.headers),
    )
    return failure_record(
        original,
        error,
        retry_topics=(),
        retry_delays_ms=(),
        dlq_topic=catalogue.events.dlq_name,
    )


@cache
def _records_out(topic: str) -> Any:
    return RECORDS_OUT.labels(SERVICE, topic)


#: Everything the agents produce goes out through one acknowledged producer.
outputs = Outputs(
    lambda: AckedProducer(producer_config(settings.kafka)),
    _dead_letter,
    ledger,
    service=SERVICE,
    health=HEALTH,
    max_in_flight=router_settings.max_in_flight,
    on_record_out=lambda topic: _records_out(topic).inc(),
)


@app.task
async def serve_outputs() -> None:
    """Serve the producer's delivery reports: acknowledge events whose outputs are on the
    broker, produce refused records again."""
    await outputs.serve()


#: The two routing stages, by the topic they read.
_STAGES = {
    events_topic.get_topic_name(): _Stage("expand_events", _expand),
    recipients_topic.get_topic_name(): _Stage("route_recipients", _route),
}

_gap_reader = GapReader(settings.kafka, f"{app.conf.id}-gaps")


@app.timer(interval=0.5)
async def repair_gaps() -> None:
    """Route the records a stream skipped (services.router.ledger, services.router.repair)."""

    async def route(message: Message) -> None:
        REPAIRED.labels(message.topic).inc()
        await _STAGES[message.topic].route(message)

    await repair(ledger, _gap_reader, route, time.monotonic())


async def _flush_outputs(app: Any, **kwargs: Any) -> None:
    """On stop, wait for what was produced (acknowledged events are then committed by
    Faust's final commit; the rest is consumed again by the next owner)."""
    outputs.flush(10.0)  # on the loop's thread: the reports' callbacks run here
    await outputs.serve_once(0)


# mode's handler type (mypy_extensions NamedArg in a Union) matches no plain function.
app.on_before_shutdown.connect(_flush_outputs)  # type: ignore[arg-type]


@cache
def _records_in(topic: str) -> Any:
    return RECORDS_IN.labels(SERVICE, topic)


def _headers(headers: Any) -> list[tuple[str, str | bytes | None]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(name), value) for name, value in items]


def _where(message: Message) -> dict[str, Any]:
    return {"topic": message.topic, "partition": message.partition, "offset": message.offset}
