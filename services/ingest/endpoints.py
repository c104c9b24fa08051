"""``/v1/users/{user_id}/endpoints``: where a user's webhook and Slack deliveries go (admin).

One endpoint per user and kind (``webhook``: a URL Herald POSTs signed JSON to, with a
Standard Webhooks secret; ``slack``: a Slack incoming-webhook URL, no secret), stored in
``channel_endpoint``. After every change the user is republished on the compacted
``herald.users.v1`` with ``endpoints`` = the enabled ones (kind -> URL), so the router routes
(or skips) the two channels from the next event on. Secrets never leave PostgreSQL except in
the response of the ``PUT`` that set them.

A URL must be ``https://`` (or ``http://``) to a public address: loopback, private, link-local
and other internal addresses are refused (``422``, :mod:`herald.netguard`) unless
``HERALD_ENV=local``; the webhook sender checks the resolved address again at every send.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Body, Depends, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from herald.db.models import MAX_URL_LENGTH, ChannelEndpoint
from herald.db.upsert import upsert
from herald.netguard import BlockedEndpoint, check_endpoint_url
from herald.userrecords import enabled_endpoints, record_lock, user_outgoing
from herald.webapi import Problem, problem_responses
from herald.webhooks import SECRET_PREFIX, new_secret, secret_key
from schemas import Catalogue
from services.ingest.admin import publish_or_503
from services.ingest.deps import ADMIN_RESPONSES, DbSession, Publish, Topics, UserPath, authorize
from services.ingest.publisher import Publisher
from services.ingest.users import require_user

ENDPOINT = cast(Table, ChannelEndpoint.__table__)

#: How many bytes a given secret's key may have (the Standard Webhooks spec: 24 to 64).
_MIN_SECRET_BYTES, _MAX_SECRET_BYTES = 24, 64

#: The endpoint kinds (herald.channels.ENDPOINT_CHANNELS) as a path parameter.
Kind = Annotated[
    Literal["webhook", "slack"],
    Path(description="`webhook` (signed JSON) or `slack` (a Slack incoming webhook)."),
]

router = APIRouter(
    prefix="/v1/users/{user_id}/endpoints",
    tags=["endpoints"],
    dependencies=[Depends(authorize)],
    responses={**ADMIN_RESPONSES, **problem_responses(404, 422, 503)},
)


class EndpointIn(BaseModel):
    """Where to send a user's deliveries of one kind."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"url": "https://hooks.example.com/herald"}]},
    )

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="https:// (or http://) URL on a public address.",
    )
    secret: str | None = Field(
        None,
        description="webhook only: the signing secret, `whsec_` + base64 of 24 to 64 bytes. "
        "Left out: a new endpoint gets a generated one, an existing one keeps its own.",
    )
    rotate_secret: StrictBool = Field(
        False, description="webhook only: replace the secret by a generated one."
    )


class EndpointOut(BaseModel):
    """An endpoint as stored (never its secret)."""

    kind: str
    url: str
    signed: bool = Field(description="Whether deliveries are signed (a webhook's secret).")
    enabled: bool = Field(
        description="False once the endpoint answered 410 Gone; a PUT enables it again."
    )
    disabled_reason: str | None
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime


class EndpointWritten(EndpointOut):
    """An endpoint just written, with the secret this request set (shown only here)."""

    secret: str | None = Field(
        description="The signing secret when this PUT set one (given, generated or rotated); "
        "null when it kept the stored one, and for Slack. Never shown again."
    )


