"""Herald's PostgreSQL tables as SQLAlchemy 2 declarative models.

No table names a schema: the schema is chosen per connection through PostgreSQL's
``search_path`` (see :mod:`herald.db.engine`), so the same models serve production
(``DATABASE_SCHEMA``, default ``public``) and tests (a uuid-named schema each), and raw SQL or
``COPY`` written by the consumers lands in the same schema as ORM writes.

Ids follow DESIGN.md section 3: ``notification.id = uuid5(event_id, user_id)`` and
``notification_delivery.id = uuid5(notification_id, channel)`` are computed by the application
(``herald.identity``), never by the database, so every write can be an idempotent upsert.

Constraint and index names are explicit (and mirrored by the migrations) so that upserts can
name their conflict target and a migration can drop or alter them by name.
"""

from __future__ import annotations

import uuid
from datetime import datetime, time
from ipaddress import IPv4Address, IPv6Address
from typing import Any, ClassVar, Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Text,
    Time,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from herald.channels import CHANNELS, ENDPOINT_CHANNELS, HOLDABLE_CHANNELS
from herald.identity import MAX_ID_LENGTH

#: Every state a delivery (and a delivery attempt) can be in.
DELIVERY_STATUSES: Final = ("pending", "skipped", "sent", "delivered", "retrying", "failed", "dead")

#: Names used for any constraint not named explicitly (``ck`` prefixes the short names given to
#: check constraints below with their table name).
NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


_CHANNEL_LIST = _sql_list(CHANNELS)
_STATUS_LIST = _sql_list(DELIVERY_STATUSES)

#: SQL conditions shared by the models and the migrations, so both say the same thing.
CHANNEL_CHECK_SQL: Final = f"channel IN ({_CHANNEL_LIST})"
STATUS_CHECK_SQL: Final = f"status IN ({_STATUS_LIST})"
#: E.164: a plus sign, then up to 15 digits, the first not zero.
PHONE_CHECK_SQL: Final = r"phone ~ '^\+[1-9][0-9]{1,14}$'"


def channels_check_sql(column: str) -> str:
    """SQL condition: every element of the text-array ``column`` is a known channel."""
    return f"{column} <@ ARRAY[{_CHANNEL_LIST}]::text[]"


def length_check(column: str) -> CheckConstraint:
    """``ck_<table>_<column>_length``: an id or code column holds at most ``MAX_ID_LENGTH``
    characters, as the ingest API, the router and inapp_store already require (migration
    0006). A longer id would not fit a btree index entry."""
    return CheckConstraint(f"char_length({column}) <= {MAX_ID_LENGTH}", name=f"{column}_length")


