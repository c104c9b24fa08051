"""The read API's SQL: inbox pages, counts, one notification's history, read-state changes.

Statements are built with SQLAlchemy Core from the models (:mod:`herald.db.models`); every one
is scoped by ``user_id``, so a notification id of another user is simply not found. The
builders (``*_statement``) are pure and unit-tested; the functions taking a ``Connection`` run
them. Read-state changes ``NOTIFY`` the real-time streams in their own transaction
(:mod:`services.inapp_store.realtime`), so a stream hears of a change exactly when it commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydantic import TypeAdapter
from sqlalchemy import Connection, RowMapping, Select, func, null, select, true, tuple_, update
from sqlalchemy.sql.elements import ColumnElement

from herald.db.models import UNREAD, DeliveryAttempt, Notification, NotificationDelivery
from services.inapp_store.api.pagination import Cursor
from services.inapp_store.realtime import CHANNEL, InboxEvent, Kind, encode_event

#: The columns of an inbox item, named as the API names them.
NOTIFICATION_COLUMNS = (
    Notification.id,
    Notification.event_id,
    Notification.user_id,
    Notification.event_type,
    Notification.title,
    Notification.message,
    Notification.meta.label("metadata"),
    Notification.is_read,
    Notification.read_at,
    Notification.archived_at,
    Notification.created_at,
)

_DELIVERY_COLUMNS = (
    NotificationDelivery.id.label("delivery_id"),
    NotificationDelivery.channel,
    NotificationDelivery.status,
    NotificationDelivery.attempted_at,
    NotificationDelivery.delivered_at,
    NotificationDelivery.retry_count,
    NotificationDelivery.error_class,
    NotificationDelivery.error_message,
    NotificationDelivery.provider_message_id,
    NotificationDelivery.provider,
    NotificationDelivery.updated_at,
)

_ATTEMPT_COLUMNS = (
    DeliveryAttempt.delivery_id,
    DeliveryAttempt.attempt,
    DeliveryAttempt.status,
    DeliveryAttempt.error_class,
    DeliveryAttempt.error_message,
    DeliveryAttempt.occurred_at,
    DeliveryAttempt.provider,
)

#: A result row, by column name.
Row = RowMapping


@dataclass(frozen=True)
class InboxFilter:
    """Which notifications an inbox page shows."""

    unread_only: bool = False
    #: Event type codes; empty means every type.
    event_types: tuple[str, ...] = ()
    #: Created at or after this moment.
    since: datetime | None = None
    #: Created before this moment.
    until: datetime | None = None
    include_archived: bool = False


def inbox_statement(
    user_id: str, filters: InboxFilter, after: Cursor | None, limit: int
) -> Select[Any]:
    """One inbox page: newest first, strictly after ``after``, at most ``limit`` rows.

    The ORDER BY and the keyset condition match ``ix_notification_inbox`` (user_id, created_at
    DESC, id DESC); with ``unread_only`` the condition is the models' ``UNREAD`` expression, the
    one the partial ``ix_notification_unread`` index is declared with, so PostgreSQL can use it.
    """
    statement = select(*NOTIFICATION_COLUMNS).where(Notification.user_id == user_id)
    if filters.unread_only:
        statement = statement.where(UNREAD)
    if not filters.include_archived:
        statement = statement.where(Notification.archived_at.is_(None))
    if filters.event_types:
        statement = statement.where(Notification.event_type.in_(filters.event_types))
    if filters.since is not None:
        statement = statement.where(Notification.created_at >= filters.since)
    if filters.until is not None:
        statement = statement.where(Notification.created_at < filters.until)
    if after is not None:
        # A row comparison: PostgreSQL turns it into one index range condition.
        statement = statement.where(
            tuple_(Notification.created_at, Notification.id) < tuple_(after.created_at, after.id)
        )
    return statement.order_by(Notification.created_at.desc(), Notification.id.desc()).limit(limit)


def inbox_page(
    conn: Connection, user_id: str, filters: InboxFilter, after: Cursor | None, limit: int
) -> tuple[list[Row], Cursor | None]:
    """A page of rows and the cursor of the next page (None on the last page)."""
    # One row more than asked tells whether there is a next page without a count.
    rows = list(conn.execute(inbox_statement(user_id, filters, after, limit + 1)).mappings())
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], Cursor(last["created_at"], last["id"])


def notifications_after(conn: Connection, user_id: str, after: Cursor, limit: int) -> list[Row]:
    """``user_id``'s notifications created strictly after ``after`` in inbox order (archived
    ones too), oldest first, at most ``limit``: what a stream missed since its last event."""
    statement = (
        select(*NOTIFICATION_COLUMNS)
        .where(
            Notification.user_id == user_id,
            tuple_(Notification.created_at, Notification.id) > tuple_(after.created_at, after.id),
        )
        .order_by(Notification.created_at.asc(), Notification.id.asc())
        .limit(limit)
    )
    return list(conn.execute(statement).mappings())


def unread_count_statement(user_id: str) -> Select[Any]:
    """How many unread, unarchived notifications ``user_id`` has (uses the partial index)."""
    return (
        select(func.count())
        .select_from(Notification)
        .where(Notification.user_id == user_id, UNREAD, Notification.archived_at.is_(None))
    )


def unread_count(conn: Connection, user_id: str) -> int:
    """The unread count of :func:`unread_count_statement`."""
    return int(conn.execute(unread_count_statement(user_id)).scalar_one())


def notification_statement(user_id: str, notification_id: uuid.UUID) -> Select[Any]:
    """The notification ``notification_id`` if it is ``user_id``'s."""
    return select(*NOTIFICATION_COLUMNS).where(
        Notification.id == notification_id, Notification.user_id == user_id
    )


