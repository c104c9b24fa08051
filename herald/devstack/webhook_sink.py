"""A webhook and Slack endpoint stand-in: records every request, answers what it is told.

- ``POST /hooks/<name>`` (a webhook endpoint) and ``POST /slack/<name>`` (a Slack incoming
  webhook) record the request (path, headers, body, the status answered) and answer 200
  ``{"ok": true}``.
- ``GET /requests?path=/hooks/x`` lists the recorded requests (all, or one path's), oldest
  first; ``DELETE /requests?path=...`` forgets them.
- ``POST /control/respond`` ``{"path": "/hooks/x", "status": 410|500|429, "count": 2,
  "retry_after": 3}`` makes the next ``count`` requests to that path (null: until cleared)
  answer ``status`` (with ``Retry-After`` when given); such requests are recorded too, with
  that status. ``DELETE /control/respond?path=...`` clears the path's (or every) fault.
- Answer latency: ``POST /control/latency`` ``{"ms": 100}`` (``GET`` reads it); the start value
  comes from ``--latency-ms`` or ``HERALD_WEBHOOK_SINK_LATENCY_MS`` (default 0).

Everything is in memory on one event loop; the oldest requests are forgotten past
:data:`MAX_REQUESTS`.

Run: ``python -m herald.devstack.webhook_sink --port 18030``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from herald.devstack.httpd import (
    HttpServer,
    Request,
    Response,
    control_routes,
    run_until_signalled,
    standin_parser,
)

LATENCY_ENV = "HERALD_WEBHOOK_SINK_LATENCY_MS"
PREFIXES = ("/hooks/", "/slack/")
MAX_REQUESTS = 200_000


class Sink:
    """Recorded requests and the faults to answer; touched only from the event loop."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self.requests: deque[dict[str, Any]] = deque(maxlen=MAX_REQUESTS)
        #: path -> {"status", "count" (None: until cleared), "retry_after"}
        self.faults: dict[str, dict[str, Any]] = {}

    def take_fault(self, path: str) -> dict[str, Any] | None:
        fault = self.faults.get(path)
        if fault is None:
            return None
        if fault.get("count") is not None:
            fault["count"] -= 1
            if fault["count"] <= 0:
                del self.faults[path]
        return fault

    def receive(self, request: Request) -> Response:
        fault = self.take_fault(request.path)
        status = int(fault["status"]) if fault else 200
        headers = {}
        if fault and fault.get("retry_after") is not None:
            headers["Retry-After"] = str(fault["retry_after"])
        self.requests.append(
            {
                "path": request.path,
                "headers": dict(request.headers),
                "body": request.body.decode("utf-8", "replace"),
                "status": status,
                "at": time.time(),
            }
        )
        if fault:
            return Response(status, {"ok": False, "error": "injected"}, headers)
        return Response(200, {"ok": True})


def create_server(sink: Sink) -> HttpServer:
    server = HttpServer()

    @server.route("POST", lambda path: path.startswith(PREFIXES) and len(path) > 7)
    async def receive(request: Request) -> Response:
        if sink.latency_ms > 0:
            await asyncio.sleep(sink.latency_ms / 1000)
        return sink.receive(request)

    def at(path: str) -> Any:
        return lambda candidate: candidate == path

    @server.route("GET", at("/requests"))
    async def list_requests(request: Request) -> Response:
        path = request.arg("path")
        return Response(200, [r for r in sink.requests if path is None or r["path"] == path])

    @server.route("DELETE", at("/requests"))
    async def clear_requests(request: Request) -> Response:
        path = request.arg("path")
        kept = [r for r in sink.requests if path is not None and r["path"] != path]
        sink.requests.clear()
        sink.requests.extend(kept)
        return Response(200, {"status": "cleared"})

    @server.route("POST", at("/control/respond"))
    async def set_fault(request: Request) -> Response:
        try:
            fault = request.json()
        except ValueError:
            fault = None
        if (
            not isinstance(fault, dict)
            or not isinstance(fault.get("path"), str)
            or not isinstance(fault.get("status"), int)
            or not isinstance(fault.get("count", 1), int | None)
        ):
            return Response(
                400, {"detail": "body: {'path': str, 'status': int, 'count': int|null}"}
            )
        fault.setdefault("count", None)
        sink.faults[fault["path"]] = fault
        return Response(200, fault)

    @server.route("DELETE", at("/control/respond"))
    async def clear_fault(request: Request) -> Response:
        path = request.arg("path")
        if path is None:
            sink.faults.clear()
        else:
            sink.faults.pop(path, None)
        return Response(200, {"status": "cleared"})

    control_routes(server, at("/control/latency"), at("/healthz"), sink)
    return server


async def serve(host: str, port: int, sink: Sink) -> None:
    server = await create_server(sink).start(host, port)
    try:
        await run_until_signalled(lambda: None, 1.0)
    finally:
        server.close()


def main() -> None:
    description = "Herald's webhook and Slack endpoint stand-in"
    args = standin_parser(description, LATENCY_ENV, "a webhook post").parse_args()
    asyncio.run(serve(args.host, args.port, Sink(args.latency_ms)))


if __name__ == "__main__":
    main()
