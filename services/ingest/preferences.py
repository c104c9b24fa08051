"""``/v1/users/{user_id}/preferences``: a user's channel switches, quiet hours and per-event-type
choices (admin).

PostgreSQL holds them in ``notification_preference`` (one row per user) and
``user_event_preference`` (one row per user and event type); Kafka carries the whole set as
one ``herald.Preferences`` record per user on the compacted ``herald.preferences.v1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator
from sqlalchemy import Table, delete, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from herald.db.models import EventType, NotificationPreference, UserAccount, UserEventPreference
from herald.serde import encode
from herald.streaming import Outgoing
from herald.webapi import Problem, problem_responses
from schemas import Catalogue
from services.ingest.admin import publish_or_503, record_lock
from services.ingest.deps import ADMIN_RESPONSES, DbSession, Publish, Topics, UserPath, authorize
from services.ingest.validation import (
    Channel,
    EventTypeCode,
    HourMinute,
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

router = APIRouter(
    prefix="/v1/users/{user_id}/preferences",
    tags=["preferences"],
    dependencies=[Depends(authorize)],
    responses={**ADMIN_RESPONSES, **problem_responses(404, 422, 503)},
)


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
    quiet_hours_start: HourMinute | None = Field(
        None, description="Start of quiet hours, HH:MM in the user's time zone."
    )
    quiet_hours_end: HourMinute | None = Field(
        None, description="End of quiet hours, HH:MM (before the start: overnight)."
    )
    event_overrides: dict[EventTypeCode, EventOverride] = Field(
        default_factory=dict, description="Choices per event type code."
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


class PreferencesOut(BaseModel):
    """A user's preferences as stored (defaults if never set)."""

    user_id: str
    inapp_enabled: bool
    email_enabled: bool
    sms_enabled: bool
    quiet_hours_start: str | None
    quiet_hours_end: str | None
    event_overrides: dict[str, EventOverrideOut]
    updated_at: datetime | None = Field(description="Null when the user never set any.")


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


def preferences_out(record: Mapping[str, Any], *, stored: bool) -> PreferencesOut:
    """The API representation of a preferences record."""
    return PreferencesOut(**{**record, "updated_at": record["updated_at"] if stored else None})


def _require_user(session: Session, user_id: str) -> None:
    exists = session.execute(select(USER.c.id).where(USER.c.id == user_id)).first()
    if exists is None:
        raise Problem(
            404,
            "User not found",
            f"no user {user_id!r}; create it with PUT /v1/users/{user_id} first",
            kind="user-not-found",
        )


def stored_preferences(session: Session, user_id: str) -> tuple[Any, list[Any]]:
    """The user's ``notification_preference`` row (or None) and ``user_event_preference`` rows."""
    row = session.execute(select(PREFERENCE).where(PREFERENCE.c.user_id == user_id)).mappings()
    overrides = session.execute(
        select(EVENT_PREFERENCE).where(EVENT_PREFERENCE.c.user_id == user_id)
    ).mappings()
    return row.first(), list(overrides)


def _check_codes(session: Session, codes: list[str]) -> None:
    if not codes:
        return
    known = set(
        session.execute(select(EVENT_TYPE.c.code).where(EVENT_TYPE.c.code.in_(codes))).scalars()
    )
    unknown = sorted(set(codes) - known)
    if unknown:
        names = ", ".join(repr(code) for code in unknown)
        raise Problem(
            422,
            "Unknown event type",
            f"event_overrides names unknown event type{'s' if len(unknown) > 1 else ''} {names}",
            kind="unknown-event-type",
            event_types=unknown,
        )


@router.put(
    "",
    response_model=PreferencesOut,
    responses=problem_responses(400),
    summary="Set a user's preferences",
)
def put_preferences(
    user_id: UserPath,
    body: Annotated[PreferencesIn, Body()],
    session: DbSession,
    publisher: Publish,
    topics: Topics,
) -> PreferencesOut:
    """Replace the user's preferences (fields left out take their defaults; event types left
    out of ``event_overrides`` lose their override) and publish them."""
    if body.user_id is not None and body.user_id != user_id:
        raise Problem(
            422,
            "Request is not valid",
            f"user_id: {body.user_id!r} in the body does not match {user_id!r} in the path",
            kind="validation-error",
        )
    codes = sorted(body.event_overrides)
    with record_lock(session, "user", user_id):
        with session.begin():
            _require_user(session, user_id)
            _check_codes(session, codes)
            values = {
                "user_id": user_id,
                "inapp_enabled": body.inapp_enabled,
                "email_enabled": body.email_enabled,
                "sms_enabled": body.sms_enabled,
                "quiet_hours_start": _time(body.quiet_hours_start),
                "quiet_hours_end": _time(body.quiet_hours_end),
            }
            statement = insert(PREFERENCE).values(values)
            row = (
                session.execute(
                    statement.on_conflict_do_update(
                        index_elements=[PREFERENCE.c.user_id],
                        set_={
                            **{k: statement.excluded[k] for k in values if k != "user_id"},
                            "updated_at": literal_column("now()"),
                        },
                    ).returning(*PREFERENCE.c)
                )
                .mappings()
                .one()
            )
            session.execute(
                delete(EVENT_PREFERENCE).where(
                    EVENT_PREFERENCE.c.user_id == user_id,
                    EVENT_PREFERENCE.c.event_type_code.not_in(codes),
                )
            )
            overrides = _upsert_overrides(session, user_id, body.event_overrides)
        record = preferences_record(user_id, row, overrides, now=row["updated_at"])
        publish_or_503(
            publisher,
            [preferences_outgoing(topics, record)],
            saved=f"preferences of user {user_id!r} are saved",
            retry="repeat this PUT to publish them",
        )
    return preferences_out(record, stored=True)


def _time(value: str | None) -> Any:
    return parse_hour_minute(value) if value is not None else None


def _upsert_overrides(
    session: Session, user_id: str, overrides: Mapping[str, EventOverride]
) -> list[Any]:
    if not overrides:
        return []
    statement = insert(EVENT_PREFERENCE).values(
        [
            {
                "user_id": user_id,
                "event_type_code": code,
                "enabled": choice.enabled,
                "channels": choice.channels,
            }
            for code, choice in overrides.items()
        ]
    )
    result = session.execute(
        statement.on_conflict_do_update(
            index_elements=[EVENT_PREFERENCE.c.user_id, EVENT_PREFERENCE.c.event_type_code],
            set_={
                "enabled": statement.excluded.enabled,
                "channels": statement.excluded.channels,
                "updated_at": literal_column("now()"),
            },
        ).returning(*EVENT_PREFERENCE.c)
    )
    return list(result.mappings())


@router.get("", response_model=PreferencesOut, summary="Get a user's preferences")
def get_preferences(user_id: UserPath, session: DbSession) -> PreferencesOut:
    """The user's preferences; defaults (every channel on) if they never set any."""
    with session.begin():
        _require_user(session, user_id)
        row, overrides = stored_preferences(session, user_id)
    record = preferences_record(user_id, row, overrides, now=datetime.now().astimezone())
    return preferences_out(record, stored=row is not None)
