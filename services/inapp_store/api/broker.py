"""Fan-out of inbox events to the open streams of one API process.

One :class:`InboxBroker` per process holds one PostgreSQL connection that ``LISTEN``s on
:data:`services.inapp_store.realtime.CHANNEL`; every process gets every event, so a change
made through any process (or by the sink) reaches the streams of all of them. Per event:

1. the listener decodes the payload and drops it unless it is for this process's schema and a
   user with an open stream here (most events are for users who are not looking);
2. a dispatcher drains what has arrived, reads the new notifications of the lot in one query
   (``created`` events carry ids only; the stream sends the whole notification), then hands
   each event to each of the user's :class:`Subscription` queues, in arrival order.

A stream that might have missed events gets a ``resync`` event (the client should refetch the
inbox): after the listening connection was lost and restored, when the client reads slower
than events arrive (its queue overflowed), or when the notifications could not be read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import psycopg
from prometheus_client import Counter, Gauge

from herald.settings import DatabaseSettings
from services.inapp_store.realtime import CHANNEL, InboxEvent, Kind, decode_event

log = logging.getLogger(__name__)

STREAMS_OPEN = Gauge("herald_read_api_streams_open", "Real-time streams open in this process")
STREAM_EVENTS = Counter(
    "herald_read_api_stream_events_total", "Events pushed to open streams, by event", ["event"]
)
LISTENER_CONNECTS = Counter(
    "herald_read_api_listener_connects_total", "LISTEN connections opened (first and reconnects)"
)

#: SSE event names, by inbox event kind.
EVENT_NAMES: Final[Mapping[Kind, str]] = {
    Kind.CREATED: "notification.created",
    Kind.READ: "notification.read",
    Kind.UNREAD: "notification.unread",
    Kind.ARCHIVED: "notification.archived",
    Kind.UNARCHIVED: "notification.unarchived",
    Kind.READ_ALL: "notifications.read_all",
}
#: The event telling a client it may have missed events and should refetch.
RESYNC: Final = "resync"
#: Most events the dispatcher handles (and notifications it reads) at once.
DISPATCH_BATCH: Final = 500

#: Events heard but not yet dispatched, at most (beyond: the users' streams are told to resync).
INBOUND_LIMIT: Final = 10_000

#: Reads notifications by id (a blocking function; the broker runs it in a worker thread).
FetchNotifications = Callable[[Sequence[uuid.UUID]], Mapping[uuid.UUID, Mapping[str, Any]]]


@dataclass(frozen=True)
class StreamEvent:
    """One event for a stream: its SSE name and JSON data."""

    name: str
    data: Mapping[str, Any]


class Heartbeat:
    """What :meth:`Subscription.next` returns when nothing happened for a while."""


HEARTBEAT: Final = Heartbeat()


@dataclass(eq=False)
class Subscription:
    """One open stream's queue of events."""

    user_id: str
    maxsize: int
    queue: asyncio.Queue[StreamEvent | None] = field(init=False)

    def __post_init__(self) -> None:
        # One slot more than maxsize: room for the resync event replacing an overflow.
        self.queue = asyncio.Queue(self.maxsize + 1)

    def deliver(self, event: StreamEvent) -> None:
        """Queue ``event``; a full queue is replaced by one ``resync`` event (the client
        reads too slowly to follow event by event, so it refetches instead)."""
        if self.queue.qsize() < self.maxsize:
            self.queue.put_nowait(event)
            return
        self._drain()
        self.queue.put_nowait(StreamEvent(RESYNC, {"reason": "overflow"}))

    def close(self) -> None:
        """End the stream (after what is queued); used at shutdown."""
        if self.queue.full():
            self._drain()
        self.queue.put_nowait(None)

    def _drain(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()

    async def next(self, timeout: float) -> StreamEvent | Heartbeat | None:
        """The next event; :data:`HEARTBEAT` after ``timeout`` seconds without one; None when
        the stream is closed. (A cancelled ``get`` loses nothing: the item stays queued.)"""
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return HEARTBEAT


class InboxBroker:
    """The process's ``LISTEN`` connection and its streams' subscriptions."""

    def __init__(
        self,
        database: DatabaseSettings,
        fetch: FetchNotifications,
        *,
        queue_size: int = 256,
        probe_interval_s: float = 15.0,
        max_reconnect_delay_s: float = 5.0,
    ) -> None:
        self.database = database
        self.schema = database.database_schema
        self.fetch = fetch
        self.queue_size = queue_size
        self.probe_interval_s = probe_interval_s
        self.max_reconnect_delay_s = max_reconnect_delay_s
        self._subscribers: dict[str, set[Subscription]] = {}
        # Open streams by who opened them (a user, or an API key by fingerprint).
        self._owners: collections.Counter[str] = collections.Counter()
        # Made in start(): asyncio objects belong to the loop that runs them.
        self._inbound: asyncio.Queue[InboxEvent] = asyncio.Queue(INBOUND_LIMIT)
        self._connected = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, wait_s: float = 5.0) -> None:
        """Start listening; waits up to ``wait_s`` for the first connection (the API starts
        anyway if PostgreSQL is down, reports not ready, and keeps trying)."""
        self._inbound = asyncio.Queue(INBOUND_LIMIT)
        self._connected = asyncio.Event()
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._listen(), name="inbox-listener"),
            asyncio.create_task(self._dispatch(), name="inbox-dispatcher"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._connected.wait()

    def close_streams(self) -> None:
        """End every open stream and refuse new ones (shutdown: lets the server finish the
        responses instead of waiting out its graceful-shutdown timeout)."""
        self._closing = True
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.close()

    async def stop(self) -> None:
        """Close the streams and the listening connection."""
        self.close_streams()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    @property
    def connected(self) -> bool:
        """Whether the ``LISTEN`` connection is up (streams hear of changes)."""
        return self._connected.is_set()

    @property
    def closing(self) -> bool:
        """Whether the broker is shutting down (no new streams)."""
        return self._closing

    # --- subscriptions -------------------------------------------------------------------

    def streams_of(self, user_id: str) -> int:
        """How many streams ``user_id`` has open in this process."""
        return len(self._subscribers.get(user_id, ()))

    def streams_of_owner(self, owner: str) -> int:
        """How many streams ``owner`` (a principal's rate key) has open in this process."""
        return self._owners[owner]

    @property
    def streams_total(self) -> int:
        """How many streams are open in this process."""
        return sum(self._owners.values())

    @contextlib.contextmanager
    def subscribe(self, user_id: str, owner: str | None = None) -> Iterator[Subscription]:
        """Receive ``user_id``'s events while the block runs (counted against ``owner``,
        the caller who opened the stream; the user by default)."""
        subscription = Subscription(user_id, self.queue_size)
        self._subscribers.setdefault(user_id, set()).add(subscription)
        owner = owner or f"user:{user_id}"
        self._owners[owner] += 1
        STREAMS_OPEN.inc()
        try:
            if self._closing:
                subscription.close()
            yield subscription
        finally:
            STREAMS_OPEN.dec()
            self._owners[owner] -= 1
            if self._owners[owner] <= 0:
                del self._owners[owner]
            subscriptions = self._subscribers.get(user_id)
            if subscriptions is not None:
                subscriptions.discard(subscription)
                if not subscriptions:
                    del self._subscribers[user_id]

    def _deliver(self, user_id: str, event: StreamEvent) -> None:
        for subscription in list(self._subscribers.get(user_id, ())):
            subscription.deliver(event)
            STREAM_EVENTS.labels(event.name).inc()

    def _resync_all(self, reason: str) -> None:
        for user_id in list(self._subscribers):
            self._deliver(user_id, StreamEvent(RESYNC, {"reason": reason}))

    # --- listening -----------------------------------------------------------------------

    async def _listen(self) -> None:
        delay = 0.1
        ever_connected = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database.libpq_url,
                    autocommit=True,
                    application_name=f"herald-read-api-listen:{self.schema}"[:63],
                    connect_timeout=10,
                    # A peer that vanished without closing the socket is noticed by TCP.
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    LISTENER_CONNECTS.inc()
                    self._connected.set()
                    if ever_connected:
                        # Events committed while the connection was down were not heard.
                        self._resync_all("reconnected")
                        log.info("inbox listener reconnected")
                    ever_connected = True
                    delay = 0.1
                    while True:
                        async for notify in conn.notifies(timeout=self.probe_interval_s):
                            self._on_payload(notify.payload)
                        # Quiet for a while: make sure the connection is still alive.
                        await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "inbox listener lost its connection; retrying",
                    extra={"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"},
                )
            finally:
                self._connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_reconnect_delay_s)

    def _on_payload(self, payload: str) -> None:
        event = decode_event(payload)
        if event is None or event.schema != self.schema or event.user_id not in self._subscribers:
            return
        try:
            self._inbound.put_nowait(event)
        except asyncio.QueueFull:
            # The dispatcher is far behind (the database answers slowly): tell the user's
            # streams to refetch rather than grow without bound.
            self._deliver(event.user_id, StreamEvent(RESYNC, {"reason": "overflow"}))

    # --- dispatching ---------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            batch = [await self._inbound.get()]
            while len(batch) < DISPATCH_BATCH and not self._inbound.empty():
                batch.append(self._inbound.get_nowait())
            try:
                await self._dispatch_batch(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not dispatch inbox events; streams told to resync")
                for user_id in {event.user_id for event in batch}:
                    self._deliver(user_id, StreamEvent(RESYNC, {"reason": "error"}))

    async def _dispatch_batch(self, batch: Sequence[InboxEvent]) -> None:
        wanted = [
            uuid.UUID(event.notification_id)
            for event in batch
            if event.kind is Kind.CREATED
            and event.notification_id
            and event.user_id in self._subscribers
        ]
        rows = await anyio.to_thread.run_sync(self.fetch, wanted) if wanted else {}
        for event in batch:
            stream_event = self._stream_event(event, rows)
            if stream_event is not None:
                self._deliver(event.user_id, stream_event)

    @staticmethod
    def _stream_event(
        event: InboxEvent, rows: Mapping[uuid.UUID, Mapping[str, Any]]
    ) -> StreamEvent | None:
        name = EVENT_NAMES[event.kind]
        if event.kind is Kind.CREATED:
            row = rows.get(uuid.UUID(event.notification_id)) if event.notification_id else None
            # Never another user's row, whatever a payload claims.
            if row is None or row["user_id"] != event.user_id:
                return None
            return StreamEvent(name, row)
        if event.kind is Kind.READ_ALL:
            return StreamEvent(name, {"read_at": event.at, "count": event.count})
        field_name = "read_at" if event.kind in (Kind.READ, Kind.UNREAD) else "archived_at"
        return StreamEvent(name, {"id": event.notification_id, field_name: event.at})
