"""Request dependencies of the ingest API, as ``Annotated`` aliases.

The process-wide resources (engine, publisher, catalogue, settings) live on ``app.state``,
set up by :func:`services.ingest.app.create_app`'s lifespan; these aliases hand them to the
endpoints. ``Caller`` is the seam where authentication will go.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request, Security
from pydantic import AfterValidator
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from herald.auth import Principal, require_key
from herald.webapi import problem_responses
from schemas import Catalogue
from services.ingest.publisher import Publisher
from services.ingest.settings import IngestSettings
from services.ingest.validation import check_user_id


@dataclass(frozen=True)
class Caller:
    """Who is calling: an admin API key, named by its fingerprint (never the key itself)."""

    name: str


async def authorize(
    principal: Annotated[Principal, Security(require_key, scopes=["admin"])],
) -> Caller:
    """The admin routes (event types, users, preferences) need an API key with the ``admin``
    scope (``X-API-Key`` or a Bearer token); the key's rate-limit bucket is charged (429
    with Retry-After past it)."""
    return Caller(name=f"http-ingest:{principal.subject}")


async def authorize_events(
    principal: Annotated[Principal, Security(require_key, scopes=["events:write"])],
) -> Caller:
    """``POST /v1/events`` needs an API key with the ``events:write`` scope."""
    return Caller(name=f"http-ingest:{principal.subject}")


#: What every key route may answer before its handler runs: a missing or unknown API key
#: (401), a key without the route's scope (403), a body over the size limit (413, any
#: method), the key's rate limit or too many failed attempts from the address (429).
ADMIN_RESPONSES = problem_responses(401, 403, 413, 429)


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _session(request: Request) -> Iterator[Session]:
    # One connection for the whole request: record_lock's session-level advisory lock must be
    # taken and released on the same connection as the writes and commit it protects.
    state = request.app.state
    with state.engine.connect() as connection, state.sessions(bind=connection) as session:
        yield session


def _publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


def _catalogue(request: Request) -> Catalogue:
    catalogue: Catalogue = request.app.state.catalogue
    return catalogue


def _ingest_settings(request: Request) -> IngestSettings:
    settings: IngestSettings = request.app.state.ingest_settings
    return settings


#: The caller of ``POST /v1/events`` (a key with ``events:write``).
CallerDep = Annotated[Caller, Depends(authorize_events)]
#: The engine, for short reads that need no request-long connection (the events hot path).
DbEngine = Annotated[Engine, Depends(_engine)]
#: A session on a connection held for the request (admin reads and writes).
DbSession = Annotated[Session, Depends(_session)]
Publish = Annotated[Publisher, Depends(_publisher)]
Topics = Annotated[Catalogue, Depends(_catalogue)]
Limits = Annotated[IngestSettings, Depends(_ingest_settings)]
#: A ``{user_id}`` path parameter, checked like every user id.
UserPath = Annotated[
    str,
    Path(description="The application's user id.", examples=["user-42"]),
    AfterValidator(check_user_id),
]
