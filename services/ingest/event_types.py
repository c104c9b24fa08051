"""``/v1/event-types``: the registry of event types (admin).

Every write goes to PostgreSQL first, then the full current record is published to the
compacted topic ``herald.event-types.v1`` (key: code), which the router reads into a global
table; the request returns once Kafka has acknowledged it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Body, Depends, Path, Query, Response, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator
from sqlalchemy import Table, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import Session

from herald.channels import CHANNELS, ENDPOINT_CHANNELS
from herald.db.models import EventType
from herald.db.upsert import upsert
from herald.serde import encode
from herald.streaming import Outgoing
from herald.templates import generate_templates
from herald.userrecords import record_lock
from herald.webapi import Problem, problem_responses
from schemas import Catalogue
from services.ingest.admin import publish_or_503
from services.ingest.deps import ADMIN_RESPONSES, DbSession, Publish, Topics, authorize
from services.ingest.validation import (
    EVENT_TYPE_CODE,
    Channel,
    EventTypeCode,
    TemplateSource,
    Text,
    check_event_type_code,
    unique_channels,
)

SCHEMA = "herald.EventType"
EVENT_TYPE = cast(Table, EventType.__table__)

router = APIRouter(
    prefix="/v1/event-types",
    tags=["event types"],
    dependencies=[Depends(authorize)],
    responses={**ADMIN_RESPONSES, **problem_responses(422, 503)},
)

CodePath = Annotated[str, Path(description="The event type's code.", examples=["comment.created"])]
#: A code that may be created: it must be well-formed.
NewCodePath = Annotated[CodePath, AfterValidator(check_event_type_code)]


class Template(BaseModel):
    """Jinja2 templates of one channel; variables come from the event's ``context``."""

    model_config = ConfigDict(extra="forbid")

    title: TemplateSource = Field("", description="Email subject / in-app heading.")
    body: TemplateSource = Field(min_length=1, description="Plain-text body.")
    html: TemplateSource | None = Field(None, description="HTML body (email only).")


#: Seconds per unit of a digest window (``"90s"``, ``"10m"``, ``"1h"``, ``"1d"``).
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
#: The longest digest window: a week (the state of an open window lives in the router).
MAX_DIGEST_WINDOW_S = 7 * 86_400


