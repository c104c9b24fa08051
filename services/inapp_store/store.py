"""The in-app store's rows, the status precedence, and the SQL that writes a batch.

Everything here except :func:`write_rows` is pure: decoded records in, rows out.

Status precedence
-----------------
A ``notification_delivery`` row holds the *winner* among every status event seen for that
delivery. Status events come from several producers (router, senders, this service) and
replays re-deliver old ones, so their arrival order means little; the winner is therefore the
maximum of a fixed order, and the row ends up the same whatever order the events arrive in:

1. A success (``sent``, ``delivered``) beats every non-success, whatever the attempt numbers.
   A message the provider has accepted cannot be un-sent, and a later attempt after a success
   can only be a duplicate (senders check "already sent" before sending). Among successes,
   ``delivered`` beats ``sent``, then the later attempt wins.
2. Among non-successes the later attempt wins: a retry supersedes the failure that caused it,
   and a DLQ replay (which carries the next ``x-attempt``) revives a ``failed``/``dead``
   delivery, so ``retrying``/``pending`` of attempt 3 replace ``failed`` of attempt 2.
   Within one attempt: ``pending < retrying < skipped < failed < dead``; ``skipped``,
   ``failed`` and ``dead`` are final for their attempt, and a late ``pending`` never
   overwrites anything of its own or a later attempt.
3. Same status and attempt: the earliest ``occurred_at`` stands, so a replayed event (or the
   ``delivered`` event this service re-emits when it replays an in-app request) changes
   nothing.

Attempt numbers below 1 are read as 1 (``retry_count = attempt - 1`` must not be negative).
The same order is written once in Python (:meth:`DeliveryRow.outranks`, used to dedupe a
batch) and rendered from the same tables into SQL (:func:`outranks_sql`, the ``WHERE`` of the
upsert); an integration test checks that the two agree on every pair.

One statement never touches a row twice (PostgreSQL refuses that in ``INSERT ... ON
CONFLICT``): :class:`BatchRows` keeps one row per key, and rows are written sorted by key so
that two instances writing overlapping rows lock them in the same order (no deadlocks).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

import psycopg

from herald import bounds, identity
from herald.db.models import CHANNELS
from herald.errors import PermanentError
from services.inapp_store.realtime import created_notify_sql

#: Statuses meaning the provider (or the inbox) has the message.
SUCCESS_STATUSES: Final = frozenset({"sent", "delivered"})

#: Statuses from lowest to highest precedence within one attempt (see the module docstring).
STATUS_ORDER: Final = ("pending", "retrying", "skipped", "failed", "dead", "sent", "delivered")
#: Rank of each status, from 1 (the same numbers as SQL's ``array_position(STATUS_ORDER, s)``).
STATUS_RANK: Final[Mapping[str, int]] = {status: n for n, status in enumerate(STATUS_ORDER, 1)}
#: The highest rank of a non-success. ``max(rank, NON_SUCCESS_CEILING)`` puts every non-success
#: on one level below the successes, where the attempt number decides first.
NON_SUCCESS_CEILING: Final = max(STATUS_RANK[s] for s in STATUS_ORDER if s not in SUCCESS_STATUSES)

#: Table names, as the metrics label them.
NOTIFICATION_TABLE: Final = "notification"
DELIVERY_TABLE: Final = "notification_delivery"
ATTEMPT_TABLE: Final = "delivery_attempt"


class InvalidRecord(PermanentError):
    """A decoded record that cannot be stored as it is (bad id, unknown channel...)."""


def _text(value: str) -> str:
    # PostgreSQL text (and jsonb) cannot hold NUL; Avro strings can. Replacing it keeps the
    # record instead of failing the whole batch's transaction over one character.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _optional_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


#: A UUID in canonical text form (lowercase, dashed), as Herald's ids are written.
_CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _uuid(record: Mapping[str, Any], name: str) -> str:
    """The field as a canonical UUID string.

    Rows keep ids as canonical text: COPY sends text anyway, and parsing every id into a
    ``uuid.UUID`` was a large share of the row building. The canonical form matters: two
    spellings of one id must be one key in the batch, or one statement would touch the row
    twice.
    """
    value = record[name]
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise InvalidRecord(
            f"{name} {value!r} is not a UUID", error_class="record.invalid_uuid"
        ) from None


def _id(record: Mapping[str, Any], name: str) -> str:
    """The field as an id of 1 to ``MAX_ID_LENGTH`` characters (``record.invalid_id``).

    A longer ``user_id`` cannot be stored: the inbox index would refuse the row, and with it
    the whole batch's transaction, on every retry (one record written straight to a topic by
    another producer would wedge the store)."""
    try:
        return _text(identity.check_id_length(record[name], name))
    except ValueError as exc:
        raise InvalidRecord(str(exc), error_class="record.invalid_id") from None


def _event_uuid(event_id: str) -> str:
    # identity.event_uuid, skipping the parse for the usual case of a canonical UUID.
    return event_id if _CANONICAL_UUID.fullmatch(event_id) else str(identity.event_uuid(event_id))


def _channel(record: Mapping[str, Any]) -> str:
    channel: str = record["channel"]
    if channel not in CHANNELS:
        raise InvalidRecord(
            f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}",
            error_class="record.unknown_channel",
        )
    return channel


def _delivery_id(record: Mapping[str, Any], notification_id: str, channel: str) -> str:
    # notification_delivery is unique on both id and (notification_id, channel); an id that
    # disagrees with uuid5(notification_id, channel) would break the upsert (or split the
    # history), so it is refused here instead of poisoning the batch's transaction.
    given = _uuid(record, "delivery_id")
    expected = identity.delivery_id(notification_id, channel)
    if given != expected:
        raise InvalidRecord(
            f"delivery_id {given} is not uuid5(notification_id {notification_id}, {channel!r}) "
            f"= {expected}",
            error_class="record.identity_mismatch",
        )
    return given


#: One encoder for every row: json.dumps with options builds a new encoder per call.
_JSON: Final = json.JSONEncoder(ensure_ascii=False)


def _metadata_json(metadata: Mapping[str, str]) -> str:
    try:
        bounds.check_map(metadata, bounds.METADATA)
    except ValueError as exc:
        raise InvalidRecord(str(exc), error_class="record.too_long") from None
    return _JSON.encode({_text(k): _text(v) for k, v in metadata.items()})


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """One ``notification`` row (an inbox entry)."""

    id: str
    event_id: str
    user_id: str
    event_type: str
    title: str
    message: str
    #: JSON object text for the ``metadata`` jsonb column.
    metadata: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """The ``notification_delivery`` row one status event would leave behind."""

    id: str
    notification_id: str
    user_id: str
    channel: str
    status: str
    attempt: int
    occurred_at: datetime
    error_class: str | None = None
    error_message: str | None = None
    provider_message_id: str | None = None
    #: Which of the channel's providers made the attempt (``sms-b``; provider failover).
    provider: str | None = None

    @property
    def retry_count(self) -> int:
        """Attempts before this one."""
        return self.attempt - 1

    @property
    def delivered_at(self) -> datetime | None:
        """When the message reached the provider or inbox; only successes have one."""
        return self.occurred_at if self.status in SUCCESS_STATUSES else None

    @property
    def rank_key(self) -> tuple[int, int, int]:
        """Precedence of this row's (status, attempt), before the time tie-break.

        ``(level, attempt, rank)``: every non-success shares the lowest level, so among them the
        attempt decides first and the status second; ``sent`` and ``delivered`` each have a level
        of their own above it, so a success outranks any non-success and ``delivered`` any
        ``sent``, whatever the attempts.
        """
        rank = STATUS_RANK[self.status]
        return (max(rank, NON_SUCCESS_CEILING), self.attempt, rank)

    def outranks(self, old: DeliveryRow) -> bool:
        """Whether this event's row replaces ``old`` (see the module docstring): a higher
        :attr:`rank_key`, or the same one and an earlier ``occurred_at``."""
        # The times are swapped on purpose: on equal keys the earlier event wins.
        return (self.rank_key, old.occurred_at) > (old.rank_key, self.occurred_at)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One ``delivery_attempt`` history row; unique on (delivery_id, attempt, status)."""

    delivery_id: str
    attempt: int
    status: str
    error_class: str | None
    error_message: str | None
    occurred_at: datetime
    provider: str | None = None


