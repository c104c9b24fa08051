"""A user's preferences: channel switches, quiet hours and per-event-type choices, shared by
the ingest API (admin, ``services.ingest.preferences``) and the read API (the user themselves,
``services.inapp_store.api.preferences``): one validation, one write, one publish.

PostgreSQL holds them in ``notification_preference`` (one row per user) and
``user_event_preference`` (one row per user and event type); Kafka carries the whole set as
one ``herald.Preferences`` record per user on the compacted ``herald.preferences.v1``. The
response also lists every active event type with the user's effective choice; mandatory types
are ``locked`` (the router ignores opt-outs for them, so a PUT turning one off is ``422``).
The user's time zone (which quiet hours are read in) is shown too; a PUT naming another one
updates ``user_account`` and republishes the user on ``herald.users.v1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator
from sqlalchemy import Table, delete, literal_column, select, update
from sqlalchemy.orm import Session

from herald.db.models import EventType, NotificationPreference, UserAccount, UserEventPreference
from herald.db.upsert import upsert
from herald.serde import encode
from herald.streaming import Outgoing
from herald.userrecords import enabled_endpoints, record_lock, user_outgoing
from herald.webapi import Problem
from schemas import Catalogue
from services.ingest.admin import publish_or_503
from services.ingest.publisher import Publisher
from services.ingest.validation import (
    Channel,
    EventTypeCode,
    HourMinute,
    TimeZoneName,
    UserId,
    format_hour_minute,
    parse_hour_minute,
    unique_channels,
)

SCHEMA = "herald.Preferences"
PREFERENCE = cast(Table, NotificationPreference.__table__)
EVENT_PREFERENCE = cast(Table, UserEventPreference.__table__)
USER = cast(Table, UserAccount.__table__)
EVENT_TYPE = cast(Table, EventType.__table__)


class EventOverride(BaseModel):
    """The user's choice for one event type."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool = Field(True, description="Whether the user wants this event type at all.")
    channels: list[Channel] | None = Field(
        None, description="Channels to use instead of the event type's; null: the defaults."
    )

    @model_validator(mode="after")
    def _unique(self) -> EventOverride:
        if self.channels is not None:
            self.channels = cast(list[Channel], unique_channels(list(self.channels)))
        return self


class PreferencesIn(BaseModel):
    """A user's full preferences (what is left out takes its default)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "inapp_enabled": True,
                    "email_enabled": True,
                    "sms_enabled": False,
                    "quiet_hours_start": "22:00",
                    "quiet_hours_end": "07:30",
                    "event_overrides": {
                        "comment.created": {"enabled": True, "channels": ["inapp"]},
                        "newsletter.sent": {"enabled": False},
                    },
                }
            ]
        },
    )

    user_id: UserId | None = Field(None, description="May repeat the path's user id.")
    inapp_enabled: StrictBool = True
    email_enabled: StrictBool = True
    sms_enabled: StrictBool = True
    webhook_enabled: StrictBool = Field(
        True, description="Signed webhooks to the user's webhook endpoint, if they have one."
    )
    slack_enabled: StrictBool = Field(
        True, description="Messages to the user's Slack incoming webhook, if they have one."
    )
    quiet_hours_start: HourMinute | None = Field(
        None, description="Start of quiet hours, HH:MM in the user's time zone."
    )
    quiet_hours_end: HourMinute | None = Field(
        None, description="End of quiet hours, HH:MM (before the start: overnight)."
    )
    event_overrides: dict[EventTypeCode, EventOverride] = Field(
        default_factory=dict, description="Choices per event type code."
    )
    timezone: TimeZoneName | None = Field(
        None,
        description="The user's IANA time zone, which quiet hours are read in; left out or "
        "null: unchanged (it belongs to the user, PUT /v1/users/{user_id} sets it too).",
    )

    @model_validator(mode="after")
    def _quiet_hours(self) -> PreferencesIn:
        if (self.quiet_hours_start is None) != (self.quiet_hours_end is None):
            raise ValueError("quiet hours need both quiet_hours_start and quiet_hours_end")
        if self.quiet_hours_start is not None and self.quiet_hours_start == self.quiet_hours_end:
            raise ValueError(
                "quiet_hours_start equals quiet_hours_end; leave both out for no quiet hours"
            )
        return self


class EventOverrideOut(BaseModel):
    enabled: bool
    channels: list[str] | None


class EventTypeChoice(BaseModel):
    """An active event type and what the user gets of it (for a preference center)."""

    code: str
    name: str
    description: str | None
    channels: list[str] = Field(description="The channels the event type is delivered on.")
    locked: bool = Field(
        description="A mandatory type (security, legal): the user's choices do not apply, and "
        "a PUT turning it or one of its channels off is refused (422)."
    )
    enabled: bool = Field(
        description="Whether the user gets it (their override, else the default)."
    )
    chosen_channels: list[str] = Field(
        description="The channels the user chose for it (their override, else the type's)."
    )


class PreferencesOut(BaseModel):
    """A user's preferences as stored (defaults if never set)."""

    user_id: str
    inapp_enabled: bool
    email_enabled: bool
    sms_enabled: bool
    webhook_enabled: bool = True
    slack_enabled: bool = True
    quiet_hours_start: str | None
    quiet_hours_end: str | None
    event_overrides: dict[str, EventOverrideOut]
    updated_at: datetime | None = Field(description="Null when the user never set any.")
    timezone: str = Field(
        "UTC", description="The user's IANA time zone (quiet hours are in it; set on the user)."
    )
    event_types: list[EventTypeChoice] = Field(
        default_factory=list, description="Every active event type, with the user's choice."
    )