def window_seconds(value: str | int) -> int:
    """A digest window as seconds: an integer count of seconds, or a number with a unit
    (``s``, ``m``, ``h``, ``d``), 1 second to a week; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("window: give seconds or a duration such as '10m'")
    if isinstance(value, int):
        seconds = value
    else:
        text = value.strip().lower()
        unit = _WINDOW_UNITS.get(text[-1:]) if text[-1:].isalpha() else 1
        number = text[:-1] if text[-1:].isalpha() else text
        if unit is None or not number.isdigit():
            raise ValueError(f"window: {value!r} is not a duration such as '90s', '10m' or '1h'")
        seconds = int(number) * unit
    if not 1 <= seconds <= MAX_DIGEST_WINDOW_S:
        raise ValueError(f"window: {value!r} must be 1 second to 7 days")
    return seconds


class Digest(BaseModel):
    """Gather this type's events for one user (and key) within the window into one digest
    notification, rendered from the ``digest`` template."""

    model_config = ConfigDict(extra="forbid")

    window: Annotated[str | int, AfterValidator(window_seconds)] = Field(
        description="Seconds, or a duration with a unit: '90s', '10m', '1h', '1d' (at most 7 "
        "days); the window starts with its first event.",
        examples=["10m"],
    )
    key: str | None = Field(
        None,
        max_length=64,
        description="Context key grouping events within a user's window (e.g. post_id).",
        examples=["post_id"],
    )

    @model_validator(mode="after")
    def _key(self) -> Digest:
        if self.key is not None and not self.key.isidentifier():
            raise ValueError(f"digest.key: {self.key!r} is not a valid variable name")
        return self


class DigestOut(BaseModel):
    window_s: int
    key: str | None = None


class EventTypeFields(BaseModel):
    """An event type's settings (everything but its code)."""

    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=200, examples=["New comment"])
    description: Text = Field("", max_length=2000, examples=["Someone commented on your post."])
    default_enabled: StrictBool = Field(True, description="Whether users who never chose get it.")
    is_active: StrictBool = Field(True, description="Inactive types are refused at ingest.")
    mandatory: StrictBool = Field(False, description="Ignores user opt-outs (security alerts).")
    urgent: StrictBool = Field(False, description="Delivered during quiet hours.")
    channels: list[Channel] = Field(
        default_factory=lambda: cast(list[Channel], ["inapp", "email"]),
        min_length=1,
        max_length=len(CHANNELS),
    )
    digest: Digest | None = Field(None, description="A digest window; null: none.")
    templates: dict[Channel | Literal["digest"], Template] | None = Field(
        None,
        description="Templates per channel. Channels left out keep their stored template, or "
        "get a generated one listing the context keys; webhook and Slack left out use the "
        "in-app template when the type has the in-app channel.",
    )
    context_keys: list[str] | None = Field(
        None,
        description="Context keys to list in generated templates (used for channels without a "
        "template in the request; when given, stored templates are regenerated).",
        examples=[["post_title", "comment_url"]],
    )

    @model_validator(mode="after")
    def _consistent(self) -> EventTypeFields:
        self.channels = cast(list[Channel], unique_channels(list(self.channels)))
        for channel, template in (self.templates or {}).items():
            if channel == "digest":  # the digest's template, for every channel
                continue
            if channel not in self.channels:
                raise ValueError(
                    f"templates has a {channel!r} template but channels is {self.channels}; "
                    f"add {channel!r} to channels or drop its template"
                )
            if template.html is not None and channel != "email":
                raise ValueError(f"templates.{channel}.html: only the email channel uses html")
        for key in self.context_keys or []:
            if not key.isidentifier():
                raise ValueError(f"context_keys: {key!r} is not a valid variable name")
        return self


class EventTypeCreate(EventTypeFields):
    """A new event type."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "comment.created",
                    "name": "New comment",
                    "description": "Someone commented on your post.",
                    "channels": ["inapp", "email"],
                    "context_keys": ["post_title", "comment_url"],
                },
                {
                    "code": "security.new_device",
                    "name": "New sign-in",
                    "mandatory": True,
                    "urgent": True,
                    "channels": ["email", "sms"],
                    "templates": {
                        "email": {
                            "title": "New sign-in from {{ device }}",
                            "body": "We noticed a sign-in from {{ device }} at {{ time }}.",
                            "html": "<p>New sign-in from <b>{{ device }}</b></p>",
                        },
                        "sms": {"body": "New sign-in from {{ device }}"},
                    },
                },
            ]
        }
    )

    code: EventTypeCode


class EventTypeUpdate(EventTypeFields):
    """An event type's full settings; ``code`` may be repeated but must match the path."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "New comment", "channels": ["inapp", "email", "sms"]}]
        }
    )

    code: EventTypeCode | None = None


class TemplateOut(BaseModel):
    title: str
    body: str
    html: str | None = None


class EventTypeOut(BaseModel):
    """An event type as stored."""

    code: str
    name: str
    description: str
    default_enabled: bool
    is_active: bool
    mandatory: bool
    urgent: bool
    channels: list[str]
    templates: dict[str, TemplateOut]
    digest: DigestOut | None = None
    created_at: datetime
    updated_at: datetime


class EventTypeList(BaseModel):
    items: list[EventTypeOut]


def _template(stored: Mapping[str, Any]) -> dict[str, str | None]:
    return {
        "title": stored.get("title") or "",
        "body": stored.get("body") or "",
        "html": stored.get("html"),
    }


