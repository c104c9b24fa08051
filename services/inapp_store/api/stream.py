"""``/v1/users/{user_id}/stream``: the user's inbox changes, live, as Server-Sent Events.

Open it with ``new EventSource("/v1/users/user-42/stream?token=<user token>")`` (or send
``X-User-Token`` from clients that can set headers). Events, each ``data`` a JSON object:

- ``notification.created``: a new inbox notification (the same object the inbox lists);
- ``notification.read`` / ``notification.unread``: ``{"id", "read_at"}``;
- ``notification.archived`` / ``notification.unarchived``: ``{"id", "archived_at"}``;
- ``notifications.read_all``: ``{"read_at", "count"}``;
- ``resync``: ``{"reason"}``: events may have been missed (the server's connection to the
  database was restored, the client read too slowly, or it missed more than
  :data:`REPLAY_LIMIT` notifications while disconnected); refetch the inbox and unread count;
- ``session.expired``: ``{"reason"}``: the session token the stream was opened with expired;
  the stream ends (get a new session token, then reconnect).

Every ``notification.created`` carries an SSE ``id`` (the notification's inbox cursor). A
browser's ``EventSource`` sends the last one back as ``Last-Event-ID`` when it reconnects (a
client that opens a new stream itself may pass it as ``?last_event_id=``): the stream then
first replays, oldest first, the notifications created since, so none is missed across a
reconnection. Read-state changes are not replayed: refetch the unread count on reconnection.

Comment lines (``: heartbeat``) keep idle connections open through proxies. Every API process
pushes to its own streams what any process (or the sink) changed, within about a second of
the commit (PostgreSQL ``LISTEN``/``NOTIFY``; see :mod:`services.inapp_store.api.broker`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from datetime import datetime
from typing import Annotated, Any, Final

import anyio
from fastapi import APIRouter, Depends, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import Engine

from herald.auth import StreamCaller
from herald.webapi import Problem, problem_responses
from services.inapp_store.api import queries
from services.inapp_store.api.broker import Heartbeat, Subscription
from services.inapp_store.api.deps import Broker, Config, DbEngine, UserPath
from services.inapp_store.api.models import NotificationOut
from services.inapp_store.api.pagination import MAX_CURSOR_LENGTH, Cursor, InvalidCursorError

#: Most notifications replayed to a stream resumed with Last-Event-ID; more missed: ``resync``.
REPLAY_LIMIT: Final = 100
CREATED: Final = "notification.created"

#: How long an EventSource waits before reconnecting after the stream ends, in milliseconds.
RECONNECT_MS = 3000

router = APIRouter(
    prefix="/v1/users/{user_id}",
    tags=["stream"],
    responses=problem_responses(401, 403, 422, 429, 503),
)


async def _subscription(
    user_id: UserPath, broker: Broker, config: Config, caller: StreamCaller
) -> AsyncIterator[Subscription]:
    # A dependency, not the generator's first lines: refusals must be answered before the
    # response (and its 200 status) starts. FastAPI keeps it open until the stream ends.
    if broker.closing or not broker.connected:
        raise Problem(
            503,
            "Service Unavailable",
            "real-time events are unavailable right now (no database connection); retry shortly",
            kind="stream-unavailable",
            headers={"Retry-After": "5"},
        )
    if broker.streams_total >= config.max_streams:
        # Every stream holds a connection for as long as it is open: the process's cap.
        raise Problem(
            503,
            "Service Unavailable",
            f"this server holds its limit of {config.max_streams} open streams; retry shortly "
            "(or on another server)",
            kind="too-many-streams-here",
            headers={"Retry-After": "10"},
        )
    if caller.is_key and broker.streams_of_owner(caller.rate_key) >= config.max_streams_per_key:
        raise Problem(
            429,
            "Too Many Requests",
            f"this API key already has {config.max_streams_per_key} open streams here; "
            "close one first",
            kind="too-many-streams",
            headers={"Retry-After": "10"},
        )
    if broker.streams_of(user_id) >= config.max_streams_per_user:
        raise Problem(
            429,
            "Too Many Requests",
            f"this user already has {config.max_streams_per_user} open streams here; "
            "close one first",
            kind="too-many-streams",
            headers={"Retry-After": "10"},
        )
    with broker.subscribe(user_id, owner=caller.rate_key) as subscription:
        yield subscription


def event_id(notification: Mapping[str, Any]) -> str:
    """The SSE id of a ``notification.created`` event: the notification's inbox cursor."""
    created_at = notification["created_at"]
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at)
    return Cursor(created_at, uuid.UUID(str(notification["id"]))).encode()


