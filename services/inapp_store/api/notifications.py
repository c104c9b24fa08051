"""``/v1/users/{user_id}/notifications/{notification_id}``: one notification, its delivery
status per channel, and its read and archive state.

Archiving is ``POST .../archive`` (undone by ``POST .../unarchive``), not ``DELETE``: an
archived notification leaves the inbox but keeps its delivery history, which support and
audits need; nothing in this API deletes.

A notification id that is not the user's is ``404``, exactly like one that does not exist.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from sqlalchemy import Connection

from herald.auth import user_or_key_with
from herald.webapi import Problem, problem_responses
from services.inapp_store.api import queries
from services.inapp_store.api.deps import Db, NotificationPath, Schema, UserPath
from services.inapp_store.api.models import NotificationDetail, NotificationOut

router = APIRouter(
    prefix="/v1/users/{user_id}/notifications/{notification_id}",
    tags=["notifications"],
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)


def _not_found(notification_id: object) -> Problem:
    return Problem(
        404,
        "Not Found",
        f"no notification {notification_id} in this user's inbox",
        kind="notification-not-found",
    )


@router.get(
    "",
    response_model=NotificationDetail,
    summary="A notification and its deliveries",
    dependencies=[user_or_key_with("inbox:read")],
)
def get_notification(
    user_id: UserPath, notification_id: NotificationPath, conn: Db
) -> NotificationDetail:
    """The notification, with its delivery on every channel (latest status, error, provider
    id) and each delivery's attempt history, oldest first."""
    row = queries.get_notification(conn, user_id, notification_id)
    if row is None:
        raise _not_found(notification_id)
    deliveries = queries.delivery_history(conn, user_id, notification_id)
    return NotificationDetail.model_validate({**row, "deliveries": deliveries})


def _change(
    conn: Connection,
    schema: str,
    user_id: str,
    notification_id: uuid.UUID,
    *,
    read: bool | None = None,
    archived: bool | None = None,
) -> NotificationOut:
    row = queries.set_read_state(
        conn, schema, user_id, notification_id, read=read, archived=archived
    )
    if row is None:
        raise _not_found(notification_id)
    return NotificationOut.model_validate(row)


@router.post(
    "/read",
    response_model=NotificationOut,
    summary="Mark read",
    dependencies=[user_or_key_with("inbox:write")],
)
def mark_read(
    user_id: UserPath, notification_id: NotificationPath, conn: Db, schema: Schema
) -> NotificationOut:
    """Mark the notification read (``read_at`` is set). Idempotent; the user's open streams
    get ``notification.read`` when it changes."""
    return _change(conn, schema, user_id, notification_id, read=True)


@router.post(
    "/unread",
    response_model=NotificationOut,
    summary="Mark unread",
    dependencies=[user_or_key_with("inbox:write")],
)
def mark_unread(
    user_id: UserPath, notification_id: NotificationPath, conn: Db, schema: Schema
) -> NotificationOut:
    """Mark the notification unread again (``read_at`` is cleared). Idempotent; streams get
    ``notification.unread`` when it changes."""
    return _change(conn, schema, user_id, notification_id, read=False)


@router.post(
    "/archive",
    response_model=NotificationOut,
    summary="Archive",
    dependencies=[user_or_key_with("inbox:write")],
)
def archive(
    user_id: UserPath, notification_id: NotificationPath, conn: Db, schema: Schema
) -> NotificationOut:
    """Take the notification out of the inbox (and the unread count); it stays readable here
    and with ``include_archived=true``. Idempotent; streams get ``notification.archived``."""
    return _change(conn, schema, user_id, notification_id, archived=True)


@router.post(
    "/unarchive",
    response_model=NotificationOut,
    summary="Unarchive",
    dependencies=[user_or_key_with("inbox:write")],
)
def unarchive(
    user_id: UserPath, notification_id: NotificationPath, conn: Db, schema: Schema
) -> NotificationOut:
    """Put an archived notification back in the inbox. Idempotent; streams get
    ``notification.unarchived``."""
    return _change(conn, schema, user_id, notification_id, archived=False)
