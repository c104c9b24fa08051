"""``POST /v1/users/{user_id}/session``: exchange a user's long-lived credential for a
short-lived session token (what a browser should hold).

The product's backend (or the signed-in user's front end, once) presents the user's token
(``X-User-Token``) or an API key with ``tokens:mint``, and gets a signed token that expires
(``HERALD_SESSION_TTL_S``, or shorter on request). The browser then uses only the session
token, in ``X-User-Token`` and in the stream's ``?token=``, so what leaks into a URL or a log
stops working by itself. A session token cannot mint another: it would never expire.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Security, status
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from herald.auth import Authenticator, Principal, get_authenticator, require_user
from herald.webapi import Problem, problem_responses
from services.inapp_store.api.deps import UserPath

router = APIRouter(
    prefix="/v1/users/{user_id}",
    tags=["sessions"],
    responses=problem_responses(400, 401, 403, 413, 422, 429),
)


class SessionIn(BaseModel):
    """How long the session should last (at most, and by default, ``HERALD_SESSION_TTL_S``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ttl_s": 900}]})

    ttl_s: StrictInt | None = Field(
        None,
        ge=1,
        le=86_400,
        description="Seconds until it expires; shorter than the default only.",
    )


class SessionOut(BaseModel):
    """A session token for one user."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "user-42",
                    "token": "hs1.eyJleHAiOjE3MDAwMDM2MDAsImlhdCI6MTcwMDAwMDAwMCwic3ViIjoidXNlci00"
                    "MiJ9.qv0Zb8w8m4b7l2kq1tXc0Xq7S9i4bF6yJcWzH3kN1aA",
                    "expires_at": "2023-11-14T23:13:20Z",
                }
            ]
        }
    )

    user_id: str
    token: str = Field(
        description="Send as X-User-Token (or ?token= on the stream) until it expires."
    )
    expires_at: datetime


@router.post(
    "/session",
    response_model=SessionOut,
    status_code=status.HTTP_201_CREATED,
    summary="Exchange a user's token for a session token",
)
def create_session(
    user_id: UserPath,
    principal: Annotated[Principal, Security(require_user, scopes=["tokens:mint"])],
    authenticator: Annotated[Authenticator, Depends(get_authenticator)],
    body: Annotated[SessionIn | None, Body()] = None,
) -> SessionOut:
    """A signed token opening this user's inbox, stream and preferences until it expires.
    Needs the user's own token (``X-User-Token``, not a session token) or an API key with the
    ``tokens:mint`` scope. ``ttl_s`` may shorten the session, never lengthen it past
    ``HERALD_SESSION_TTL_S``. Nothing is stored."""
    if principal.is_session:
        raise Problem(
            403,
            "Forbidden",
            "a session token cannot mint another session; use the user's token or an API key "
            "with the tokens:mint scope",
            kind="forbidden",
        )
    ttl = body.ttl_s if body is not None else None
    longest = authenticator.settings.session_ttl_s
    if ttl is not None and ttl > longest:
        raise Problem(
            422,
            "Request is not valid",
            f"ttl_s: a session lasts at most {longest} seconds (HERALD_SESSION_TTL_S), not {ttl}",
            kind="validation-error",
            errors=[{"field": "ttl_s", "message": f"at most {longest}"}],
        )
    token, expires = authenticator.session_for(user_id, ttl)
    return SessionOut(user_id=user_id, token=token, expires_at=datetime.fromtimestamp(expires, UTC))