def notification_row(record: Mapping[str, Any]) -> NotificationRow:
    """The inbox row of a ``herald.Notification`` record."""
    return NotificationRow(
        id=_uuid(record, "notification_id"),
        event_id=_event_uuid(record["event_id"]),
        user_id=_id(record, "user_id"),
        event_type=_id(record, "event_type"),
        title=_text(record["title"]),
        message=_text(record["message"]),
        metadata=_metadata_json(record["metadata"]),
        created_at=record["created_at"],
    )


def inbox_row_from_request(request: Mapping[str, Any]) -> NotificationRow:
    """The inbox row an in-app ``herald.DeliveryRequest`` implies, for when it arrives before
    its ``herald.Notification`` (the two topics are not ordered relative to each other)."""
    return NotificationRow(
        id=_uuid(request, "notification_id"),
        event_id=_event_uuid(request["event_id"]),
        user_id=_id(request, "user_id"),
        event_type=_id(request, "event_type"),
        title=_text(request["subject"]),
        message=_text(request["body_text"]),
        metadata="{}",
        created_at=request["created_at"],
    )


def check_delivery_request(request: Mapping[str, Any], channel: str) -> None:
    """Refuse a delivery request that is not for ``channel`` or whose ids disagree."""
    notification_id = _uuid(request, "notification_id")
    if _channel(request) != channel:
        raise InvalidRecord(
            f"a {request['channel']!r} delivery on the {channel!r} deliveries topic",
            error_class="record.wrong_channel",
        )
    _delivery_id(request, notification_id, channel)


