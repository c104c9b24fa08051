"""``/healthz`` (the process answers) and ``/readyz`` (PostgreSQL and Kafka answer, and the
topics this API writes exist)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from herald.webapi import PROBLEM_JSON, ProblemDetail
from services.ingest.deps import DbEngine, Limits, Publish, Topics
from services.ingest.publisher import PublishError

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str]


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    """The process is up and serving requests (checks nothing else)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": ProblemDetail, "content": {PROBLEM_JSON: {}}}},
    summary="Readiness",
)
def readyz(
    engine: DbEngine, publisher: Publish, topics: Topics, limits: Limits
) -> Readiness | JSONResponse:
    """Ready when PostgreSQL answers ``select 1``, Kafka answers a metadata request, and the
    topics this API writes exist; 503 naming what failed otherwise."""
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
    failed = {name: result for name, result in checks.items() if result != "ok"}
    if failed:
        return JSONResponse(
            {
                "type": "urn:herald:problem:not-ready",
                "title": "Not ready",
                "status": 503,
                "detail": "; ".join(f"{name} {result}" for name, result in failed.items()),
                "instance": "/readyz",
                "checks": checks,
            },
            status_code=503,
            media_type=PROBLEM_JSON,
        )
    return Readiness(status="ready", checks=checks)
