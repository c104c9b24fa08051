"""Request dependencies of the read API, as ``Annotated`` aliases.

The process-wide resources (engine, broker, settings) live on ``app.state``, set by
:func:`services.inapp_store.api.app.create_app`; these aliases hand them to the endpoints.
Who may call is decided by one router-level dependency from :mod:`herald.auth`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Path, Request
from pydantic import AfterValidator
from sqlalchemy import Connection, Engine

from herald.auth import check_user_id
from services.inapp_store.api.broker import InboxBroker
from services.inapp_store.api.settings import ReadApiSettings


def as_utc(moment: datetime | None) -> datetime | None:
    """A query-string time with its zone; one written without a zone is read as UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _connection(request: Request) -> Iterator[Connection]:
    # A sync dependency: FastAPI runs it (and the sync endpoints using it) in its thread pool,
    # so database waits never block the event loop.
    with _engine(request).connect() as connection:
        yield connection


def _broker(request: Request) -> InboxBroker:
    broker: InboxBroker = request.app.state.broker
    return broker


def _settings(request: Request) -> ReadApiSettings:
    settings: ReadApiSettings = request.app.state.read_api_settings
    return settings


def _schema(request: Request) -> str:
    schema: str = request.app.state.schema
    return schema


DbEngine = Annotated[Engine, Depends(_engine)]
#: A connection held for the request; writes open their own transaction on it.
Db = Annotated[Connection, Depends(_connection)]
Broker = Annotated[InboxBroker, Depends(_broker)]
Config = Annotated[ReadApiSettings, Depends(_settings)]
#: The database schema (named in real-time events).
Schema = Annotated[str, Depends(_schema)]
#: The ``{user_id}`` path parameter.
UserPath = Annotated[
    str,
    Path(description="The application's user id.", examples=["user-42"]),
    AfterValidator(check_user_id),
]
#: The ``{notification_id}`` path parameter.
NotificationPath = Annotated[
    uuid.UUID,
    Path(
        description="The notification's id.",
        examples=["7d444840-9dc0-51d8-8b0f-5a2a1f5bc3c1"],
    ),
]