class Base(DeclarativeBase):
    """Declarative base: one MetaData for every Herald table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Text over VARCHAR (same storage in PostgreSQL, no arbitrary limits) and timestamps
    # always with a time zone.
    type_annotation_map: ClassVar[dict[Any, TypeEngine[Any]]] = {
        str: Text(),
        datetime: DateTime(timezone=True),
        uuid.UUID: UUID(as_uuid=True),
        dict[str, Any]: JSONB(),
        list[str]: ARRAY(Text()),
    }


def _created_at() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


def _updated_at() -> Mapped[datetime]:
    # ``onupdate`` covers ORM updates; raw upserts must set ``updated_at = now()`` themselves.
    return mapped_column(server_default=func.now(), onupdate=func.now())


class EventType(Base):
    """A kind of event applications publish (``comment.created``), with its templates."""

    __tablename__ = "event_type"
    __table_args__ = (
        UniqueConstraint("code", name="uq_event_type_code"),
        CheckConstraint(channels_check_sql("channels"), name="channels_known"),
        length_check("code"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=func.gen_random_uuid()
    )
    code: Mapped[str]
    name: Mapped[str]
    description: Mapped[str | None]
    #: Whether users who never chose get this event type.
    default_enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    #: Inactive event types are refused by the router (events go to the events DLQ).
    is_active: Mapped[bool] = mapped_column(server_default=text("true"))
    #: Mandatory event types ignore user opt-outs (security, legal notices).
    mandatory: Mapped[bool] = mapped_column(server_default=text("false"))
    #: Urgent event types are delivered during quiet hours.
    urgent: Mapped[bool] = mapped_column(server_default=text("false"))
    #: Channels this event type is delivered on.
    channels: Mapped[list[str]] = mapped_column(server_default=text("'{}'::text[]"))
    #: channel -> {"title": ..., "body": ..., "html": ...} (Jinja2 sources).
    templates: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    #: ``{"window_s": 600, "key": "post_id"}``: a digest window (herald.EventType.digest).
    digest: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class UserAccount(Base):
    """A recipient: the application's user id and how to reach them."""

    __tablename__ = "user_account"
    __table_args__ = (CheckConstraint(PHONE_CHECK_SQL, name="phone_e164"), length_check("id"))

    #: The application's own user id string (``u-123``), not a Herald-made id.
    id: Mapped[str] = mapped_column(primary_key=True)
    email: Mapped[str | None]
    #: E.164 (``+4915112345678``).
    phone: Mapped[str | None]
    locale: Mapped[str] = mapped_column(server_default=text("'en'"))
    #: IANA time zone name, used for quiet hours.
    timezone: Mapped[str] = mapped_column(server_default=text("'UTC'"))
    display_name: Mapped[str | None]
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class NotificationPreference(Base):
    """A user's channel switches and quiet hours (one row per user)."""

    __tablename__ = "notification_preference"
    __table_args__ = (
        # A quiet period needs both ends; start > end means it spans midnight.
        CheckConstraint(
            "(quiet_hours_start IS NULL) = (quiet_hours_end IS NULL)", name="quiet_hours_pair"
        ),
        length_check("user_id"),
    )

    user_id: Mapped[str] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True
    )
    inapp_enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    email_enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    sms_enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    webhook_enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    slack_enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    #: Local time in the user's time zone.
    quiet_hours_start: Mapped[time | None] = mapped_column(Time())
    quiet_hours_end: Mapped[time | None] = mapped_column(Time())
    updated_at: Mapped[datetime] = _updated_at()


class UserEventPreference(Base):
    """A user's choice for one event type: on/off, and optionally which channels."""

    __tablename__ = "user_event_preference"
    __table_args__ = (
        CheckConstraint(
            f"channels IS NULL OR {channels_check_sql('channels')}", name="channels_known"
        ),
        length_check("user_id"),
        length_check("event_type_code"),
    )

    # The primary key is the unique (user_id, event_type_code) pair: upserts conflict on it.
    user_id: Mapped[str] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True
    )
    event_type_code: Mapped[str] = mapped_column(
        ForeignKey("event_type.code", ondelete="CASCADE", onupdate="CASCADE"), primary_key=True
    )
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    #: Channel override; NULL means the event type's channels.
    channels: Mapped[list[str] | None]
    updated_at: Mapped[datetime] = _updated_at()


class Notification(Base):
    """One rendered notification for one user: a row of their inbox."""

    __tablename__ = "notification"
    __table_args__ = (length_check("user_id"), length_check("event_type"))

    # No foreign keys to user_account or event_type: notifications arrive from Kafka, where a
    # user may be known only to the producers, and history must outlive a deleted event type.
    #: uuid5(event_id, user_id), computed by the router.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_id: Mapped[uuid.UUID]
    user_id: Mapped[str]
    #: The event type's code.
    event_type: Mapped[str]
    title: Mapped[str]
    message: Mapped[str]
    # ``metadata`` is reserved on declarative classes, hence the attribute name ``meta``.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", server_default=text("'{}'::jsonb"))
    is_read: Mapped[bool] = mapped_column(server_default=text("false"))
    read_at: Mapped[datetime | None]
    archived_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created_at()


# The inbox: newest first per user; ``id`` breaks ties so keyset pagination is exact.
Index(
    "ix_notification_inbox",
    Notification.user_id,
    Notification.created_at.desc(),
    Notification.id.desc(),
)
#: The unread condition, exactly as the partial index states it. PostgreSQL uses a partial
#: index only when it can prove the query's WHERE implies the index's: ``is_read = false`` and
#: ``NOT is_read`` qualify, ``is_read IS false`` (SQLAlchemy's ``.is_(False)``) does not.
UNREAD: Final = Notification.is_read == false()

# Unread count and the unread filter read only unread rows, a small part of the table.
Index(
    "ix_notification_unread",
    Notification.user_id,
    Notification.created_at.desc(),
    Notification.id.desc(),
    postgresql_where=UNREAD,
)
# Which notifications did an event produce (support, replays).
Index("ix_notification_event_id", Notification.event_id)
# Retention deletes the oldest first (migration 0008).
Index("ix_notification_created_at", Notification.created_at)


