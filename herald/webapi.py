"""What Herald's HTTP APIs share: errors as RFC 9457 problem details, readable validation
errors, and Prometheus metrics (a ``/metrics`` route and per-request timings).

Every error a client sees has one shape, ``application/problem+json``::

    {"type": "urn:herald:problem:unknown-event-type", "title": "Unknown event type",
     "status": 422, "detail": "unknown event type 'comment.creatd'", "instance": "/v1/events"}

plus extension members where they help (``errors`` on validation failures). Raise
:class:`Problem` from any endpoint or dependency; :func:`install_problem_handlers` turns it,
FastAPI's request validation errors, Starlette's HTTP errors and unexpected exceptions into that
shape.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final, Literal

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: ``type`` of a problem that means no more than its HTTP status (RFC 9457 section 4.2.1).
BLANK = "about:blank"

HTTP_SECONDS = Histogram(
    "herald_http_request_seconds",
    "HTTP requests by route template, method and status, with their duration",
    ["service", "method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

READINESS_CHECKS = Counter(
    "herald_readiness_checks_total",
    "Runs of /readyz's checks (at most one a second per process, however many ask)",
    ["service"],
)

# Parts of a request FastAPI names first in an error's location; the field path is the rest.
_REQUEST_PARTS = frozenset({"body", "query", "path", "header", "cookie"})
# Tags of discriminated unions written ``<name>``: pydantic puts the tag into an error's
# location, where it means nothing to a client, so field paths leave it out.
_UNION_TAG = re.compile(r"^<[^<>]*>$")
# pydantic prefixes messages from ``ValueError`` in validators; the rest is ours and readable.
_VALUE_ERROR_PREFIXES = ("Value error, ", "Assertion failed, ")


class ProblemDetail(BaseModel):
    """An error response (RFC 9457 problem details)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:herald:problem:unknown-event-type",
                    "title": "Unknown event type",
                    "status": 422,
                    "detail": "unknown event type 'comment.creatd'",
                    "instance": "/v1/events",
                }
            ]
        },
    )

    type: str = Field(BLANK, description="URI naming the kind of problem.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, for a person to read.")
    instance: str | None = Field(None, description="The request path.")


class Problem(Exception):
    """Raise to answer with a problem-details error.

    ``kind`` is a short slug (``unknown-event-type``) that becomes the problem's ``type`` URI;
    ``extensions`` are extra members of the body (e.g. the offending codes).
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = f"urn:herald:problem:{kind}" if kind else BLANK
        self.headers = headers
        self.extensions = extensions


def problem_response(
    request: Request | None,
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = BLANK,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A problem-details response (``application/problem+json``)."""
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if request is not None:
        body["instance"] = request.url.path
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def iso_8601_only(value: Any) -> Any:
    """A ``BeforeValidator`` for ``datetime`` fields: refuse the Unix timestamps pydantic
    would otherwise accept (``0.5``, ``1714563600``), since the APIs document ISO 8601 and a
    number there is more likely a mistake than a moment in 1970."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            "must be an ISO 8601 date and time (e.g. 2024-05-01T12:00:00Z), not a number"
        )
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        raise ValueError(f"{value!r} is not an ISO 8601 date and time (e.g. 2024-05-01T12:00:00Z)")
    return value


def field_path(loc: Sequence[int | str]) -> str:
    """An error location as a path a client recognises: ``events[2].recipients``."""
    parts = list(loc)
    if parts and parts[0] in _REQUEST_PARTS and len(parts) > 1:
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _UNION_TAG.match(part):
            path += f".{part}" if path else part
    return path or "body"


def describe_validation_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """pydantic/FastAPI errors as ``{"field": ..., "message": ...}`` pairs a person can read."""
    described = []
    for error in errors:
        message = str(error.get("msg", "is not valid"))
        for prefix in _VALUE_ERROR_PREFIXES:
            message = message.removeprefix(prefix)
        if error.get("type") == "missing":
            message = "is required"
        elif error.get("type") == "json_invalid":
            message = f"is not valid JSON: {error.get('ctx', {}).get('error', message)}"
        elif error.get("type") == "extra_forbidden":
            message = "is not a known field"
        elif error.get("type") in ("model_type", "model_attributes_type", "dict_type"):
            message = "must be a JSON object"
        described.append({"field": field_path(error.get("loc", ())), "message": message})
    return described


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(
        request,
        exc.status,
        exc.title,
        exc.detail,
        type_=exc.type,
        headers=exc.headers,
        **exc.extensions,
    )


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = describe_validation_errors(exc.errors())
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem_response(
        request,
        422,
        "Request is not valid",
        detail,
        type_="urn:herald:problem:validation-error",
        errors=errors,
    )


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    title = _reason(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 404 and detail == title:
        detail = f"no route {request.method} {request.url.path}; see /docs"
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeError):
        # FastAPI's "There was an error parsing the body": say what was wrong with it.
        detail = f"the request body is not JSON text in UTF-8 ({exc.__cause__})"
    return problem_response(request, exc.status_code, title, detail, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log, never to the client.
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem_response(
        request, 500, "Internal Server Error", "an unexpected error occurred; see the server log"
    )


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem details (validation errors keep status 422)."""
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each a :class:`ProblemDetail`."""
    return {
        status: {
            "model": ProblemDetail,
            "description": _reason(status),
            # The model registers the schema (FastAPI lists it under application/json too).
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}},
        }
        for status in statuses
    }


def install_metrics(app: FastAPI, service: str) -> None:
    """Serve Prometheus ``/metrics`` from ``app`` and time every request by route template."""

    @app.middleware("http")
    async def time_request(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            # The route template (/v1/users/{user_id}), never the raw path: label values must
            # stay few.
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            HTTP_SECONDS.labels(service, request.method, template, str(status)).observe(
                time.perf_counter() - started
            )

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def _on_database_unavailable(request: Request, exc: Exception) -> Response:
    # Connection refused, server gone, timeouts: transient, so 503 and not 500. The reason
    # (host, port, database user) goes to the log, not to the client. Only the first line:
    # the rest is SQLAlchemy's boilerplate.
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    log.warning("database unavailable: %s", reason, extra={"path": request.url.path})
    return problem_response(
        request,
        503,
        "Database unavailable",
        "PostgreSQL did not answer; try again",
        type_="urn:herald:problem:database-unavailable",
        headers={"Retry-After": "5"},
    )


def install_database_problem_handler(app: FastAPI) -> None:
    """Answer SQLAlchemy's ``OperationalError`` (the database is unreachable or went away) and
    pool ``TimeoutError`` (every pooled connection busy: overload) with a ``503`` problem and
    ``Retry-After``, instead of a ``500``."""
    app.add_exception_handler(OperationalError, _on_database_unavailable)
    app.add_exception_handler(PoolTimeoutError, _on_database_unavailable)


class Health(BaseModel):
    """The answer of ``/healthz``."""

    status: Literal["ok"]


def health_router() -> APIRouter:
    """A router with ``/healthz`` (the process answers; checks nothing else), the same for
    every HTTP service; each adds its own ``/readyz`` with ``@router.get("/readyz",
    **READYZ_ROUTE)``, :class:`ReadinessCache`, :func:`database_check` and
    :func:`readiness_response`."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health, summary="Liveness")
    def healthz() -> Health:
        """The process is up and serving requests (checks nothing else)."""
        return Health(status="ok")

    return router