def resolve_templates(
    fields: EventTypeFields, stored: Mapping[str, Any] | None
) -> dict[str, dict[str, str | None]]:
    """One template per channel: the request's, else the stored one (unless ``context_keys``
    asks for regeneration), else one generated from the name and ``context_keys``. Webhook
    and Slack without one of their own get none when the type has the in-app channel: the
    router renders them from the in-app template (so they follow it when it changes)."""
    chosen: dict[str, dict[str, str | None]] = {
        channel: template.model_dump() for channel, template in (fields.templates or {}).items()
    }
    if fields.context_keys is None:
        for channel in fields.channels:
            if channel not in chosen and stored and channel in stored:
                chosen[channel] = _template(stored[channel])
    inapp_fallback = "inapp" in fields.channels
    missing = [
        channel
        for channel in fields.channels
        if channel not in chosen and not (inapp_fallback and channel in ENDPOINT_CHANNELS)
    ]
    if missing:
        chosen.update(generate_templates(fields.name, fields.context_keys or [], missing))
    return {channel: chosen[channel] for channel in fields.channels if channel in chosen}


def event_type_values(
    code: str, fields: EventTypeFields, stored_templates: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The ``event_type`` row for a request (templates resolved)."""
    return {
        "code": code,
        "name": fields.name,
        "description": fields.description,
        "default_enabled": fields.default_enabled,
        "is_active": fields.is_active,
        "mandatory": fields.mandatory,
        "urgent": fields.urgent,
        "channels": list(fields.channels),
        "templates": {
            **resolve_templates(fields, stored_templates),
            **_digest_template(fields, stored_templates),
        },
        "digest": (
            {"window_s": fields.digest.window, "key": fields.digest.key} if fields.digest else None
        ),
    }


def _digest_template(
    fields: EventTypeFields, stored: Mapping[str, Any] | None
) -> dict[str, dict[str, str | None]]:
    """The ``digest`` template: the request's, else the stored one (the router renders a
    generated one when there is none, see services.router.digests)."""
    given = (fields.templates or {}).get("digest")
    if given is not None:
        return {"digest": given.model_dump()}
    if stored and "digest" in stored:
        return {"digest": _template(stored["digest"])}
    return {}


def event_type_record(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The ``herald.EventType`` record of a stored row."""
    return {
        "code": row["code"],
        "name": row["name"],
        "description": row["description"] or "",
        "default_enabled": row["default_enabled"],
        "is_active": row["is_active"],
        "mandatory": row["mandatory"],
        "channels": list(row["channels"]),
        "templates": {ch: _template(t) for ch, t in (row["templates"] or {}).items()},
        "urgent": row["urgent"],
        "digest": row.get("digest"),
        "updated_at": row["updated_at"],
    }


