"""The read API application: ``create_app(settings)`` wires the routers, security, limits,
problem-details errors and metrics around one engine and one real-time broker per process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine

from herald.auth import Authenticator, AuthSettings, install_auth
from herald.db import make_engine
from herald.limits import RateLimiter, install_body_limit
from herald.settings import Settings, get_settings
from herald.webapi import (
    ReadinessCache,
    install_database_problem_handler,
    install_metrics,
    install_problem_handlers,
)
from services.inapp_store.api import (
    health,
    inbox,
    notifications,
    preferences,
    sessions,
    stream,
    tokens,
    ui,
)
from services.inapp_store.api.broker import FetchNotifications, InboxBroker
from services.inapp_store.api.models import NotificationOut
from services.inapp_store.api.queries import notifications_by_id
from services.inapp_store.api.settings import ReadApiSettings

SERVICE = "read_api"

DESCRIPTION = """
A user's notifications, as a product's front end shows them: the inbox (newest first, cursor
pagination, filters), the unread count for the bell icon, read/unread/archive, each
notification's delivery status per channel with its attempt history, and a real-time stream
(Server-Sent Events) of new notifications and read-state changes.

**Authentication.** Every `/v1/users/{user_id}/...` endpoint takes either

* that user's token, `X-User-Token: <token>` (on the stream also `?token=<token>`), where
  `token = hex(HMAC-SHA256(HERALD_USER_TOKEN_SECRET, user_id))`: the product's backend computes
  it (`python -m herald.auth user-token USER_ID`, or `POST /v1/users/{user_id}/token` with an
  admin key) and hands it to the signed-in user; or
* a session token (`hs1.…`) from `POST /v1/users/{user_id}/session`, sent the same way: it
  opens the same user's data until it expires (`401` with problem type
  `urn:herald:problem:session-expired` after that); or
* an API key (`X-API-Key: <key>` or `Authorization: Bearer <key>`, from
  `HERALD_ADMIN_API_KEYS`) with the scope the operation lists: `inbox:read` to read,
  `inbox:write` to change read or archive state, `tokens:mint` to mint user tokens and
  session tokens, `admin` to change another user's preferences.

Missing or unknown credentials are `401`; a token for another user, or a key without the
scope, is `403`; a notification id that is not the user's is `404`. None of these depends on
whether the other user or notification exists. Each caller is rate-limited (`429` with
`Retry-After`), and so are failed authentications per client address; request bodies are
limited in size (`413`); real-time streams are capped per user, per key and per process.
`/readyz` is anonymous and says only ready or not, unless a key with the `admin` scope asks.
Every error is an RFC 9457 problem (`application/problem+json`).
"""

TAGS = [
    {"name": "inbox", "description": "A user's notifications, unread count, mark all read."},
    {"name": "notifications", "description": "One notification: deliveries, read, archive."},
    {"name": "stream", "description": "Real-time inbox events (Server-Sent Events)."},
    {"name": "preferences", "description": "The user's own notification preferences."},
    {"name": "sessions", "description": "Short-lived session tokens for browsers."},
    {"name": "admin", "description": "Needs an admin API key."},
    {"name": "health", "description": "Liveness and readiness."},
]


def stream_fetcher(engine: Engine) -> FetchNotifications:
    """The broker's notification reader: rows by id, as the inbox's JSON objects."""

    def fetch(ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, Mapping[str, Any]]:
        with engine.connect() as conn:
            rows = notifications_by_id(conn, ids)
        return {
            key: NotificationOut.model_validate(row).model_dump(mode="json")
            for key, row in rows.items()
        }

    return fetch


def create_app(
    settings: Settings | None = None,
    config: ReadApiSettings | None = None,
    auth: AuthSettings | None = None,
) -> FastAPI:
    """The FastAPI application. Settings default to the environment's; the database
    connection pool and the real-time listener open at startup and close at shutdown."""
    settings = settings or get_settings()
    config = config or ReadApiSettings()
    auth = auth or AuthSettings()
    engine = make_engine(
        settings.database,
        pool_size=config.db_pool_size,
        max_overflow=config.db_pool_size,
        connect_args={"connect_timeout": max(int(config.ready_timeout_s), 1)},
    )
    broker = InboxBroker(
        settings.database,
        stream_fetcher(engine),
        queue_size=config.stream_queue_size,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Starts even if PostgreSQL is down (not ready until the listener connects).
        await broker.start(wait_s=config.ready_timeout_s)
        try:
            yield
        finally:
            await broker.stop()
            await app.state.preferences_publisher.aclose()
            engine.dispose()

    app = FastAPI(
        title="Herald read API",
        version="1",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.broker = broker
    app.state.read_api_settings = config
    app.state.schema = settings.database.database_schema
    app.state.readiness = ReadinessCache(SERVICE)
    preferences.install_preferences(app, settings.kafka, config.publish_timeout_s)
    install_problem_handlers(app)
    install_database_problem_handler(app)
    install_auth(
        app,
        Authenticator(auth, RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)),
    )
    # Added before the metrics middleware, so it runs inside it: refused bodies are counted.
    install_body_limit(app, config.max_body_bytes)
    install_metrics(app, SERVICE)
    app.include_router(health.router)
    # The inbox before the single-notification routes: "/notifications/unread-count" must not
    # be read as a notification id.
    app.include_router(inbox.router)
    app.include_router(notifications.router)
    app.include_router(stream.router)
    app.include_router(tokens.router)
    app.include_router(sessions.router)
    app.include_router(preferences.router)
    ui.install(app, settings, config.host, auth)  # /ui: the web components and the demo
    return app