def check_secret(secret: str) -> str:
    """A signing secret as the Standard Webhooks spec writes it (``whsec_`` + base64 of 24 to
    64 bytes), or ``ValueError`` saying what is wrong."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"the secret must start with {SECRET_PREFIX!r}")
    key = secret_key(secret)
    if not _MIN_SECRET_BYTES <= len(key) <= _MAX_SECRET_BYTES:
        raise ValueError(
            f"the secret must decode to {_MIN_SECRET_BYTES} to {_MAX_SECRET_BYTES} bytes, "
            f"not {len(key)}"
        )
    return secret


def _invalid(detail: str) -> Problem:
    return Problem(422, "Request is not valid", detail, kind="validation-error")


def _endpoint_out(row: Any) -> EndpointOut:
    return EndpointOut(
        kind=row["kind"],
        url=row["url"],
        signed=row["secret"] is not None,
        enabled=row["enabled"],
        disabled_reason=row["disabled_reason"],
        disabled_at=row["disabled_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _stored(session: Session, user_id: str, kind: str) -> Any:
    query = select(ENDPOINT).where(ENDPOINT.c.user_id == user_id, ENDPOINT.c.kind == kind)
    return session.execute(query).mappings().first()


def _secret_to_set(kind: str, body: EndpointIn, stored: Any) -> str | None:
    """The secret this PUT sets; ``None`` when it keeps the stored one (or for Slack)."""
    if kind == "slack":
        if body.secret is not None or body.rotate_secret:
            raise _invalid("a Slack endpoint has no secret: leave out secret and rotate_secret")
        return None
    if body.secret is not None:
        if body.rotate_secret:
            raise _invalid("give either secret or rotate_secret, not both")
        try:
            return check_secret(body.secret)
        except ValueError as exc:
            raise _invalid(f"secret: {exc}") from None
    if body.rotate_secret or stored is None or stored["secret"] is None:
        return new_secret()
    return None


def _publish_user(
    publisher: Publisher,
    topics: Catalogue,
    user: Any,
    endpoints: dict[str, str],
    *,
    saved: str,
    retry: str,
) -> None:
    # Called under the user's record lock, after the commit of the transaction that read
    # ``endpoints``: nobody else publishes this user in between.
    publish_or_503(publisher, [user_outgoing(topics, user, endpoints)], saved=saved, retry=retry)


@router.put(
    "/{kind}",
    response_model=EndpointWritten,
    responses={201: {"model": EndpointWritten, "description": "Created"}, **problem_responses(400)},
    summary="Register or replace a user's webhook or Slack endpoint",
)
def put_endpoint(
    user_id: UserPath,
    kind: Kind,
    body: Annotated[EndpointIn, Body()],
    session: DbSession,
    publisher: Publish,
    topics: Topics,
    response: Response,
) -> EndpointWritten:
    """Create (201) or replace (200) the user's endpoint of this kind, enable it (an endpoint
    disabled after a 410 is enabled again), and republish the user so the router uses it.

    A new webhook endpoint gets a generated secret unless one is given; the response shows
    the secret this request set, and no later response does. A URL on a loopback, private or
    reserved address is refused (``422``) outside local mode. Repeating the PUT republishes,
    which completes a write that got ``503`` from Kafka.
    """
    url = body.url.strip()
    try:
        check_endpoint_url(url)
    except BlockedEndpoint as exc:
        raise Problem(
            422, "Endpoint not allowed", f"url: {exc}", kind="endpoint-not-allowed"
        ) from None
    with record_lock(session, "user", user_id):
        with session.begin():
            user = require_user(session, user_id)
            stored = _stored(session, user_id, kind)
            secret = _secret_to_set(kind, body, stored)
            values: dict[str, Any] = {
                "user_id": user_id,
                "kind": kind,
                "url": url,
                "enabled": True,
                "disabled_reason": None,
                "disabled_at": None,
            }
            if secret is not None:
                values["secret"] = secret
            row = session.execute(upsert(ENDPOINT, values, ["user_id", "kind"])).mappings().one()
            endpoints = enabled_endpoints(session, user_id)
        _publish_user(
            publisher,
            topics,
            user,
            endpoints,
            saved=f"the {kind} endpoint of user {user_id!r} is saved",
            retry="repeat this PUT to publish it (give the secret shown here, or it is kept)",
        )
    if stored is None:
        response.status_code = status.HTTP_201_CREATED
    return EndpointWritten(**_endpoint_out(row).model_dump(), secret=secret)


@router.get("", response_model=list[EndpointOut], summary="List a user's endpoints")
def list_endpoints(user_id: UserPath, session: DbSession) -> list[EndpointOut]:
    """The user's endpoints, enabled or not, without their secrets."""
    with session.begin():
        require_user(session, user_id)
        rows = session.execute(
            select(ENDPOINT).where(ENDPOINT.c.user_id == user_id).order_by(ENDPOINT.c.kind)
        ).mappings()
        return [_endpoint_out(row) for row in rows]


@router.delete(
    "/{kind}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Remove a user's webhook or Slack endpoint",
)
def delete_endpoint(
    user_id: UserPath, kind: Kind, session: DbSession, publisher: Publish, topics: Topics
) -> Response:
    """Remove the endpoint (``204`` whether or not there was one) and republish the user: the
    router skips the channel for them from then on, and deliveries still in flight are
    skipped by the sender."""
    with record_lock(session, "user", user_id):
        with session.begin():
            user = require_user(session, user_id)
            session.execute(
                delete(ENDPOINT).where(ENDPOINT.c.user_id == user_id, ENDPOINT.c.kind == kind)
            )
            endpoints = enabled_endpoints(session, user_id)
        _publish_user(
            publisher,
            topics,
            user,
            endpoints,
            saved=f"the {kind} endpoint of user {user_id!r} is removed",
            retry="repeat this DELETE to publish it",
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
