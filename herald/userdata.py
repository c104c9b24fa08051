"""Everything Herald keeps about one user in PostgreSQL: erased (:func:`erase_rows`) or
exported as one JSON document (:func:`export_chunks`).

What a user leaves in PostgreSQL:

- ``user_account`` (contact data), ``notification_preference``, ``user_event_preference``
  and ``channel_endpoint`` (keyed by user id, the last three cascade from the first);
- ``notification`` (the inbox), ``notification_delivery`` (by user id, also ``skipped``
  deliveries whose notification was never made), ``held_delivery`` (quiet hours) and
  ``known_device`` (by user id);
- ``delivery_attempt`` and ``send_journal``, keyed by delivery id only. Delivery ids are
  ``uuid5(notification_id, channel)`` (herald.identity), so they are derived from every
  notification id the user has, for every channel: a journal row whose delivery's status never
  reached PostgreSQL is found too.

``idempotency_key`` rows belong to the API key that sent an event, not to a user (they hold a
hash of the request and its response, which names event ids only); they expire on their own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, time
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final

from sqlalchemy import Connection, text

from herald.channels import CHANNELS
from herald.identity import delivery_id

#: Notification ids per statement when deriving delivery ids (times five channels).
ID_CHUNK: Final = 1000
#: Notifications per page of an export (each page: three indexed queries).
EXPORT_PAGE: Final = 500

#: Tables with a ``user_id`` column, children before parents (user_account last).
_USER_TABLES: Final = (
    "notification_delivery",
    "notification",
    "held_delivery",
    "known_device",
    "user_event_preference",
    "notification_preference",
    "channel_endpoint",
)


#: The user's delivery ids as stored (derived ones are added by :func:`delivery_ids`).
_STORED_DELIVERIES: Final = (
    "SELECT id FROM notification_delivery WHERE user_id = :u"
    " UNION SELECT delivery_id FROM held_delivery WHERE user_id = :u"
)


def _notification_ids(connection: Connection, user_id: str) -> list[str]:
    rows = connection.execute(
        text(
            "SELECT id FROM notification WHERE user_id = :u"
            " UNION SELECT notification_id FROM notification_delivery WHERE user_id = :u"
            " UNION SELECT notification_id FROM held_delivery WHERE user_id = :u"
        ),
        {"u": user_id},
    )
    return [str(row[0]) for row in rows]


def delivery_ids(notification_ids: Sequence[str]) -> list[str]:
    """Every delivery id these notifications can have (one per channel)."""
    return [delivery_id(nid, channel) for nid in notification_ids for channel in CHANNELS]


def erase_rows(connection: Connection, user_id: str) -> dict[str, int]:
    """Delete every row about ``user_id`` in the connection's current transaction; the number
    of rows deleted per table (tables with none left out). The caller commits."""
    counts: dict[str, int] = {}

    def count(table: str, deleted: int) -> None:
        if deleted:
            counts[table] = counts.get(table, 0) + deleted

    for table in ("delivery_attempt", "send_journal"):
        result = connection.execute(
            text(f"DELETE FROM {table} WHERE delivery_id IN ({_STORED_DELIVERIES})"),
            {"u": user_id},
        )
        count(table, result.rowcount)
    nids = _notification_ids(connection, user_id)
    for start in range(0, len(nids), ID_CHUNK):
        ids = delivery_ids(nids[start : start + ID_CHUNK])
        for table in ("delivery_attempt", "send_journal"):
            result = connection.execute(
                text(f"DELETE FROM {table} WHERE delivery_id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": ids},
            )
            count(table, result.rowcount)
    for table in (*_USER_TABLES, "user_account"):
        column = "id" if table == "user_account" else "user_id"
        result = connection.execute(
            text(f"DELETE FROM {table} WHERE {column} = :u"), {"u": user_id}
        )
        count(table, result.rowcount)
    return counts


def remaining_rows(connection: Connection, user_id: str) -> dict[str, int]:
    """Rows about ``user_id`` still in each table (tables with none left out): what
    :func:`erase_rows` deletes, counted. Attempt and journal rows carry no user id and are
    found through the user's notifications, so once those are deleted they are no longer
    seen: to check an erasure, take the ids before it (tests/integration/test_lifecycle.py)."""
    nids = _notification_ids(connection, user_id)
    counts: dict[str, int] = {}
    ids = delivery_ids(nids)
    for table in ("delivery_attempt", "send_journal"):
        found = connection.execute(
            text(
                f"SELECT count(*) FROM {table} WHERE delivery_id = ANY(CAST(:ids AS uuid[]))"
                f" OR delivery_id IN ({_STORED_DELIVERIES})"
            ),
            {"ids": ids, "u": user_id},
        ).scalar_one()
        if found:
            counts[table] = found
    for table in (*_USER_TABLES, "user_account"):
        column = "id" if table == "user_account" else "user_id"
        found = connection.execute(
            text(f"SELECT count(*) FROM {table} WHERE {column} = :u"), {"u": user_id}
        ).scalar_one()
        if found:
            counts[table] = found
    return counts


# --- export -------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | IPv4Address | IPv6Address):
        return str(value)
    if isinstance(value, bytes):
        return None  # held deliveries' encoded payload: its fields are exported separately
    raise TypeError(f"{type(value).__name__} is not exported")


def to_json(value: Any) -> str:
    """``value`` as compact JSON (datetimes ISO 8601, uuids and addresses as text)."""
    return json.dumps(value, default=_plain, ensure_ascii=False, separators=(",", ":"))


_NOTIFICATIONS_PAGE = text(
    "SELECT id, event_id, event_type, title, message, metadata, is_read, read_at,"
    " archived_at, created_at FROM notification WHERE user_id = :u"
    " AND (CAST(:after_at AS timestamptz) IS NULL OR (created_at, id) < (:after_at, :after_id))"
    " ORDER BY created_at DESC, id DESC LIMIT :n"
)
_DELIVERY_COLUMNS = (
    "id AS delivery_id, notification_id, channel, status, provider, provider_message_id,"
    " attempted_at, delivered_at, retry_count, error_class, error_message, created_at,"
    " updated_at"
)
_DELIVERIES = text(
    f"SELECT {_DELIVERY_COLUMNS} FROM notification_delivery"
    " WHERE notification_id = ANY(CAST(:ids AS uuid[])) ORDER BY created_at, channel"
)
_ORPHAN_DELIVERIES = text(
    f"SELECT {_DELIVERY_COLUMNS} FROM notification_delivery d WHERE d.user_id = :u"
    " AND NOT EXISTS (SELECT 1 FROM notification n WHERE n.id = d.notification_id)"
    " ORDER BY created_at, id"
)
_ATTEMPTS = text(
    "SELECT delivery_id, attempt, status, provider, error_class, error_message, occurred_at"
    " FROM delivery_attempt WHERE delivery_id = ANY(CAST(:ids AS uuid[])) ORDER BY occurred_at, id"
)


def _with_attempts(connection: Connection, deliveries: list[dict[str, Any]]) -> None:
    """Give each delivery its ``attempts`` (oldest first)."""
    by_id = {str(d["delivery_id"]): d for d in deliveries}
    for d in deliveries:
        d["attempts"] = []
    if not by_id:
        return
    for row in connection.execute(_ATTEMPTS, {"ids": list(by_id)}).mappings():
        attempt = dict(row)
        by_id[str(attempt.pop("delivery_id"))]["attempts"].append(attempt)


def _rows(connection: Connection, sql: str, user_id: str) -> list[dict[str, Any]]:
    return [dict(row) for row in connection.execute(text(sql), {"u": user_id}).mappings()]


def export_chunks(
    connection: Connection,
    user_id: str,
    head: Mapping[str, Any],
    *,
    page: int = EXPORT_PAGE,
) -> Iterator[str]:
    """The user's export as pieces of one JSON object: ``head`` (profile, preferences, made by
    the caller), then endpoints (without secrets), known devices, held deliveries, every
    notification newest first with its deliveries and their attempts, and the deliveries that
    have no notification (every channel ``skipped``).

    Notifications are read a page at a time (keyset on the inbox index), so memory does not
    grow with their number; run it in one REPEATABLE READ transaction for a consistent
    snapshot."""
    yield to_json(dict(head))[:-1]  # the object stays open
    endpoints = _rows(
        connection,
        "SELECT kind, url, enabled, disabled_reason, disabled_at, created_at, updated_at,"
        " secret IS NOT NULL AS has_secret FROM channel_endpoint WHERE user_id = :u"
        " ORDER BY kind",
        user_id,
    )
    devices = _rows(
        connection,
        "SELECT device_id, first_seen_at, last_seen_at, user_agent, ip FROM known_device"
        " WHERE user_id = :u ORDER BY first_seen_at, device_id",
        user_id,
    )
    held = _rows(
        connection,
        "SELECT delivery_id, notification_id, channel, release_at, created_at"
        " FROM held_delivery WHERE user_id = :u ORDER BY release_at, delivery_id",
        user_id,
    )
    yield f',"endpoints":{to_json(endpoints)}'
    yield f',"known_devices":{to_json(devices)}'
    yield f',"held_deliveries":{to_json(held)}'
    yield ',"notifications":['
    first = True
    after: tuple[Any, Any] = (None, None)
    while True:
        notifications = [
            dict(row)
            for row in connection.execute(
                _NOTIFICATIONS_PAGE,
                {"u": user_id, "after_at": after[0], "after_id": after[1], "n": page},
            ).mappings()
        ]
        if not notifications:
            break
        ids = [str(n["id"]) for n in notifications]
        deliveries = [dict(r) for r in connection.execute(_DELIVERIES, {"ids": ids}).mappings()]
        _with_attempts(connection, deliveries)
        by_notification: dict[str, list[dict[str, Any]]] = {nid: [] for nid in ids}
        for d in deliveries:
            by_notification[str(d.pop("notification_id"))].append(d)
        for n in notifications:
            n["deliveries"] = by_notification[str(n["id"])]
            yield ("" if first else ",") + to_json(n)
            first = False
        if len(notifications) < page:
            break
        after = (notifications[-1]["created_at"], notifications[-1]["id"])
    yield "]"
    orphans = [dict(r) for r in connection.execute(_ORPHAN_DELIVERIES, {"u": user_id}).mappings()]
    _with_attempts(connection, orphans)
    yield f',"deliveries_without_notification":{to_json(orphans)}'
    yield "}"
