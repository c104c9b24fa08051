"""What the router's agents share, built once per worker by services.router.agents.build:
the app and its tables (:class:`~services.router.app.Router`), the one acknowledged output
(:class:`~services.router.outputs.Outputs`), the quiet-hours store, the table lookups, and a
routing :class:`Stage` (its handler, its DLQ-flood guard, its stream loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any, cast

from confluent_kafka import Message as KafkaMessage
from faust.types import TP, StreamT
from faust.types.tuples import Message

from herald.dlqlimit import GUARD_TRIPPED, GUARD_TRIPS, DlqLimitSettings
from herald.errors import PermanentError
from herald.metrics import ERRORS, HEALTH, RECORDS_IN, RECORDS_OUT, Backoff, labelled
from herald.producer import AckedProducer
from herald.serde import Record, decode
from herald.streaming import Outgoing, failure_record, producer_config
from services.router import routing
from services.router.app import SERVICE, Router
from services.router.holds import HoldStore
from services.router.outputs import Outputs

log = logging.getLogger("services.router.agents")

#: A stage's handler: a consumed record → what it makes (poison → one dead letter).
Handler = Callable[[Message], Awaitable[list[Outgoing]]]


class Runtime:
    """One worker's shared state; see the module docstring."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.app = router.app
        self.catalogue = router.catalogue
        self.ledger = router.ledger
        settings, own = router.settings, router.router_settings
        self.grace_s = own.lookup_grace_ms / 1000
        self.poll_s = own.lookup_poll_ms / 1000
        #: Held deliveries (quiet hours) in PostgreSQL; connects on first use.
        self.hold_store = HoldStore(settings.database, settings.kafka, router.catalogue)
        #: The DLQ-flood guard's limits (``HERALD_DLQ_GUARD_*``), one guard per stage.
        self.guard_settings = DlqLimitSettings()
        #: Everything the agents produce goes out through one acknowledged producer.
        self.outputs = Outputs(
            lambda: AckedProducer(producer_config(settings.kafka)),
            self.dead_letter,
            router.ledger,
            service=SERVICE,
            health=HEALTH,
            max_in_flight=own.max_in_flight,
            on_record_out=lambda topic: labelled(RECORDS_OUT, SERVICE, topic).inc(),
        )
        #: The offset of the last record each table feeder stored (or skipped), by partition.
        self.stored: dict[TP, int] = {}
        #: Users erased while this worker ran (a tombstone on the users topic), by key, with
        #: when: their events still in flight are dropped, not dead-lettered (tables.forget_user).
        self.erased: dict[bytes, float] = {}
        #: When this worker's tables last started catching up (start-up or a rebalance).
        self.ready_at = time.time()
        #: The routing stages by the topic they read (services.router.stage1, stage2).
        self.stages: dict[str, Stage] = {}
        self._actives: tuple[int, frozenset[TP]] = (-1, frozenset())
        #: The users and preferences partitions that feed each recipients partition's rows.
        self._feeds = [
            [
                TP(topic.get_topic_name(), partition)
                for topic in (router.users_topic, router.preferences_topic)
            ]
            for partition in range(router.catalogue.recipients.partitions)
        ]
        self.recipient_tps = [
            TP(router.recipients_topic.get_topic_name(), p)
            for p in range(router.catalogue.recipients.partitions)
        ]

    # --- table lookups ------------------------------------------------------------------------

    async def lookup(self, table: Any, key: str, full_name: str, message: Message) -> Record | None:
        """The table's record for ``key``, waiting a bounded time (see routing.lookup_deadline)
        for one written just before ``message``. Waiting sleeps this agent only; the agents
        that feed the tables go on."""
        raw_key = key.encode()
        raw = table_value(table, raw_key)
        if raw is None:
            deadline = self.deadline(message)
            while raw is None and time.time() < deadline:
                await asyncio.sleep(self.poll_s)
                raw = table_value(table, raw_key)
        return decoded(raw, full_name) if raw is not None else None

    def deadline(self, message: Message) -> float:
        return routing.lookup_deadline(
            message.timestamp or time.time(), self.ready_at, time.time(), self.grace_s
        )

    async def wait_until_fed(self, partition: int, deadline: float) -> None:
        """Wait (until ``deadline`` at most) until the users and preferences agents have stored
        every record their topics' ``partition`` held when last fetched. Table rows are keyed
        like the recipients, so that partition holds this recipient's rows."""
        feeds = self._feeds[partition]
        while self._behind(feeds) and time.time() < deadline:
            await asyncio.sleep(self.poll_s)

    def _behind(self, partitions: Sequence[TP]) -> bool:
        for tp in partitions:
            try:
                highwater = self.app.consumer.highwater(tp)
            except Exception:  # not assigned any more (a rebalance): nothing to wait for here
                return False
            done = self._fed_up_to(tp)
            if highwater is not None and done is not None and done < highwater:
                return True
        return False

    def committed_offset(self, tp: TP) -> int | None:
        """The group's committed offset of ``tp`` as this worker's consumer knows it."""
        # Faust keeps the committed offsets it seeks to after each rebalance, and updates them
        # on commit; it has no public accessor for them.
        committed: dict[TP, int | None] = getattr(self.app.consumer, "_committed_offset", {})
        return committed.get(tp)

    def _fed_up_to(self, tp: TP) -> int | None:
        """The offset up to which this worker's table holds ``tp``'s records: past the last
        one stored, or the group's committed offset (where this worker took the partition
        over), whichever is further; None when neither is known yet."""
        stored = self.stored.get(tp)
        after_stored = None if stored is None else stored + 1
        known = [o for o in (self.committed_offset(tp), after_stored) if o is not None]
        return max(known) if known else None

    def holds_tables(self, tp: TP) -> bool:
        """Whether the user tables of recipients partition ``tp`` are active and recovered
        here (Faust's assignor builds a new set per call: cached per consumer generation)."""
        app = self.app
        if app.rebalancing or not cast(Any, app.tables).recovery.completed.is_set():
            return False
        generation, actives = self._actives
        if generation != app.consumer_generation_id:
            actives = frozenset(app.assignor.assigned_actives())
            self._actives = (app.consumer_generation_id, actives)
        return tp in actives

    def leads(self) -> bool:
        """Whether this worker runs the work that one worker does for all (the weekly digest,
        releasing held deliveries): the one holding partition 0 of the recipients topic
        (Faust's own leader election is off, see app.py; this is the same idea)."""
        assigned = self.app.consumer.assignment() if self.app.consumer else set()
        return self.recipient_tps[0] in assigned

    # --- quiet hours --------------------------------------------------------------------------

    async def hold(self, rows: list[dict[str, Any]]) -> None:
        """Store held deliveries before the agent moves on (and the record's offset can be
        committed). A database that does not answer is waited for, with growing pauses, for as
        long as it takes: the alternatives are losing the delivery or sending it during quiet
        hours. The partition stalls meanwhile, and the log says why."""
        if not rows:
            return
        backoff = Backoff(initial=0.5, maximum=30.0)
        while True:
            try:
                await asyncio.to_thread(self.hold_store.hold, rows)
                return
            except Exception:
                pause = backoff.next()
                ERRORS.labels(SERVICE, "quiet_hours.store").inc()
                log.exception(
                    "could not store held deliveries; retrying",
                    extra={
                        "deliveries": [row["delivery_id"] for row in rows],
                        "retry_in_s": pause,
                    },
                )
                await asyncio.sleep(pause)

    # --- poison -------------------------------------------------------------------------------

    def dead_letter(self, message: Message, error: PermanentError) -> Outgoing:
        """The poison record for the events DLQ, with the x-* headers of the design."""
        ERRORS.labels(SERVICE, error.error_class).inc()
        log.warning(
            "record dead-lettered",
            extra={**where(message), "error_class": error.error_class, "error": error.message},
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
            dlq_topic=self.catalogue.events.dlq_name,
        )