def status_rows(event: Mapping[str, Any]) -> tuple[DeliveryRow, AttemptRow]:
    """The delivery row and the attempt-history row of a ``herald.DeliveryStatus`` record."""
    notification_id = _uuid(event, "notification_id")
    channel = _channel(event)
    delivery_id = _delivery_id(event, notification_id, channel)
    status: str = event["status"]
    if status not in STATUS_RANK:
        raise InvalidRecord(f"unknown status {status!r}", error_class="record.unknown_status")
    attempt = max(int(event["attempt"]), 1)
    error_class = _optional_text(event["error_class"])
    error_message = _optional_text(event["error_message"])
    provider = _optional_text(event.get("provider"))
    delivery = DeliveryRow(
        id=delivery_id,
        notification_id=notification_id,
        user_id=_id(event, "user_id"),
        channel=channel,
        status=status,
        attempt=attempt,
        occurred_at=event["occurred_at"],
        error_class=error_class,
        error_message=error_message,
        provider_message_id=_optional_text(event["provider_message_id"]),
        provider=provider,
    )
    attempt_row = AttemptRow(
        delivery_id=delivery_id,
        attempt=attempt,
        status=status,
        error_class=error_class,
        error_message=error_message,
        occurred_at=event["occurred_at"],
        provider=provider,
    )
    return delivery, attempt_row


@dataclass
class BatchRows:
    """A batch's rows, at most one per key, as the database would end up after the batch.

    - notifications: a ``herald.Notification`` record wins over a row implied by an in-app
      request; otherwise the first one seen stays (``ON CONFLICT DO NOTHING`` semantics).
    - deliveries: the row that outranks the others (status precedence).
    - attempts: the first one per (delivery_id, attempt, status).
    """

    notifications: dict[str, NotificationRow] = field(default_factory=dict)
    #: Ids of notification rows that came from a Notification record (not from a request).
    authoritative: set[str] = field(default_factory=set)
    deliveries: dict[tuple[str, str], DeliveryRow] = field(default_factory=dict)
    attempts: dict[tuple[str, int, str], AttemptRow] = field(default_factory=dict)

    def add_notification(self, row: NotificationRow, *, from_request: bool = False) -> None:
        """Add an inbox row; ``from_request`` rows only fill a gap."""
        if row.id in self.authoritative:
            return
        if from_request:
            self.notifications.setdefault(row.id, row)
        else:
            self.notifications[row.id] = row
            self.authoritative.add(row.id)

    def add_status(self, delivery: DeliveryRow, attempt: AttemptRow) -> None:
        """Add one status event's rows."""
        key = (delivery.notification_id, delivery.channel)
        current = self.deliveries.get(key)
        if current is None or delivery.outranks(current):
            self.deliveries[key] = delivery
        self.attempts.setdefault((attempt.delivery_id, attempt.attempt, attempt.status), attempt)

    def __len__(self) -> int:
        return len(self.notifications) + len(self.deliveries) + len(self.attempts)

    def notification_rows(self) -> list[NotificationRow]:
        """Inbox rows sorted by id (the lock order)."""
        return [self.notifications[key] for key in sorted(self.notifications)]

    def delivery_rows(self) -> list[DeliveryRow]:
        """Delivery rows sorted by (notification_id, channel) (the lock order)."""
        return [self.deliveries[key] for key in sorted(self.deliveries)]

    def attempt_rows(self) -> list[AttemptRow]:
        """Attempt rows sorted by (delivery_id, attempt, status) (the lock order)."""
        return [self.attempts[key] for key in sorted(self.attempts)]


