"""``/v1/users/{user_id}/preferences`` on the read API: the user reads and changes their own
preferences with their token or session token (or an API key with ``admin``).

The same bodies, validation, storage and compacted-topic publish as the ingest API's admin
route: both call :mod:`services.preferences`. The read API's Kafka producer is opened on the
first change, so a read API nobody changes preferences through never connects to Kafka.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Depends, FastAPI, Request
from sqlalchemy.orm import Session

from herald.auth import user_or_key_with
from herald.settings import KafkaSettings
from herald.webapi import problem_responses
from schemas import CATALOGUE, Catalogue
from services.inapp_store.api.deps import UserPath
from services.ingest.publisher import Publisher
from services.preferences import PreferencesIn, PreferencesOut, read_preferences, write_preferences

SERVICE = "read_api"

router = APIRouter(
    prefix="/v1/users/{user_id}/preferences",
    tags=["preferences"],
    dependencies=[user_or_key_with("admin")],
    responses=problem_responses(401, 403, 404, 413, 422, 429, 503),
)


class LazyPublisher:
    """The read API's Kafka publisher, created on first use (thread-safe)."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float) -> None:
        self.kafka = kafka
        self.timeout_s = timeout_s
        self._publisher: Publisher | None = None
        self._lock = threading.Lock()

    def get(self) -> Publisher:
        with self._lock:
            if self._publisher is None:
                self._publisher = Publisher(self.kafka, timeout_s=self.timeout_s, service=SERVICE)
            return self._publisher

    def close(self) -> None:
        with self._lock:
            publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)


def install_preferences(app: FastAPI, kafka: KafkaSettings, publish_timeout_s: float) -> None:
    """Give ``app`` what the preference routes need (close ``app.state.preferences_publisher``
    at shutdown)."""
    app.state.preferences_publisher = LazyPublisher(kafka, publish_timeout_s)
    app.state.catalogue = CATALOGUE.with_prefix(kafka.topic_prefix)


def _session(request: Request) -> Iterator[Session]:
    # One connection for the request: the write's advisory lock is taken and released on it.
    with (
        request.app.state.engine.connect() as connection,
        Session(bind=connection, expire_on_commit=False) as session,
    ):
        yield session


def _publisher(request: Request) -> Publisher:
    lazy: LazyPublisher = request.app.state.preferences_publisher
    return lazy.get()


def _catalogue(request: Request) -> Catalogue:
    catalogue: Catalogue = request.app.state.catalogue
    return catalogue


DbSession = Annotated[Session, Depends(_session)]


@router.get("", response_model=PreferencesOut, summary="Get my preferences")
def get_preferences(user_id: UserPath, session: DbSession) -> PreferencesOut:
    """The user's channel switches, quiet hours (in their time zone) and per-event-type
    choices; every active event type is listed, mandatory ones ``locked``. Defaults (every
    channel on) if the user never set any; ``404`` if the user is not registered."""
    return read_preferences(session, user_id)


@router.put(
    "",
    response_model=PreferencesOut,
    responses=problem_responses(400),
    summary="Set my preferences",
)
def put_preferences(
    user_id: UserPath,
    body: Annotated[PreferencesIn, Body()],
    session: DbSession,
    publisher: Annotated[Publisher, Depends(_publisher)],
    topics: Annotated[Catalogue, Depends(_catalogue)],
) -> PreferencesOut:
    """Replace the user's preferences (fields left out take their defaults; event types left
    out of ``event_overrides`` lose their override) and publish them: the router applies them
    to the next event. Turning off a mandatory (locked) event type is ``422``."""
    return write_preferences(session, publisher, topics, user_id, body)
