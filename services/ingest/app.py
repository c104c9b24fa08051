"""The ingest/admin API application: ``create_app(settings)`` wires routers, dependencies,
problem-details errors and metrics around one engine and one Kafka publisher per process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from herald.auth import Authenticator, AuthSettings, install_auth
from herald.db import make_engine, session_factory
from herald.limits import RateLimiter, install_body_limit
from herald.settings import Settings, get_settings
from herald.webapi import (
    ReadinessCache,
    install_database_problem_handler,
    install_metrics,
    install_problem_handlers,
)
from schemas import CATALOGUE
from services.ingest import endpoints, event_types, events, health, lifecycle, preferences, users
from services.ingest.publisher import Publisher
from services.ingest.settings import IngestSettings

SERVICE = "ingest"

DESCRIPTION = """
Publish events to Herald over HTTP, and administer what the router needs to know: event types
(with their templates), users (how to reach them), their preferences and their webhook and
Slack endpoints.

Every admin write is stored in PostgreSQL, then published to its compacted Kafka topic before
the response, so the router sees it at once. Every error is an RFC 9457 problem
(`application/problem+json`) whose `detail` says what to fix.

**Authentication.** An API key (`X-API-Key: <key>` or `Authorization: Bearer <key>`, from
`HERALD_ADMIN_API_KEYS`) with the scope each operation lists: `events:write` to publish
events, `admin` for event types, users and preferences. A missing or unknown key is `401`, a
key without the scope `403`; each key is rate-limited, and so are failed authentications per
client address (`429` with `Retry-After`).
"""


def create_app(
    settings: Settings | None = None,
    ingest: IngestSettings | None = None,
    *,
    publisher: Publisher | None = None,
    auth: AuthSettings | None = None,
) -> FastAPI:
    """The FastAPI application; resources are opened at startup and closed at shutdown.

    ``settings`` default to the environment's; ``publisher`` may be given (tests), and is then
    left open at shutdown for its owner to close.
    """
    settings = settings or get_settings()
    ingest = ingest or IngestSettings()
    auth = auth or AuthSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(
            settings.database,
            pool_size=ingest.db_pool_size,
            max_overflow=ingest.db_pool_size,
            connect_args={"connect_timeout": max(int(ingest.ready_timeout_s), 1)},
        )
        own_publisher = publisher is None
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        app.state.publisher = publisher or Publisher(
            settings.kafka, timeout_s=ingest.publish_timeout_s, service=SERVICE
        )
        app.state.catalogue = CATALOGUE.with_prefix(settings.kafka.topic_prefix)
        app.state.ingest_settings = ingest
        try:
            yield
        finally:
            if own_publisher:
                await anyio.to_thread.run_sync(app.state.publisher.close)
            engine.dispose()

    app = FastAPI(
        title="Herald ingest API",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.readiness = ReadinessCache(SERVICE)
    install_problem_handlers(app)
    install_database_problem_handler(app)
    install_auth(
        app,
        Authenticator(auth, RateLimiter(ingest.rate_limit_per_s, ingest.rate_limit_burst)),
    )
    # Before the metrics middleware, so it runs inside it: refused bodies are counted.
    install_body_limit(app, ingest.max_body_bytes)
    install_metrics(app, SERVICE)
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(event_types.router)
    app.include_router(users.router)
    app.include_router(preferences.router)
    app.include_router(endpoints.router)
    app.include_router(lifecycle.router)
    return app