class NotificationDelivery(Base):
    """The latest state of one notification on one channel."""

    __tablename__ = "notification_delivery"
    __table_args__ = (
        UniqueConstraint(
            "notification_id", "channel", name="uq_notification_delivery_notification_id_channel"
        ),
        CheckConstraint(CHANNEL_CHECK_SQL, name="channel_known"),
        CheckConstraint(STATUS_CHECK_SQL, name="status_known"),
        CheckConstraint("retry_count >= 0", name="retry_count_non_negative"),
        length_check("user_id"),
    )

    # Deliberately no foreign key to notification: status events (herald.delivery-status.v1)
    # and notifications (herald.notifications.v1) travel on different topics, so a delivery's
    # status can be written before its notification row exists.
    #: delivery_id = uuid5(notification_id, channel); the providers' idempotency key.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    notification_id: Mapped[uuid.UUID]
    user_id: Mapped[str]
    channel: Mapped[str]
    status: Mapped[str] = mapped_column(server_default=text("'pending'"))
    attempted_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    retry_count: Mapped[int] = mapped_column(Integer(), server_default=text("0"))
    error_class: Mapped[str | None]
    error_message: Mapped[str | None]
    #: The provider's id for the sent message (SMTP Message-ID, SMS message sid).
    provider_message_id: Mapped[str | None]
    #: Which of the channel's providers made the latest attempt (failover), if any.
    provider: Mapped[str | None]
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


# Erasure and export find a user's deliveries, skipped ones without a notification too;
# retention deletes the oldest (migration 0008).
Index("ix_notification_delivery_user_id", NotificationDelivery.user_id)
Index("ix_notification_delivery_created_at", NotificationDelivery.created_at)


class DeliveryAttempt(Base):
    """The attempt history of a delivery: one row per status event."""

    __tablename__ = "delivery_attempt"
    __table_args__ = (
        # A replayed status event hits this and is ignored (ON CONFLICT DO NOTHING).
        UniqueConstraint(
            "delivery_id",
            "attempt",
            "status",
            name="uq_delivery_attempt_delivery_id_attempt_status",
        ),
        CheckConstraint(STATUS_CHECK_SQL, name="status_known"),
        CheckConstraint("attempt >= 0", name="attempt_non_negative"),
    )

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=True)
    # No foreign key, for the same reason as notification_delivery.notification_id.
    delivery_id: Mapped[uuid.UUID]
    attempt: Mapped[int] = mapped_column(Integer())
    status: Mapped[str]
    error_class: Mapped[str | None]
    error_message: Mapped[str | None]
    #: Which of the channel's providers made this attempt (failover), if any.
    provider: Mapped[str | None]
    occurred_at: Mapped[datetime] = mapped_column(server_default=func.now())


# Retention deletes attempts by age (migration 0008).
Index("ix_delivery_attempt_occurred_at", DeliveryAttempt.occurred_at)


#: Longest endpoint URL (migration 0007).
MAX_URL_LENGTH: Final = 2048


