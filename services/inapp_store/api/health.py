"""``/healthz`` (the process answers) and ``/readyz`` (PostgreSQL answers a query, and the
real-time listener is connected)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from herald.webapi import problem_response, problem_responses
from services.inapp_store.api.deps import Broker, Config, DbEngine

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
    "/readyz", response_model=Readiness, responses=problem_responses(503), summary="Readiness"
)
def readyz(
    request: Request, engine: DbEngine, broker: Broker, config: Config
) -> Readiness | JSONResponse:
    """Ready when PostgreSQL answers a query within ``READ_API_READY_TIMEOUT_S`` and the
    real-time listener holds its ``LISTEN`` connection; ``503`` naming what failed otherwise."""
    checks: dict[str, str] = {}
    try:
        with engine.connect() as connection:
            # Bounded: a database that accepts connections but hangs is not ready either.
            timeout_ms = int(config.ready_timeout_s * 1000)
            connection.execute(text(f"SET LOCAL statement_timeout = {timeout_ms}"))
            connection.execute(text("select 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    checks["listener"] = "ok" if broker.connected else "failed: not listening"
    failed = {name: result for name, result in checks.items() if result != "ok"}
    if failed:
        return problem_response(
            request,
            503,
            "Not ready",
            "; ".join(f"{name} {result}" for name, result in failed.items()),
            type_="urn:herald:problem:not-ready",
            checks=checks,
        )
    return Readiness(status="ready", checks=checks)
