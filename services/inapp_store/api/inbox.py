"""``/v1/users/{user_id}/notifications``: a user's inbox, unread count, and mark-all-read.

Pagination is by cursor (:mod:`services.inapp_store.api.pagination`): pass the page's
``next_cursor`` back as ``?cursor=`` with the same filters; a page neither repeats nor skips
notifications because others arrived or were read in between.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AfterValidator, BeforeValidator, Field

from herald.auth import user_or_key_with
from herald.webapi import Problem, iso_8601_only, problem_responses
from services.inapp_store.api import queries
from services.inapp_store.api.deps import Db, Schema, UserPath, as_utc
from services.inapp_store.api.models import InboxPage, NotificationOut, ReadAllResult, UnreadCount
from services.inapp_store.api.pagination import MAX_CURSOR_LENGTH, Cursor, InvalidCursorError
from services.ingest.validation import EVENT_TYPE_CODE

#: Page size when ``limit`` is not given, and the largest allowed.
DEFAULT_LIMIT = 20
MAX_LIMIT = 100

router = APIRouter(
    prefix="/v1/users/{user_id}/notifications",
    tags=["inbox"],
    responses=problem_responses(401, 403, 422, 429, 503),
)

UtcTime = Annotated[datetime | None, BeforeValidator(iso_8601_only), AfterValidator(as_utc)]
#: An event type code, as the ingest API accepts them (PostgreSQL could not even compare some
#: other strings, e.g. with NUL characters).
EventTypeFilter = Annotated[
    str, Field(pattern=f"^{EVENT_TYPE_CODE.pattern}$", examples=["comment.created"])
]


@router.get(
    "",
    response_model=InboxPage,
    summary="List the inbox, newest first",
    dependencies=[user_or_key_with("inbox:read")],
)
def list_inbox(
    user_id: UserPath,
    conn: Db,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(
            max_length=MAX_CURSOR_LENGTH,
            description="The previous page's next_cursor; omit for the first page.",
        ),
    ] = None,
    unread: Annotated[bool, Query(description="Only unread notifications.")] = False,
    event_type: Annotated[
        list[EventTypeFilter] | None,
        Query(description="Only these event types (repeat the parameter for several)."),
    ] = None,
    since: Annotated[
        UtcTime,
        Query(description="Only those created at or after this time (ISO 8601; UTC if no zone)."),
    ] = None,
    until: Annotated[
        UtcTime, Query(description="Only those created before this time (ISO 8601).")
    ] = None,
    include_archived: Annotated[
        bool, Query(description="Include archived notifications (left out by default).")
    ] = False,
) -> InboxPage:
    """The user's notifications, newest first, ``limit`` at a time (default 20, at most 100).

    Filters combine: ``unread=true``, ``event_type=`` (repeatable), ``since=``/``until=``
    (a time range on ``created_at``), ``include_archived=true``.
    """
    try:
        after = Cursor.decode(cursor) if cursor is not None else None
    except InvalidCursorError as exc:
        raise Problem(
            422, "Request is not valid", f"cursor: {exc}", kind="invalid-cursor"
        ) from None
    filters = queries.InboxFilter(
        unread_only=unread,
        event_types=tuple(event_type or ()),
        since=since,
        until=until,
        include_archived=include_archived,
    )
    rows, next_cursor = queries.inbox_page(conn, user_id, filters, after, limit)
    return InboxPage(
        items=[NotificationOut.model_validate(row) for row in rows],
        next_cursor=next_cursor.encode() if next_cursor else None,
    )


@router.get(
    "/unread-count",
    response_model=UnreadCount,
    summary="Count unread notifications",
    dependencies=[user_or_key_with("inbox:read")],
)
def get_unread_count(user_id: UserPath, conn: Db) -> UnreadCount:
    """How many notifications the user has not read (archived ones are not counted): the
    number on the bell icon."""
    return UnreadCount(user_id=user_id, unread=queries.unread_count(conn, user_id))


@router.post(
    "/read-all",
    response_model=ReadAllResult,
    summary="Mark every notification read",
    dependencies=[user_or_key_with("inbox:write")],
)
def read_all(
    user_id: UserPath,
    conn: Db,
    schema: Schema,
    until: Annotated[
        UtcTime,
        Query(
            description="Only those created before this time, e.g. the newest one the user "
            "has seen, so that one arriving meanwhile stays unread."
        ),
    ] = None,
) -> ReadAllResult:
    """Mark the user's unread notifications read; the user's open streams get one
    ``notifications.read_all`` event. Idempotent: a repeat changes nothing (``updated: 0``)."""
    return ReadAllResult(
        user_id=user_id, updated=queries.mark_all_read(conn, schema, user_id, until)
    )
