"""``/healthz`` (the process answers) and ``/readyz`` (PostgreSQL and Kafka answer, and the
topics this API writes exist).

``/readyz`` is anonymous (load balancers probe it) and says only ready or not; a key with the
``admin`` scope also sees each check and its error. Its checks run at most once a second.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from herald.auth import OptionalKey
from herald.webapi import Readiness, problem_responses, readiness_response
from services.ingest.deps import DbEngine, Limits, Publish, Topics
from services.ingest.publisher import PublishError

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    """The process is up and serving requests (checks nothing else)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses=problem_responses(401, 429, 503),
    summary="Readiness",
    # Anonymous, or a key for the details.
    openapi_extra={"security": [{}, {"AdminApiKey": ["admin"]}, {"AdminBearer": ["admin"]}]},
)
def readyz(
    request: Request,
    engine: DbEngine,
    publisher: Publish,
    topics: Topics,
    limits: Limits,
    caller: OptionalKey,
) -> Readiness | JSONResponse:
    """Ready when PostgreSQL answers ``select 1``, Kafka answers a metadata request, and the
    topics this API writes exist; ``503`` otherwise. Only a key with the ``admin`` scope is
    told which check failed and why. The checks run at most once a second."""

    def run() -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            with engine.connect() as connection:
                connection.execute(text("select 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
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
