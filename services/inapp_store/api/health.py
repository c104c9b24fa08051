"""``/healthz`` (the process answers) and ``/readyz`` (PostgreSQL answers a query, and the
real-time listener is connected).

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
from services.inapp_store.api.deps import Broker, Config, DbEngine

router = health_router()


@router.get("/readyz", **READYZ_ROUTE)
def readyz(
    request: Request, engine: DbEngine, broker: Broker, config: Config, caller: OptionalKey
) -> Readiness | JSONResponse:
    """Ready when PostgreSQL answers a query within ``READ_API_READY_TIMEOUT_S`` and the
    real-time listener holds its ``LISTEN`` connection; ``503`` otherwise. Only a key with
    the ``admin`` scope is told which check failed and why. The checks run at most once a
    second."""

    def run() -> dict[str, str]:
        return {
            "database": database_check(engine, config.ready_timeout_s),
            "listener": "ok" if broker.connected else "failed: not listening",
        }

    checks = request.app.state.readiness.get(run)
    return readiness_response(request, checks, detailed=caller is not None and caller.may("admin"))