# --- SQL ------------------------------------------------------------------------------------


def _rank_key_sql(alias: str, time: str) -> str:
    # The same (level, attempt, rank) as DeliveryRow.rank_key, followed by a time column.
    order = ", ".join(f"'{status}'" for status in STATUS_ORDER)
    rank = f"array_position(ARRAY[{order}]::text[], {alias}.status)"
    return f"ROW(GREATEST({rank}, {NON_SUCCESS_CEILING}), {alias}.retry_count + 1, {rank}, {time})"


def outranks_sql(new: str, old: str) -> str:
    """SQL condition: the delivery row ``new`` outranks ``old`` (aliases of rows having
    ``status``, ``retry_count`` and ``attempted_at``), exactly as :meth:`DeliveryRow.outranks`."""
    # Each side ends with the *other* side's time, so on equal keys the earlier event wins. A
    # row written without attempted_at (not by this service) loses such a tie to any event.
    new_time = f"{new}.attempted_at"
    old_time = f"COALESCE({old}.attempted_at, 'infinity'::timestamptz)"
    return f"{_rank_key_sql(new, old_time)} > {_rank_key_sql(old, new_time)}"


class _Table(NamedTuple):
    """One target table: its staging table, the columns a batch fills, and the upsert."""

    name: str
    staging: str
    columns: str
    upsert: str


def _staged_upsert(table: str, columns: str, order_by: str, on_conflict: str) -> str:
    # ORDER BY: rows are locked in key order, the same in every instance, so two instances
    # writing overlapping rows cannot deadlock.
    return (
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM staging_{table} "
        f"ORDER BY {order_by} {on_conflict}"
    )


_NOTIFICATION_COLUMNS = "id, event_id, user_id, event_type, title, message, metadata, created_at"
_DELIVERY_COLUMNS = (
    "id, notification_id, user_id, channel, status, attempted_at, delivered_at, retry_count, "
    "error_class, error_message, provider_message_id, provider"
)
_ATTEMPT_COLUMNS = "delivery_id, attempt, status, error_class, error_message, occurred_at, provider"

#: A duplicate notification changes nothing (is_read and read_at are never touched). The one
#: exception: a row first written from an in-app request has no metadata; the notification
#: fills it in.
NOTIFICATION_UPSERT: Final = _staged_upsert(
    NOTIFICATION_TABLE,
    _NOTIFICATION_COLUMNS,
    "id",
    "ON CONFLICT (id) DO UPDATE SET metadata = EXCLUDED.metadata "
    f"WHERE {NOTIFICATION_TABLE}.metadata = '{{}}'::jsonb AND EXCLUDED.metadata <> '{{}}'::jsonb",
)

#: The stored delivery row changes only when the new one outranks it (status precedence).
DELIVERY_UPSERT: Final = _staged_upsert(
    DELIVERY_TABLE,
    _DELIVERY_COLUMNS,
    "notification_id, channel",
    "ON CONFLICT (notification_id, channel) DO UPDATE SET "
    "status = EXCLUDED.status, attempted_at = EXCLUDED.attempted_at, "
    "delivered_at = EXCLUDED.delivered_at, retry_count = EXCLUDED.retry_count, "
    "error_class = EXCLUDED.error_class, error_message = EXCLUDED.error_message, "
    "provider_message_id = EXCLUDED.provider_message_id, provider = EXCLUDED.provider, "
    "updated_at = now() "
    f"WHERE {outranks_sql('EXCLUDED', DELIVERY_TABLE)}",
)