def event_type_out(row: Mapping[Any, Any]) -> EventTypeOut:
    """The API representation of a stored row."""
    record = event_type_record(row)
    return EventTypeOut(
        **{k: v for k, v in record.items() if k != "updated_at"},
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _outgoing(topics: Catalogue, row: Mapping[Any, Any]) -> Outgoing:
    return Outgoing(topics.event_types.name, row["code"], encode(SCHEMA, event_type_record(row)))


def _is_code(code: str) -> bool:
    # Every stored code was checked on creation: a malformed one (say with a NUL character,
    # which PostgreSQL text cannot even hold) names no event type, so no query is needed.
    return EVENT_TYPE_CODE.fullmatch(code) is not None


def _stored(session: Session, code: str) -> RowMapping | None:
    if not _is_code(code):
        return None
    return session.execute(select(EVENT_TYPE).where(EVENT_TYPE.c.code == code)).mappings().first()


def _not_found(code: str) -> Problem:
    return Problem(
        404,
        "Event type not found",
        f"no event type {code!r}; create it with POST /v1/event-types",
        kind="event-type-not-found",
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=EventTypeOut,
    responses=problem_responses(400, 409),
    summary="Create an event type",
)
def create_event_type(
    body: Annotated[EventTypeCreate, Body()], session: DbSession, publisher: Publish, topics: Topics
) -> EventTypeOut:
    """Register a new event type; 409 if the code exists (use PUT to change it).

    Without ``templates``, templates for every channel are generated from the name and the
    optional ``context_keys``.
    """
    with record_lock(session, "event-type", body.code):
        with session.begin():
            row = (
                session.execute(
                    insert(EVENT_TYPE)
                    .values(event_type_values(body.code, body, None))
                    .on_conflict_do_nothing(index_elements=[EVENT_TYPE.c.code])
                    .returning(*EVENT_TYPE.c)
                )
                .mappings()
                .first()
            )
        if row is None:
            raise Problem(
                409,
                "Event type exists",
                f"event type {body.code!r} already exists; change it with "
                f"PUT /v1/event-types/{body.code}",
                kind="event-type-exists",
            )
        publish_or_503(
            publisher,
            [_outgoing(topics, row)],
            saved=f"event type {body.code!r} is saved",
            retry=f"publish it by repeating the change as PUT /v1/event-types/{body.code}",
        )
    return event_type_out(row)


@router.put(
    "/{code}",
    response_model=EventTypeOut,
    responses={
        201: {"model": EventTypeOut, "description": "Created"},
        **problem_responses(400),
    },
    summary="Create or replace an event type",
)
def put_event_type(
    code: NewCodePath,
    body: Annotated[EventTypeUpdate, Body()],
    session: DbSession,
    publisher: Publish,
    topics: Topics,
    response: Response,
) -> EventTypeOut:
    """Create the event type (201) or replace its settings (200), and republish it.

    Idempotent: repeating it republishes the same record, which is how a write that got 503
    from Kafka is completed.
    """
    if body.code is not None and body.code != code:
        raise Problem(
            422,
            "Request is not valid",
            f"code: {body.code!r} in the body does not match {code!r} in the path",
            kind="validation-error",
        )
    with record_lock(session, "event-type", code):
        with session.begin():
            stored = _stored(session, code)
            values = event_type_values(code, body, stored["templates"] if stored else None)
            row = session.execute(upsert(EVENT_TYPE, values, ["code"])).mappings().one()
        publish_or_503(
            publisher,
            [_outgoing(topics, row)],
            saved=f"event type {code!r} is saved",
            retry="repeat this PUT to publish it",
        )
    if stored is None:
        response.status_code = status.HTTP_201_CREATED
    return event_type_out(row)


@router.get("", response_model=EventTypeList, summary="List event types")
def list_event_types(
    session: DbSession,
    active: Annotated[
        bool | None, Query(description="Only active (true) or inactive (false) types.")
    ] = None,
) -> EventTypeList:
    """Every registered event type, by code."""
    query = select(EVENT_TYPE).order_by(EVENT_TYPE.c.code)
    if active is not None:
        query = query.where(EVENT_TYPE.c.is_active.is_(active))
    return EventTypeList(items=[event_type_out(row) for row in session.execute(query).mappings()])


@router.get(
    "/{code}",
    response_model=EventTypeOut,
    responses=problem_responses(404),
    summary="Get an event type",
)
def get_event_type(code: CodePath, session: DbSession) -> EventTypeOut:
    """One event type, active or not."""
    row = _stored(session, code)
    if row is None:
        raise _not_found(code)
    return event_type_out(row)


@router.delete(
    "/{code}",
    response_model=EventTypeOut,
    responses=problem_responses(404),
    summary="Deactivate an event type",
)
def deactivate_event_type(
    code: CodePath, session: DbSession, publisher: Publish, topics: Topics
) -> EventTypeOut:
    """Deactivate (``is_active`` false): new events of this type are refused; history and
    user preferences stay. PUT with ``is_active: true`` brings it back."""
    if not _is_code(code):
        raise _not_found(code)
    with record_lock(session, "event-type", code):
        with session.begin():
            row = (
                session.execute(
                    update(EVENT_TYPE)
                    .where(EVENT_TYPE.c.code == code)
                    .values(is_active=False, updated_at=literal_column("now()"))
                    .returning(*EVENT_TYPE.c)
                )
                .mappings()
                .first()
            )
        if row is None:
            raise _not_found(code)
        publish_or_503(
            publisher,
            [_outgoing(topics, row)],
            saved=f"event type {code!r} is deactivated",
            retry="repeat this DELETE to publish it",
        )
    return event_type_out(row)