def _missed(engine: Engine, user_id: str, after: Cursor) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = queries.notifications_after(conn, user_id, after, REPLAY_LIMIT + 1)
    return [NotificationOut.model_validate(row).model_dump(mode="json") for row in rows]


async def _replay(engine: Engine, user_id: str, resume: str) -> list[ServerSentEvent]:
    """The events a stream resumed after ``resume`` (a Last-Event-ID) missed."""
    try:
        after = Cursor.decode(resume)
    except InvalidCursorError:
        return [ServerSentEvent(event="resync", data={"reason": "unknown Last-Event-ID"})]
    missed = await anyio.to_thread.run_sync(_missed, engine, user_id, after)
    if len(missed) > REPLAY_LIMIT:
        return [ServerSentEvent(event="resync", data={"reason": "too many missed events"})]
    return [ServerSentEvent(event=CREATED, data=item, id=event_id(item)) for item in missed]


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    summary="Real-time inbox events (Server-Sent Events)",
)
async def stream(
    user_id: UserPath,
    subscription: Annotated[Subscription, Depends(_subscription)],
    config: Config,
    caller: StreamCaller,
    engine: DbEngine,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=MAX_CURSOR_LENGTH,
            description="The id of the last event received (sent by EventSource when it "
            "reconnects): the notifications created since are replayed first.",
        ),
    ] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(
            alias="last_event_id",
            max_length=MAX_CURSOR_LENGTH,
            description="The same as the Last-Event-ID header, for a client opening a new "
            "stream itself.",
        ),
    ] = None,
) -> AsyncIterable[ServerSentEvent]:
    """New notifications and read-state changes of the user, as they happen.

    Authenticate with ``?token=`` (EventSource cannot send headers), ``X-User-Token``, or an
    admin key. Event names: ``notification.created``, ``notification.read``,
    ``notification.unread``, ``notification.archived``, ``notification.unarchived``,
    ``notifications.read_all``, ``resync`` (refetch: events may have been missed). Opened
    with a session token, the stream ends when the session expires, after a
    ``session.expired`` event (reconnecting with the same token is ``401``).
    """
    # Sent once subscribed: a client knows from it that no later event will be missed.
    yield ServerSentEvent(comment="connected", retry=RECONNECT_MS)
    # Subscribed before the replay is read: nothing falls between the two; what is in both
    # is sent once.
    replayed: set[str] = set()
    resume = last_event_id or last_event_id_query
    if resume:
        for missed in await _replay(engine, user_id, resume):
            if missed.id is not None:
                replayed.add(missed.id)
            yield missed
    expires = caller.session_expires_at
    while True:
        wait = config.stream_heartbeat_s
        if expires is not None:
            left = expires - time.time()
            if left <= 0:
                yield ServerSentEvent(
                    event="session.expired", data={"reason": "the session token has expired"}
                )
                return
            wait = min(wait, left)
        event = await subscription.next(wait)
        if event is None:
            return
        if isinstance(event, Heartbeat):
            if expires is not None and time.time() >= expires:
                continue
            # Also how a closed connection is noticed: writing to it fails.
            yield ServerSentEvent(comment="heartbeat")
            continue
        if event.name == CREATED:
            identifier = event_id(event.data)
            if identifier in replayed:
                continue
            yield ServerSentEvent(event=event.name, data=event.data, id=identifier)
            continue
        yield ServerSentEvent(event=event.name, data=event.data)
