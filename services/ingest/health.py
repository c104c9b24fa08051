"""``/healthz`` (the process answers) and ``/readyz`` (PostgreSQL and Kafka answer, and the
topics this API writes exist).

``/readyz`` is anonymous (load balancers probe it) and says only ready or not; a key with the
``admin`` scope also sees each check and its error. Its checks run at most once a second.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from herald.auth import OptionalKey
from herald.webapi import (
    READYZ_ROUTE,
    Readiness,
    database_check,
    health_router,
    readiness_response,
)
from services.ingest.deps import DbEngine, Limits, Publish, Topics
from services.ingest.publisher import PublishError

router = health_router()


@router.get("/readyz", **READYZ_ROUTE)
def readyz(
    request: Request,
    engine: DbEngine,
    publisher: Publish,
    topics: Topics,
    limits: Limits,
    caller: OptionalKey,
) -> Readiness | JSONResponse:
    """Ready when PostgreSQL answers a query within ``INGEST_READY_TIMEOUT_S``, Kafka answers a
    metadata request, and the topics this API writes exist; ``503`` otherwise. Only a key with
    the ``admin`` scope is told which check failed and why. The checks run at most once a
    second."""

    def run() -> dict[str, str]:
        checks = {"database": database_check(engine, limits.ready_timeout_s)}
        try:
            existing = publisher.topics(limits.ready_timeout_s)
            wanted = [topics.events, topics.event_types, topics.users, topics.preferences]
            missing = [spec.name for spec in wanted if spec.name not in existing]
            checks["kafka"] = f"failed: missing topics {', '.join(missing)}" if missing else "ok"
        except PublishError as exc:
            checks["kafka"] = f"failed: {exc}"
        return checks

    checks = request.app.state.readiness.get(run)
    return readiness_response(request, checks, detailed=caller is not None and caller.may("admin"))
