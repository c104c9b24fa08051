"""``/v1/users/{user_id}/preferences``: a user's channel switches, quiet hours and per-event-type
choices (admin).

The logic (validation, storage, the publish to the compacted ``herald.preferences.v1``) lives in
:mod:`services.preferences`, shared with the read API's user-scoped routes; this module is the
admin routes and re-exports what :mod:`services.ingest.users` uses.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from herald.webapi import problem_responses
from services.ingest.deps import ADMIN_RESPONSES, DbSession, Publish, Topics, UserPath, authorize
from services.preferences import (
    SCHEMA,
    EventOverride,
    PreferencesIn,
    PreferencesOut,
    preferences_outgoing,
    preferences_record,
    read_preferences,
    stored_preferences,
    write_preferences,
)

__all__ = [
    "SCHEMA",
    "EventOverride",
    "PreferencesIn",
    "PreferencesOut",
    "preferences_outgoing",
    "preferences_record",
    "router",
    "stored_preferences",
]

router = APIRouter(
    prefix="/v1/users/{user_id}/preferences",
    tags=["preferences"],
    dependencies=[Depends(authorize)],
    responses={**ADMIN_RESPONSES, **problem_responses(404, 422, 503)},
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
    out of ``event_overrides`` lose their override) and publish them. An override turning off
    a mandatory event type is ``422``."""
    return write_preferences(session, publisher, topics, user_id, body)


@router.get("", response_model=PreferencesOut, summary="Get a user's preferences")
def get_preferences(user_id: UserPath, session: DbSession) -> PreferencesOut:
    """The user's preferences; defaults (every channel on) if they never set any, with every
    active event type and the user's choice (mandatory ones ``locked``)."""
    return read_preferences(session, user_id)