def preferences_record(
    user_id: str,
    row: Mapping[Any, Any] | None,
    overrides: Iterable[Mapping[Any, Any]],
    *,
    now: datetime,
) -> dict[str, Any]:
    """The ``herald.Preferences`` record of a user's stored rows (defaults where none)."""
    start = row["quiet_hours_start"] if row else None
    end = row["quiet_hours_end"] if row else None
    return {
        "user_id": user_id,
        "inapp_enabled": row["inapp_enabled"] if row else True,
        "email_enabled": row["email_enabled"] if row else True,
        "sms_enabled": row["sms_enabled"] if row else True,
        "webhook_enabled": row["webhook_enabled"] if row else True,
        "slack_enabled": row["slack_enabled"] if row else True,
        "quiet_hours_start": format_hour_minute(start) if start is not None else None,
        "quiet_hours_end": format_hour_minute(end) if end is not None else None,
        "event_overrides": {
            o["event_type_code"]: {
                "enabled": o["enabled"],
                "channels": list(o["channels"]) if o["channels"] is not None else None,
            }
            for o in sorted(overrides, key=lambda o: str(o["event_type_code"]))
        },
        "updated_at": row["updated_at"] if row else now,
    }


def preferences_outgoing(topics: Catalogue, record: Mapping[str, Any]) -> Outgoing:
    """The record for ``herald.preferences.v1``, keyed by user id."""
    return Outgoing(topics.preferences.name, record["user_id"], encode(SCHEMA, dict(record)))


def preferences_out(
    record: Mapping[str, Any],
    *,
    stored: bool,
    timezone: str = "UTC",
    event_types: Iterable[Mapping[str, Any]] = (),
) -> PreferencesOut:
    """The API representation of a preferences record (with the user's time zone and the
    active event types, each with the user's effective choice)."""
    overrides = record["event_overrides"]
    choices = []
    for row in event_types:
        override = overrides.get(row["code"])
        locked = bool(row["mandatory"])
        channels = list(row["channels"])
        enabled = bool(row["default_enabled"]) if override is None else override["enabled"]
        chosen = override["channels"] if override is not None else None
        choices.append(
            EventTypeChoice(
                code=row["code"],
                name=row["name"],
                description=row["description"],
                channels=channels,
                locked=locked,
                enabled=True if locked else enabled,
                chosen_channels=channels if locked or chosen is None else list(chosen),
            )
        )
    return PreferencesOut(
        **{**record, "updated_at": record["updated_at"] if stored else None},
        timezone=timezone,
        event_types=choices,
    )


def _require_user(session: Session, user_id: str) -> str:
    """The user's time zone; ``404`` if there is no such user."""
    found = session.execute(select(USER.c.timezone).where(USER.c.id == user_id)).first()
    if found is None:
        raise Problem(
            404,
            "User not found",
            f"no user {user_id!r}; create it with PUT /v1/users/{user_id} first",
            kind="user-not-found",
        )
    return str(found[0])


def active_event_types(session: Session) -> list[Any]:
    """Every active event type, by code."""
    columns = [
        EVENT_TYPE.c[name]
        for name in ("code", "name", "description", "channels", "default_enabled", "mandatory")
    ]
    query = select(*columns).where(EVENT_TYPE.c.is_active).order_by(EVENT_TYPE.c.code)
    return list(session.execute(query).mappings())


def stored_preferences(session: Session, user_id: str) -> tuple[Any, list[Any]]:
    """The user's ``notification_preference`` row (or None) and ``user_event_preference`` rows."""
    row = session.execute(select(PREFERENCE).where(PREFERENCE.c.user_id == user_id)).mappings()
    overrides = session.execute(
        select(EVENT_PREFERENCE).where(EVENT_PREFERENCE.c.user_id == user_id)
    ).mappings()
    return row.first(), list(overrides)


