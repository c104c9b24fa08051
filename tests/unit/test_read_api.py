"""The read API's pure parts: cursors, the SQL it builds, inbox events, stream fan-out, and
the OpenAPI document (no database, no broker)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.dialects import postgresql

from herald.auth import AuthSettings
from herald.settings import DatabaseSettings, Settings
from services.inapp_store.api.app import create_app
from services.inapp_store.api.broker import (
    EVENT_NAMES,
    RESYNC,
    Heartbeat,
    InboxBroker,
    StreamEvent,
    Subscription,
)
from services.inapp_store.api.deps import as_utc
from services.inapp_store.api.pagination import Cursor, InvalidCursorError
from services.inapp_store.api.queries import InboxFilter, inbox_statement, unread_count_statement
from services.inapp_store.api.settings import ReadApiSettings
from services.inapp_store.realtime import (
    CHANNEL,
    MAX_PAYLOAD_BYTES,
    InboxEvent,
    Kind,
    created_notify_sql,
    decode_event,
    encode_event,
)

ID = uuid.UUID("7d444840-9dc0-51d8-8b0f-5a2a1f5bc3c1")
WHEN = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)

# --- cursors -----------------------------------------------------------------------------------


def test_cursor_round_trips_to_the_microsecond() -> None:
    cursor = Cursor(WHEN, ID)
    text = cursor.encode()
    assert Cursor.decode(text) == cursor
    # URL-safe and opaque: no padding, nothing a client would need to escape.
    assert text.isascii() and "=" not in text and "+" not in text and "/" not in text


def test_cursor_keeps_the_instant_whatever_the_zone() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=-7)))
    decoded = Cursor.decode(Cursor(local, ID).encode())
    assert decoded.created_at == WHEN
    assert decoded.created_at.tzinfo is not None


def test_cursor_handles_times_before_1970() -> None:
    early = datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)
    assert Cursor.decode(Cursor(early, ID).encode()).created_at == early


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64 at all!",
        "MTo",  # "1:"
        Cursor(WHEN, ID).encode()[:-4],  # truncated
        "Mjox" + Cursor(WHEN, ID).encode()[4:],  # version 2
        "x" * 300,
        "MTphYmM6ZGVm",  # "1:abc:def"
    ],
)
def test_invalid_cursors_are_refused(text: str) -> None:
    with pytest.raises(InvalidCursorError):
        Cursor.decode(text)


def test_naive_query_times_are_read_as_utc() -> None:
    assert as_utc(datetime(2024, 5, 1, 12)) == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert as_utc(WHEN) is WHEN
    assert as_utc(None) is None


# --- SQL ---------------------------------------------------------------------------------------


def sql(statement: Any) -> str:
    compiled = statement.compile(
        dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
    )
    return " ".join(str(compiled).split())


def test_inbox_statement_is_a_keyset_on_the_inbox_index() -> None:
    text = sql(inbox_statement("user-42", InboxFilter(), Cursor(WHEN, ID), 21))
    assert "notification.user_id = 'user-42'" in text
    # The row comparison and the order of ix_notification_inbox.
    assert "(notification.created_at, notification.id) < (" in text
    assert text.endswith("ORDER BY notification.created_at DESC, notification.id DESC LIMIT 21")
    assert "notification.archived_at IS NULL" in text
    assert "is_read" not in text.split("WHERE", 1)[1]


def test_unread_filter_uses_the_partial_index_condition() -> None:
    text = sql(inbox_statement("u", InboxFilter(unread_only=True), None, 5))
    # Exactly the partial index's predicate; "is_read IS false" would not use it.
    assert "notification.is_read = false" in text
    assert "IS false" not in text
    assert "notification.is_read = false" in sql(unread_count_statement("u"))


def test_inbox_filters() -> None:
    filters = InboxFilter(
        event_types=("a.b", "c.d"),
        since=WHEN,
        until=WHEN + timedelta(days=1),
        include_archived=True,
    )
    text = sql(inbox_statement("u", filters, None, 5))
    assert "notification.event_type IN ('a.b', 'c.d')" in text
    assert "notification.created_at >= '2024-05-01 12:30:15.123456+00:00'" in text
    assert "notification.created_at < '2024-05-02 12:30:15.123456+00:00'" in text
    assert "archived_at" not in text.split("WHERE", 1)[1]
    assert "(notification.created_at, notification.id) <" not in text


# --- inbox events ------------------------------------------------------------------------------


def test_inbox_events_round_trip() -> None:
    for event in (
        InboxEvent("public", "user-42", Kind.CREATED, notification_id=str(ID)),
        InboxEvent("t_1", "u", Kind.READ, notification_id=str(ID), at=WHEN.isoformat()),
        InboxEvent("t_1", "u", Kind.READ_ALL, at=WHEN.isoformat(), count=3),
    ):
        payload = encode_event(event)
        assert payload is not None
        assert decode_event(payload) == event


def test_payloads_stay_under_postgres_limit() -> None:
    # Non-ASCII is sent as UTF-8 (not \u escapes, which would take 6 bytes a character).
    long_id = "é" * 3000
    payload = encode_event(InboxEvent("s" * 63, long_id, Kind.READ, str(ID), WHEN.isoformat()))
    assert payload is not None and long_id in payload
    assert len(payload.encode()) <= MAX_PAYLOAD_BYTES < 8000
    assert encode_event(InboxEvent("s", "x" * MAX_PAYLOAD_BYTES, Kind.READ)) is None
    assert encode_event(InboxEvent("s", "é" * 4000, Kind.READ)) is None


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json",
        "[]",
        json.dumps({"schema": "s", "user_id": "u"}),
        json.dumps({"schema": "s", "user_id": "u", "kind": "exploded"}),
        json.dumps({"schema": 1, "user_id": "u", "kind": "read"}),
        json.dumps({"schema": "s", "user_id": "u", "kind": "read", "count": "3"}),
        json.dumps({"schema": "s", "user_id": "u", "kind": "read", "count": True}),
    ],
)
def test_foreign_payloads_are_ignored(payload: str) -> None:
    assert decode_event(payload) is None


def test_created_notify_sql_names_the_channel_and_skips_huge_payloads() -> None:
    text = created_notify_sql("new_rows")
    assert f"pg_notify('{CHANNEL}'" in text
    assert "current_schema()" in text
    assert f"octet_length(payload) <= {MAX_PAYLOAD_BYTES}" in text
    assert "FROM new_rows" in text


# --- stream fan-out ----------------------------------------------------------------------------


async def test_subscription_queues_events_and_heartbeats() -> None:
    subscription = Subscription("u", maxsize=3)
    assert isinstance(await subscription.next(0.01), Heartbeat)
    event = StreamEvent("notification.read", {"id": str(ID)})
    subscription.deliver(event)
    assert await subscription.next(1) == event
    subscription.close()
    assert await subscription.next(1) is None


async def test_a_slow_reader_gets_one_resync_instead_of_the_backlog() -> None:
    subscription = Subscription("u", maxsize=3)
    for n in range(10):
        subscription.deliver(StreamEvent("notification.read", {"n": n}))
    first = await subscription.next(1)
    assert isinstance(first, StreamEvent) and first.name == RESYNC
    received = []
    while not isinstance(event := await subscription.next(0.01), Heartbeat):
        received.append(event)
    # After the resync: only what came after the overflow.
    assert len(received) <= 3
    subscription.close()  # never blocks, even when full
    for n in range(3):
        subscription.deliver(StreamEvent("x", {"n": n}))
    subscription.close()


async def test_broker_subscriptions_and_shutdown() -> None:
    broker = InboxBroker(DatabaseSettings(), lambda ids: {})
    with broker.subscribe("u") as one, broker.subscribe("u") as two:
        assert broker.streams_of("u") == 2
        broker.close_streams()
        assert await one.next(1) is None and await two.next(1) is None
        # New streams during shutdown end at once.
        with broker.subscribe("v") as late:
            assert await late.next(1) is None
    assert broker.streams_of("u") == 0
    assert broker.closing


def test_stream_events_by_kind() -> None:
    row = {"id": str(ID), "user_id": "u", "title": "hi"}
    created = InboxEvent("s", "u", Kind.CREATED, notification_id=str(ID))
    assert InboxBroker._stream_event(created, {ID: row}) == StreamEvent("notification.created", row)
    # Missing, or another user's row whatever the payload claims: nothing is sent.
    assert InboxBroker._stream_event(created, {}) is None
    spoofed = InboxEvent("s", "mallory", Kind.CREATED, notification_id=str(ID))
    assert InboxBroker._stream_event(spoofed, {ID: row}) is None
    read = InboxEvent("s", "u", Kind.READ, notification_id=str(ID), at="2024-05-01T00:00:00Z")
    assert InboxBroker._stream_event(read, {}) == StreamEvent(
        "notification.read", {"id": str(ID), "read_at": "2024-05-01T00:00:00Z"}
    )
    archived = InboxEvent("s", "u", Kind.ARCHIVED, notification_id=str(ID), at="t")
    assert InboxBroker._stream_event(archived, {}) == StreamEvent(
        "notification.archived", {"id": str(ID), "archived_at": "t"}
    )
    read_all = InboxEvent("s", "u", Kind.READ_ALL, at="t", count=4)
    assert InboxBroker._stream_event(read_all, {}) == StreamEvent(
        "notifications.read_all", {"read_at": "t", "count": 4}
    )
    assert set(EVENT_NAMES) == set(Kind)


async def test_the_broker_pushes_only_its_schemas_events_of_subscribed_users() -> None:
    fetched: list[list[uuid.UUID]] = []

    def fetch(ids: Any) -> dict[uuid.UUID, dict[str, str]]:
        fetched.append(list(ids))
        return {i: {"id": str(i), "user_id": "u"} for i in ids}

    broker = InboxBroker(DatabaseSettings(database_schema="mine"), fetch)
    # The dispatcher alone (no database): feed payloads as the listener would.
    broker._inbound = asyncio.Queue()
    dispatcher = asyncio.create_task(broker._dispatch())
    try:
        with broker.subscribe("u") as subscription:
            for event in (
                InboxEvent("other", "u", Kind.CREATED, notification_id=str(ID)),
                InboxEvent("mine", "nobody", Kind.CREATED, notification_id=str(uuid.uuid4())),
                InboxEvent("mine", "u", Kind.CREATED, notification_id=str(ID)),
                InboxEvent("mine", "u", Kind.READ, notification_id=str(ID), at="t"),
            ):
                payload = encode_event(event)
                assert payload is not None
                broker._on_payload(payload)
            first = await subscription.next(2)
            second = await subscription.next(2)
        assert isinstance(first, StreamEvent) and first.name == "notification.created"
        assert isinstance(second, StreamEvent) and second.name == "notification.read"
        assert fetched == [[ID]]  # one read, for the subscribed user's new notification only
    finally:
        dispatcher.cancel()


# --- the application ---------------------------------------------------------------------------


def test_openapi_documents_every_endpoint() -> None:
    app = create_app(
        Settings(), ReadApiSettings(), AuthSettings(user_token_secret=SecretStr("x" * 32))
    )
    document = app.openapi()
    paths = document["paths"]
    user_routes = {path: ops for path, ops in paths.items() if path.startswith("/v1/users/")}
    assert set(user_routes) == {
        "/v1/users/{user_id}/notifications",
        "/v1/users/{user_id}/notifications/unread-count",
        "/v1/users/{user_id}/notifications/read-all",
        "/v1/users/{user_id}/notifications/{notification_id}",
        "/v1/users/{user_id}/notifications/{notification_id}/read",
        "/v1/users/{user_id}/notifications/{notification_id}/unread",
        "/v1/users/{user_id}/notifications/{notification_id}/archive",
        "/v1/users/{user_id}/notifications/{notification_id}/unarchive",
        "/v1/users/{user_id}/stream",
        "/v1/users/{user_id}/token",
        "/v1/users/{user_id}/session",
        "/v1/users/{user_id}/preferences",
    }
    assert {"/healthz", "/readyz"} <= set(paths)
    for path, operations in user_routes.items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert operation.get("security"), f"{where} documents no credentials"
            assert {"401", "422", "429"} <= set(operation["responses"]), where
            assert operation.get("summary") and operation.get("description"), where
            responses = operation["responses"]
            success = (responses.get("200") or responses["201"])["content"]
            assert success, f"{where} has no response model"
    stream = paths["/v1/users/{user_id}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    schemas = document["components"]["schemas"]
    for model in ("InboxPage", "NotificationOut", "NotificationDetail", "UnreadCount"):
        assert schemas[model].get("examples"), f"{model} has no example"
    assert "ProblemDetail" in schemas
