"""``/v1/users/{user_id}``: recipients and how to reach them (admin).

A write goes to ``user_account`` first, then the user is published as ``herald.User`` on the
compacted ``herald.users.v1`` (key: user id). A user created without preferences also gets
default preferences (every channel on); the user's current preferences are published with the
user, so the router knows the user's choices from the first event on. The record also carries
the user's enabled webhook and Slack endpoints (``endpoints``: kind -> URL, see
:mod:`services.ingest.endpoints`), so every publish of the user repeats them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Depends, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from herald.db.models import NotificationPreference
from herald.db.upsert import upsert
from herald.userrecords import (
    USER,
    enabled_endpoints,
    record_lock,
    user_outgoing,
    user_record,
)
from herald.webapi import Problem, problem_responses
from services.ingest.admin import publish_or_503
from services.ingest.deps import ADMIN_RESPONSES, DbSession, Publish, Topics, UserPath, authorize
from services.ingest.preferences import (
    preferences_outgoing,
    preferences_record,
    stored_preferences,
)
from services.ingest.validation import (
    Email,
    Locale,
    Phone,
    Text,
    TimeZoneName,
    UserId,
)

PREFERENCE = cast(Table, NotificationPreference.__table__)

router = APIRouter(
    prefix="/v1/users",
    tags=["users"],
    dependencies=[Depends(authorize)],
    responses={**ADMIN_RESPONSES, **problem_responses(422, 503)},
)


class UserIn(BaseModel):
    """A user's contact data (what is left out takes its default)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.com",
                    "phone": "+14155550123",
                    "locale": "en-GB",
                    "timezone": "Europe/London",
                    "display_name": "Ada",
                }
            ]
        },
    )

    user_id: UserId | None = Field(None, description="May repeat the path's user id.")
    email: Email | None = None
    phone: Phone | None = Field(None, description="E.164; spaces and dashes are dropped.")
    locale: Locale = "en"
    timezone: TimeZoneName = Field("UTC", description="IANA name, used for quiet hours.")
    display_name: Text | None = Field(None, max_length=200)


class UserOut(BaseModel):
    """A user as stored."""

    user_id: str
    email: str | None
    phone: str | None
    locale: str
    timezone: str
    display_name: str | None
    created_at: datetime
    updated_at: datetime


def user_out(row: Mapping[Any, Any]) -> UserOut:
    """The API representation of a stored row."""
    return UserOut(
        **{k: v for k, v in user_record(row).items() if k not in ("updated_at", "endpoints")},
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _stored(session: Session, user_id: str) -> Any:
    return session.execute(select(USER).where(USER.c.id == user_id)).mappings().first()


@router.put(
    "/{user_id}",
    response_model=UserOut,
    responses={201: {"model": UserOut, "description": "Created"}, **problem_responses(400)},
    summary="Create or replace a user",
)
def put_user(
    user_id: UserPath,
    body: Annotated[UserIn, Body()],
    session: DbSession,
    publisher: Publish,
    topics: Topics,
    response: Response,
) -> UserOut:
    """Create the user (201) or replace their contact data (200), and publish it.

    A user without preferences gets default ones (every channel on); the user's preferences
    are published with the user.
    Idempotent: repeating it republishes, which completes a write that got 503 from Kafka.
    """
    if body.user_id is not None and body.user_id != user_id:
        raise Problem(
            422,
            "Request is not valid",
            f"user_id: {body.user_id!r} in the body does not match {user_id!r} in the path",
            kind="validation-error",
        )
    values = {
        "id": user_id,
        "email": body.email,
        "phone": body.phone,
        "locale": body.locale,
        "timezone": body.timezone,
        "display_name": body.display_name,
    }
    # The same lock as preferences writes: both publish this user's preferences.
    with record_lock(session, "user", user_id):
        with session.begin():
            existed = _stored(session, user_id) is not None
            row = session.execute(upsert(USER, values, ["id"])).mappings().one()
            # Default preferences unless the user has some; then the current preferences are
            # published with the user every time, so repeating a PUT that got 503 from Kafka
            # also completes the preferences it created.
            session.execute(
                insert(PREFERENCE)
                .values(user_id=user_id)
                .on_conflict_do_nothing(index_elements=[PREFERENCE.c.user_id])
            )
            prefs_row, overrides = stored_preferences(session, user_id)
            endpoints = enabled_endpoints(session, user_id)
        prefs = preferences_record(user_id, prefs_row, overrides, now=row["updated_at"])
        records = [user_outgoing(topics, row, endpoints), preferences_outgoing(topics, prefs)]
        publish_or_503(
            publisher,
            records,
            saved=f"user {user_id!r} is saved",
            retry="repeat this PUT to publish it",
        )
    if not existed:
        response.status_code = status.HTTP_201_CREATED
    return user_out(row)


@router.get(
    "/{user_id}",
    response_model=UserOut,
    responses=problem_responses(404),
    summary="Get a user",
)
def get_user(user_id: UserPath, session: DbSession) -> UserOut:
    """One user's contact data."""
    return user_out(require_user(session, user_id))


def require_user(session: Session, user_id: str) -> Any:
    """The stored ``user_account`` row; ``404`` (``user-not-found``) if there is none."""
    row = _stored(session, user_id)
    if row is None:
        raise Problem(
            404,
            "User not found",
            f"no user {user_id!r}; create it with PUT /v1/users/{user_id}",
            kind="user-not-found",
        )
    return row