def _check_codes(session: Session, overrides: Mapping[str, EventOverride]) -> None:
    codes = sorted(overrides)
    if not codes:
        return
    found = session.execute(
        select(EVENT_TYPE.c.code, EVENT_TYPE.c.mandatory, EVENT_TYPE.c.channels).where(
            EVENT_TYPE.c.code.in_(codes)
        )
    ).all()
    unknown = sorted(set(codes) - {row.code for row in found})
    if unknown:
        names = ", ".join(repr(code) for code in unknown)
        raise Problem(
            422,
            "Unknown event type",
            f"event_overrides names unknown event type{'s' if len(unknown) > 1 else ''} {names}",
            kind="unknown-event-type",
            event_types=unknown,
        )
    locked = sorted(
        row.code
        for row in found
        if row.mandatory and _turns_off(overrides[row.code], list(row.channels))
    )
    if locked:
        names = ", ".join(repr(code) for code in locked)
        raise Problem(
            422,
            "Mandatory event type",
            f"event_overrides turns off mandatory event type{'s' if len(locked) > 1 else ''} "
            f"{names}: mandatory types (security, legal notices) are always delivered; leave "
            "them out of event_overrides",
            kind="mandatory-event-type",
            event_types=locked,
        )


def _turns_off(choice: EventOverride, channels: list[str]) -> bool:
    if not choice.enabled:
        return True
    return choice.channels is not None and not set(channels) <= set(choice.channels)


def check_body_user(user_id: str, body: PreferencesIn) -> None:
    """``422`` when the body names another user than the path."""
    if body.user_id is not None and body.user_id != user_id:
        raise Problem(
            422,
            "Request is not valid",
            f"user_id: {body.user_id!r} in the body does not match {user_id!r} in the path",
            kind="validation-error",
        )


def write_preferences(
    session: Session,
    publisher: Publisher,
    topics: Catalogue,
    user_id: str,
    body: PreferencesIn,
) -> PreferencesOut:
    """Replace the user's preferences (fields left out take their defaults; event types left
    out of ``event_overrides`` lose their override), commit, and publish them to the
    compacted topic before returning (``503`` if Kafka fails after the commit)."""
    check_body_user(user_id, body)
    codes = sorted(body.event_overrides)
    with record_lock(session, "user", user_id):
        with session.begin():
            timezone = _require_user(session, user_id)
            _check_codes(session, body.event_overrides)
            user_row, endpoints = None, {}
            if body.timezone is not None and body.timezone != timezone:
                user_row = (
                    session.execute(
                        update(USER)
                        .where(USER.c.id == user_id)
                        .values(timezone=body.timezone, updated_at=literal_column("now()"))
                        .returning(*USER.c)
                    )
                    .mappings()
                    .one()
                )
                timezone = body.timezone
                endpoints = enabled_endpoints(session, user_id)
            values = {
                "user_id": user_id,
                "inapp_enabled": body.inapp_enabled,
                "email_enabled": body.email_enabled,
                "sms_enabled": body.sms_enabled,
                "webhook_enabled": body.webhook_enabled,
                "slack_enabled": body.slack_enabled,
                "quiet_hours_start": _time(body.quiet_hours_start),
                "quiet_hours_end": _time(body.quiet_hours_end),
            }
            row = session.execute(upsert(PREFERENCE, values, ["user_id"])).mappings().one()
            session.execute(
                delete(EVENT_PREFERENCE).where(
                    EVENT_PREFERENCE.c.user_id == user_id,
                    EVENT_PREFERENCE.c.event_type_code.not_in(codes),
                )
            )
            overrides = _upsert_overrides(session, user_id, body.event_overrides)
            event_types = active_event_types(session)
        record = preferences_record(user_id, row, overrides, now=row["updated_at"])
        outgoing = [preferences_outgoing(topics, record)]
        if user_row is not None:
            # The time zone lives on the user: the router reads it from the users topic.
            outgoing.insert(0, user_outgoing(topics, user_row, endpoints))
        publish_or_503(
            publisher,
            outgoing,
            saved=f"preferences of user {user_id!r} are saved",
            retry="repeat this PUT to publish them",
        )
    return preferences_out(record, stored=True, timezone=timezone, event_types=event_types)


def read_preferences(session: Session, user_id: str) -> PreferencesOut:
    """The user's preferences; defaults (every channel on) if they never set any."""
    with session.begin():
        timezone = _require_user(session, user_id)
        row, overrides = stored_preferences(session, user_id)
        event_types = active_event_types(session)
    record = preferences_record(user_id, row, overrides, now=datetime.now().astimezone())
    return preferences_out(
        record, stored=row is not None, timezone=timezone, event_types=event_types
    )


def _time(value: str | None) -> Any:
    return parse_hour_minute(value) if value is not None else None


def _upsert_overrides(
    session: Session, user_id: str, overrides: Mapping[str, EventOverride]
) -> list[Any]:
    if not overrides:
        return []
    rows = [
        {
            "user_id": user_id,
            "event_type_code": code,
            "enabled": choice.enabled,
            "channels": choice.channels,
        }
        for code, choice in overrides.items()
    ]
    result = session.execute(upsert(EVENT_PREFERENCE, rows, ["user_id", "event_type_code"]))
    return list(result.mappings())