#: The notification upsert that also announces each *new* inbox row to the read API's real-time
#: streams (``pg_notify``, delivered when the batch commits; see
#: :mod:`services.inapp_store.realtime`). Rows a duplicate or a metadata fill-in touched are
#: not new (``xmax = 0`` only for rows this statement inserted). Answers one row: (rows written,
#: events sent).
NOTIFICATION_UPSERT_NOTIFY: Final = (
    f"WITH written AS ({NOTIFICATION_UPSERT} RETURNING id, user_id, xmax = 0 AS inserted), "
    "new_rows AS (SELECT id, user_id FROM written WHERE inserted), "
    f"announced AS ({created_notify_sql('new_rows')}) "
    "SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM announced)"
)

#: Attempt history: a replayed status event is ignored.
ATTEMPT_INSERT: Final = _staged_upsert(
    ATTEMPT_TABLE,
    _ATTEMPT_COLUMNS,
    "delivery_id, attempt, status",
    "ON CONFLICT (delivery_id, attempt, status) DO NOTHING",
)

_TABLES: Final = (
    _Table(
        NOTIFICATION_TABLE,
        f"staging_{NOTIFICATION_TABLE}",
        _NOTIFICATION_COLUMNS,
        NOTIFICATION_UPSERT_NOTIFY,
    ),
    _Table(DELIVERY_TABLE, f"staging_{DELIVERY_TABLE}", _DELIVERY_COLUMNS, DELIVERY_UPSERT),
    _Table(ATTEMPT_TABLE, f"staging_{ATTEMPT_TABLE}", _ATTEMPT_COLUMNS, ATTEMPT_INSERT),
)


class TableCounts(NamedTuple):
    """Rows of one table in a batch: sent to the database, and inserted or updated by it."""

    submitted: int
    written: int


def table_values(rows: BatchRows) -> dict[str, list[tuple[Any, ...]]]:
    """The batch's rows as column tuples per table, in the staging tables' column order."""
    return {
        NOTIFICATION_TABLE: [
            (
                r.id,
                r.event_id,
                r.user_id,
                r.event_type,
                r.title,
                r.message,
                r.metadata,
                r.created_at,
            )
            for r in rows.notification_rows()
        ],
        DELIVERY_TABLE: [
            (
                r.id,
                r.notification_id,
                r.user_id,
                r.channel,
                r.status,
                r.occurred_at,
                r.delivered_at,
                r.retry_count,
                r.error_class,
                r.error_message,
                r.provider_message_id,
                r.provider,
            )
            for r in rows.delivery_rows()
        ],
        ATTEMPT_TABLE: [
            (
                r.delivery_id,
                r.attempt,
                r.status,
                r.error_class,
                r.error_message,
                r.occurred_at,
                r.provider,
            )
            for r in rows.attempt_rows()
        ],
    }


def write_rows(conn: psycopg.Connection[Any], rows: BatchRows) -> dict[str, TableCounts]:
    """Write a batch's rows; the caller owns the (one) transaction.

    Each table's rows are ``COPY``-ed into a temporary staging table, then upserted from it in
    one set-based statement. Measured on the local stack (2 cores, 2,000-notification batches,
    7 rows each) this wrote about 35,000-44,000 rows/s, against 24,000-27,000 for
    ``INSERT ... SELECT FROM unnest(...)`` and 19,000 for ``executemany`` in pipeline mode.

    New inbox rows are announced with ``pg_notify`` in the same statement (see
    :data:`NOTIFICATION_UPSERT_NOTIFY`); PostgreSQL delivers the events when the caller commits.
    """
    counts: dict[str, TableCounts] = {}
    values = table_values(rows)
    with conn.cursor() as cur:
        for table in _TABLES:
            params = values[table.name]
            if not params:
                counts[table.name] = TableCounts(0, 0)
                continue
            # Temporary tables live as long as the connection; ON COMMIT DELETE ROWS empties
            # them after each batch, and a rolled-back batch takes its rows with it.
            cur.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {table.staging} ON COMMIT DELETE ROWS "
                f"AS SELECT {table.columns} FROM {table.name} WITH NO DATA"
            )
            with cur.copy(f"COPY {table.staging} ({table.columns}) FROM STDIN") as copy:
                for row in params:
                    copy.write_row(row)
            cur.execute(table.upsert)
            # A statement that reports its own count (it also notifies) answers one row.
            result = cur.fetchone() if cur.description else None
            written = int(result[0]) if result else max(cur.rowcount, 0)
            counts[table.name] = TableCounts(len(params), written)
    return counts
