"""Inbox events over PostgreSQL ``LISTEN``/``NOTIFY``: what changed in whose inbox.

Writers ``NOTIFY`` on the channel :data:`CHANNEL` inside the transaction that makes the change,
so an event is delivered exactly when (and only if) the change commits:

- the in-app store sink, for each *new* inbox row of a batch (``created``; see
  :func:`created_notify_sql`);
- the read API, for each read-state change it makes (``read``, ``unread``, ``read_all``,
  ``archived``, ``unarchived``; see :func:`encode_event`).

Every read API process ``LISTEN``s on one connection and pushes the events of users with an
open stream to them (``services.inapp_store.api.broker``). ``NOTIFY`` is database-wide, so the
payload names the schema the change was made in; a listener ignores other schemas' events
(tests run side by side in separate schemas, and so may several Herald deployments).

Payload: a JSON object ``{"schema", "user_id", "kind", "notification_id", "at", "count"}``
(the last three may be null). PostgreSQL refuses payloads of 8000 bytes or more, failing the
whole transaction, so an event that would not fit (only a user id of thousands of characters
can make it so) is not sent: that user's streams miss it, the inbox does not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Final

#: The ``LISTEN``/``NOTIFY`` channel of inbox events.
CHANNEL: Final = "herald_inbox"
#: Longest payload PostgreSQL accepts, in bytes (its limit is "shorter than 8000").
MAX_PAYLOAD_BYTES: Final = 7999


class Kind(StrEnum):
    """What happened to a user's inbox."""

    CREATED = "created"
    READ = "read"
    UNREAD = "unread"
    READ_ALL = "read_all"
    ARCHIVED = "archived"
    UNARCHIVED = "unarchived"


@dataclass(frozen=True)
class InboxEvent:
    """One change to one user's inbox."""

    schema: str
    user_id: str
    kind: Kind
    #: The notification concerned (None for ``read_all``).
    notification_id: str | None = None
    #: When it happened (ISO 8601), e.g. the new ``read_at``.
    at: str | None = None
    #: How many notifications changed (``read_all``).
    count: int | None = None


def encode_event(event: InboxEvent) -> str | None:
    """The ``NOTIFY`` payload of ``event``; None if it would not fit (a huge user id)."""
    payload = json.dumps(asdict(event), separators=(",", ":"), ensure_ascii=False)
    return payload if len(payload.encode("utf-8")) <= MAX_PAYLOAD_BYTES else None


def decode_event(payload: str) -> InboxEvent | None:
    """The event in a ``NOTIFY`` payload, or None if it is not one (never raises)."""
    try:
        data = json.loads(payload)
        notification_id = data.get("notification_id")
        at = data.get("at")
        count = data.get("count")
        event = InboxEvent(
            schema=data["schema"],
            user_id=data["user_id"],
            kind=Kind(data["kind"]),
            notification_id=notification_id,
            at=at,
            count=count,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    typed = (
        isinstance(event.schema, str)
        and isinstance(event.user_id, str)
        and isinstance(notification_id, str | None)
        and isinstance(at, str | None)
        and (count is None or (isinstance(count, int) and not isinstance(count, bool)))
    )
    return event if typed else None


def created_notify_sql(rows: str) -> str:
    """SQL notifying ``created`` for each row of ``rows`` (a CTE or table with ``id`` and
    ``user_id`` columns); rows whose payload would be too long are skipped.

    The payload is built in the database (``current_schema()`` is the schema the rows went
    to), so the sink sends no extra data over the wire for it.
    """
    payload = (
        "json_build_object('schema', current_schema(), 'user_id', user_id, "
        f"'kind', '{Kind.CREATED.value}', 'notification_id', id, 'at', NULL, 'count', NULL)::text"
    )
    return (
        f"SELECT pg_notify('{CHANNEL}', payload) FROM (SELECT {payload} AS payload FROM {rows}) "
        f"AS events WHERE octet_length(payload) <= {MAX_PAYLOAD_BYTES}"
    )
