"""``/healthz`` (the process answers) and ``/readyz`` (PostgreSQL answers a query, and the
real-time listener is connected).

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
from services.inapp_store.api.deps import Broker, Config, DbEngine

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
    request: Request, engine: DbEngine, broker: Broker, config: Config, caller: OptionalKey
) -> Readiness | JSONResponse:
    """Ready when PostgreSQL answers a query within ``READ_API_READY_TIMEOUT_S`` and the
    real-time listener holds its ``LISTEN`` connection; ``503`` otherwise. Only a key with
    the ``admin`` scope is told which check failed and why. The checks run at most once a
    second."""

    def run() -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            with engine.connect() as connection:
                # Bounded: a database that accepts connections but hangs is not ready either.
                timeout_ms = int(config.ready_timeout_s * 1000)
                connection.execute(text(f"SET LOCAL statement_timeout = {timeout_ms}"))
                connection.execute(text("select 1"))
            checks["database"] = "ok"
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0]
            checks["database"] = f"failed: {type(exc).__name__}: {reason}"
        checks["listener"] = "ok" if broker.connected else "failed: not listening"
        return checks

    checks = request.app.state.readiness.get(run)
    return readiness_response(request, checks, detailed=caller is not None and caller.may("admin"))