class ChannelEndpoint(Base):
    """Where a user's webhook or Slack deliveries go: one endpoint per (user, kind).

    The router learns the URL from the user record's ``endpoints``; the sender reads the
    current URL and secret here at send time, and disables an endpoint that answered 410.
    """

    __tablename__ = "channel_endpoint"
    __table_args__ = (
        CheckConstraint(f"kind IN ({_sql_list(ENDPOINT_CHANNELS)})", name="kind_known"),
        CheckConstraint(f"char_length(url) <= {MAX_URL_LENGTH}", name="url_length"),
        length_check("user_id"),
    )

    user_id: Mapped[str] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True
    )
    #: ``webhook`` or ``slack``: the channel the endpoint serves.
    kind: Mapped[str] = mapped_column(primary_key=True)
    url: Mapped[str]
    #: Standard Webhooks signing secret (``whsec_`` + base64); null for Slack.
    secret: Mapped[str | None]
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    disabled_reason: Mapped[str | None]
    disabled_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class SendJournal(Base):
    """What a sender began and finished sending (herald.sender.PostgresJournal).

    A sender claims a delivery (``sending``) before it calls the provider and confirms it
    (``sent``) as soon as the provider accepted; a claim left ``sending`` by a sender that
    died in between marks a delivery whose outcome is unknown, so it is not sent blindly twice.
    """

    __tablename__ = "send_journal"
    __table_args__ = (
        CheckConstraint("state IN ('sending', 'sent')", name="state_known"),
        CheckConstraint("attempt >= 1", name="attempt_positive"),
    )

    delivery_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    channel: Mapped[str]
    state: Mapped[str]
    attempt: Mapped[int] = mapped_column(Integer())
    provider_message_id: Mapped[str | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    #: Who holds the claim (a token per claim): claims are compare-and-set on it.
    claim_token: Mapped[uuid.UUID | None]


# Retention deletes journal rows by age (migration 0008).
Index("ix_send_journal_updated_at", SendJournal.updated_at)


class KnownDevice(Base):
    """A device a user has been seen on (new-device alerts)."""

    __tablename__ = "known_device"
    __table_args__ = (length_check("user_id"), length_check("device_id"))

    # No foreign key to user_account: devices are learnt from events, whose users may be known
    # only on Kafka. The primary key is the unique (user_id, device_id) pair.
    user_id: Mapped[str] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(server_default=func.now())
    user_agent: Mapped[str | None]
    #: Reads return ``ipaddress`` objects; writes accept those or strings.
    ip: Mapped[IPv4Address | IPv6Address | str | None] = mapped_column(INET())


class HeldDelivery(Base):
    """A delivery request the router holds back during the user's quiet hours.

    Written by the router before it commits the offset of the event that made it, read by the
    router's release loop (``release_at <= now()``, oldest first, ``FOR UPDATE SKIP LOCKED``),
    which produces ``payload`` to the channel's deliveries topic and then deletes the row.
    """

    __tablename__ = "held_delivery"
    __table_args__ = (
        CheckConstraint(f"channel IN ({_sql_list(HOLDABLE_CHANNELS)})", name="channel_holdable"),
        length_check("user_id"),
    )

    #: uuid5(notification_id, channel): routing the same event twice holds it once.
    delivery_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    notification_id: Mapped[uuid.UUID]
    #: The Kafka key of the deliveries topic.
    user_id: Mapped[str]
    channel: Mapped[str]
    #: When the user's quiet hours end.
    release_at: Mapped[datetime]
    #: The ``herald.DeliveryRequest`` record, Avro single-object encoded, produced unchanged.
    payload: Mapped[bytes] = mapped_column(LargeBinary())
    created_at: Mapped[datetime] = _created_at()


# The release loop reads the due rows, oldest first.
Index("ix_held_delivery_release_at", HeldDelivery.release_at)
# A user's held deliveries are reviewed when their record or preferences change (migration 0008).
Index("ix_held_delivery_user_id", HeldDelivery.user_id)


class IdempotencyKey(Base):
    """A ``POST /v1/events`` sent with an ``Idempotency-Key``, and the response it got
    (services/ingest/idempotency.py).

    The ingest API claims the row (``response_status`` NULL: in progress) before it publishes,
    stores the response once Kafka acknowledged, and deletes the row if the request failed, so
    the client may retry with the same key. A replay with the same ``request_hash`` gets the
    stored response; another body is refused. Rows older than the TTL count as absent and are
    deleted in the background.
    """

    __tablename__ = "idempotency_key"
    __table_args__ = (CheckConstraint("char_length(key) BETWEEN 1 AND 255", name="key_length"),)

    #: Who sent it: keys are scoped to the calling API key (its fingerprint, never the key).
    caller: Mapped[str] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(primary_key=True)
    #: sha256 (hex) of the canonical JSON of the parsed request body.
    request_hash: Mapped[str]
    #: Who holds the claim (a token per claim): completing, releasing and taking over a claim
    #: left by a crashed request are compare-and-set on it.
    claim_token: Mapped[uuid.UUID]
    #: The stored response; NULL while the request is in progress.
    response_status: Mapped[int | None] = mapped_column(Integer())
    response_body: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = _created_at()
    #: When the current claim was taken (a claim in progress past the lock timeout is stale).
    locked_at: Mapped[datetime] = mapped_column(server_default=func.now())


# Expired rows are found (and deleted) by age.
Index("ix_idempotency_key_created_at", IdempotencyKey.created_at)


#: Every Herald table, for ``alembic`` autogenerate comparisons and tests.
metadata: Final = Base.metadata