class Stage:
    """One routing stage: its handler and its DLQ-flood guard (one guard per stage, shared by
    the stream and the gap repairs of its topic)."""

    def __init__(self, runtime: Runtime, name: str, handle: Handler) -> None:
        self.runtime = runtime
        self.name = name
        self.handle = handle
        self.guard = runtime.guard_settings.limit()

    async def route(self, message: Message) -> None:
        """Route one record and hand what it made to the outputs (the ledger has it as
        received, and as finished once all of it is on the broker)."""
        self.runtime.ledger.received(message.tp, message.offset)
        labelled(RECORDS_IN, SERVICE, message.topic).inc()
        outgoing = await self.handle(message)
        if is_dead_letter(outgoing):
            outgoing = await self._guarded(message, outgoing)
        else:
            self.guard.check([False])
        await self.runtime.outputs.submit(message, outgoing)

    async def run(self, stream: StreamT[bytes]) -> None:
        """Route each record of ``stream`` (the agent's body).

        ``noack()``: Faust acknowledges nothing by itself; the ledger commits a record only
        once its output is acknowledged, whatever stops this loop (a rebalance, a stop, a
        crash). The handler parks every bad record on the DLQ itself; an exception out of here
        is a bug, which marks the worker unready (``/readyz``) before it propagates.
        """
        manual = cast(Any, stream).noack()  # StreamT does not declare noack; Stream has it
        try:
            async for event in manual.events():
                await self.route(event.message)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            HEALTH.degraded(SERVICE, f"agent.{self.name}", f"crashed: {type(exc).__name__}: {exc}")
            log.critical("router agent crashed", extra={"agent": self.name}, exc_info=True)
            raise

    async def _guarded(self, message: Message, outgoing: list[Outgoing]) -> list[Outgoing]:
        """The DLQ-flood guard (herald.dlqlimit): when too many records in a row, or too large
        a share, would go to the events DLQ — a bad deploy or a missing table, not bad data —
        the stage stops there instead of draining its topic into the DLQ: it alerts
        (``herald_dlq_guard_tripped{service="router"}``, ``/readyz``, an error in the log),
        waits, and routes the same record again, until it routes or the guard lets it
        through."""
        pause = self.runtime.guard_settings.backoff_seconds
        tripped = False
        while True:
            index, reason = self.guard.check([is_dead_letter(outgoing)])
            if index is None:
                if tripped:
                    GUARD_TRIPPED.labels(SERVICE).set(0)
                    HEALTH.recovered(SERVICE, f"dlq_guard.{self.name}")
                return outgoing
            tripped = True
            GUARD_TRIPPED.labels(SERVICE).set(1)
            GUARD_TRIPS.labels(SERVICE).inc()
            HEALTH.degraded(SERVICE, f"dlq_guard.{self.name}", f"{reason}; routing paused")
            log.error(
                "DLQ-flood guard tripped: not dead-lettering, routing again after a pause",
                extra={**where(message), "agent": self.name, "reason": reason, "retry_in_s": pause},
            )
            await asyncio.sleep(pause)
            outgoing = await self.handle(message)