def database_check(engine: Engine, timeout_s: float) -> str:
    """``"ok"`` when PostgreSQL answers a query within ``timeout_s`` (a database that accepts
    connections but hangs is not ready either), else ``"failed: <error>"``."""
    try:
        with engine.connect() as connection:
            connection.execute(text(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}"))
            connection.execute(text("select 1"))
        return "ok"
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0]
        return f"failed: {type(exc).__name__}: {reason}"


class Readiness(BaseModel):
    """The answer of ``/readyz`` when ready."""

    status: str = Field(description='"ready".', examples=["ready"])
    checks: dict[str, str] | None = Field(
        None, description="Each dependency's result; only for a key with the admin scope."
    )


class ReadinessCache:
    """``/readyz``'s checks, run at most once per ``ttl_s`` whoever asks: a flood of probes
    (anonymous, since load balancers do not authenticate) costs one database query and one
    Kafka metadata request a second, and concurrent callers wait for the same run."""

    def __init__(
        self, service: str, ttl_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.service = service
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._checks: dict[str, str] = {}

    def get(self, run: Callable[[], dict[str, str]]) -> dict[str, str]:
        """The checks (``name → "ok"`` or ``"failed: ..."``), from ``run`` if the last run
        is older than ``ttl_s``."""
        with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self.ttl_s:
                READINESS_CHECKS.labels(self.service).inc()
                self._checks = run()
                self._checked_at = self._clock()
            return dict(self._checks)


#: The route of every service's ``/readyz``: anonymous (load balancers probe it), or a key
#: with the admin scope for the details.
READYZ_ROUTE: Final[dict[str, Any]] = {
    "response_model": Readiness,
    "response_model_exclude_none": True,
    "responses": problem_responses(401, 429, 503),
    "summary": "Readiness",
    "openapi_extra": {"security": [{}, {"AdminApiKey": ["admin"]}, {"AdminBearer": ["admin"]}]},
}


def readiness_response(
    request: Request, checks: Mapping[str, str], *, detailed: bool
) -> Readiness | JSONResponse:
    """``/readyz``'s answer: ``200`` when every check is ``ok``, else a ``503`` problem.
    Only a ``detailed`` answer (for a key with the admin scope) names the checks and their
    errors: host names, ports and database users are not for anonymous callers."""
    failed = {name: result for name, result in checks.items() if result != "ok"}
    if not failed:
        return Readiness(status="ready", checks=dict(checks) if detailed else None)
    if detailed:
        return problem_response(
            request,
            503,
            "Not ready",
            "; ".join(f"{name} {result}" for name, result in failed.items()),
            type_="urn:herald:problem:not-ready",
            checks=dict(checks),
        )
    return problem_response(
        request,
        503,
        "Not ready",
        "a dependency is not ready (an API key with the admin scope sees which)",
        type_="urn:herald:problem:not-ready",
    )