def get_notification(conn: Connection, user_id: str, notification_id: uuid.UUID) -> Row | None:
    """The row of :func:`notification_statement`, or None."""
    return conn.execute(notification_statement(user_id, notification_id)).mappings().first()


def notifications_by_id(conn: Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Row]:
    """Notifications by id (one query for a batch of ids; the stream's fetch)."""
    if not ids:
        return {}
    rows = conn.execute(select(*NOTIFICATION_COLUMNS).where(Notification.id.in_(ids))).mappings()
    return {row["id"]: row for row in rows}


def delivery_history(
    conn: Connection, user_id: str, notification_id: uuid.UUID
) -> list[dict[str, Any]]:
    """Every channel's delivery row of a notification (by channel), each with its attempts
    (oldest first) under ``attempts``. Two queries, whatever the number of channels."""
    deliveries = [
        dict(row)
        for row in conn.execute(
            select(*_DELIVERY_COLUMNS)
            .where(
                NotificationDelivery.notification_id == notification_id,
                NotificationDelivery.user_id == user_id,
            )
            .order_by(NotificationDelivery.channel)
        ).mappings()
    ]
    if not deliveries:
        return []
    attempts: dict[uuid.UUID, list[Row]] = {d["delivery_id"]: [] for d in deliveries}
    for row in conn.execute(
        select(*_ATTEMPT_COLUMNS)
        .where(DeliveryAttempt.delivery_id.in_(list(attempts)))
        .order_by(DeliveryAttempt.attempt, DeliveryAttempt.occurred_at, DeliveryAttempt.id)
    ).mappings():
        attempts[row["delivery_id"]].append(row)
    for delivery in deliveries:
        delivery["attempts"] = attempts[delivery["delivery_id"]]
    return deliveries


def _notify(conn: Connection, event: InboxEvent) -> None:
    payload = encode_event(event)
    if payload is not None:
        conn.execute(select(func.pg_notify(CHANNEL, payload)))


#: Times in events are written exactly as the API's JSON bodies write them.
_TIME: Final = TypeAdapter(datetime)


def _iso(moment: datetime | None) -> str | None:
    return _TIME.dump_python(moment, mode="json") if moment is not None else None


def set_read_state(
    conn: Connection,
    schema: str,
    user_id: str,
    notification_id: uuid.UUID,
    *,
    read: bool | None = None,
    archived: bool | None = None,
) -> Row | None:
    """Mark a notification read or unread, or archive or unarchive it; None if it is not the
    user's. Commits. Notifies the streams only when something changed, once per change, even
    when two requests race (the second one's UPDATE matches no row and changes nothing)."""
    if (read is None) == (archived is None):
        raise ValueError("change exactly one of read, archived")
    if read is not None:
        changed_when: ColumnElement[bool] = Notification.is_read.is_not(read)
        values: dict[str, Any] = {"is_read": read, "read_at": func.now() if read else null()}
        kind = Kind.READ if read else Kind.UNREAD
    else:
        column = Notification.archived_at
        changed_when = column.is_(None) if archived else column.is_not(None)
        values = {"archived_at": func.now() if archived else null()}
        kind = Kind.ARCHIVED if archived else Kind.UNARCHIVED
    with conn.begin():
        row = (
            conn.execute(
                update(Notification)
                .where(Notification.id == notification_id, Notification.user_id == user_id)
                .where(changed_when)
                .values(**values)
                .returning(*NOTIFICATION_COLUMNS)
            )
            .mappings()
            .first()
        )
        if row is None:
            # Nothing changed: already in that state, or not this user's notification.
            return get_notification(conn, user_id, notification_id)
        at = row["read_at"] if read is not None else row["archived_at"]
        _notify(
            conn,
            InboxEvent(schema, user_id, kind, notification_id=str(notification_id), at=_iso(at)),
        )
        return row


def mark_all_read(conn: Connection, schema: str, user_id: str, until: datetime | None) -> int:
    """Mark every unread notification of the user read (those created before ``until`` if
    given); how many changed. Commits; one stream event for the lot."""
    statement = (
        update(Notification)
        .where(Notification.user_id == user_id, UNREAD)
        .values(is_read=true(), read_at=func.now())
    )
    if until is not None:
        statement = statement.where(Notification.created_at < until)
    with conn.begin():
        changed = conn.execute(statement).rowcount
        if changed:
            # now() is the transaction's time: the read_at every changed row got.
            read_at = conn.execute(select(func.now())).scalar_one()
            _notify(
                conn,
                InboxEvent(schema, user_id, Kind.READ_ALL, at=_iso(read_at), count=changed),
            )
    return changed