def add_stage(runtime: Runtime, topic: Any, name: str, handle: Handler) -> Stage:
    """A routing stage reading ``topic``, registered as the agent ``name`` of the app."""
    stage = Stage(runtime, name, handle)
    runtime.stages[topic.get_topic_name()] = stage

    async def agent(stream: StreamT[bytes]) -> None:
        await stage.run(stream)

    agent.__doc__ = f"Routing stage {name} (services.router.runtime.Stage.run)."
    runtime.app.agent(topic, name=name)(agent)
    return stage


def is_dead_letter(outgoing: Sequence[Outgoing]) -> bool:
    return any(record.dead_letter for record in outgoing)


def permanent(exc: Exception) -> PermanentError:
    """Poison as a typed error. Anything else a record makes the decision code raise is a bug
    met by this record: it is parked too (``router.unexpected``, replayable once fixed), so
    that one record never stops its partition."""
    if isinstance(exc, PermanentError):
        return exc
    log.exception("unexpected error routing a record")
    return PermanentError(f"{type(exc).__name__}: {exc}", error_class="router.unexpected")


def table_value(table: Any, key: bytes) -> bytes | None:
    """A table's value for ``key``, read straight from the dict behind Faust's memory store
    (``store="memory://"``, see app.py). ``table.get`` goes through three mapping layers and
    a sensor call, and raises and catches a KeyError for a missing key (a user without a
    preferences record): about 7 % of the router's CPU at peak (issue 10)."""
    value: bytes | None = table.data.data.get(key)
    return value


@lru_cache(maxsize=8192)
def decoded(raw: bytes, full_name: str) -> Record:
    # Table values are read far more often than written (one event type for many events):
    # decode each version once. The records are shared: routing never mutates its inputs.
    return decode(raw, full_name)


def _headers(headers: Any) -> list[tuple[str, str | bytes | None]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(name), value) for name, value in items]


def where(message: Message) -> dict[str, Any]:
    return {"topic": message.topic, "partition": message.partition, "offset": message.offset}
