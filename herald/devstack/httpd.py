"""A small asyncio HTTP/1.1 server for the local provider stand-ins.

The stand-ins must never be the bottleneck of a benchmark: a framework's per-request machinery
(routing, validation, a thread pool hop) costs more than the stand-ins' whole work. This serves
keep-alive HTTP/1.1 with ``Content-Length`` bodies on one event loop, in one task per
connection, so an injected answer latency (``await asyncio.sleep``) delays that connection's
answer only. Handlers are coroutines ``(Request) -> Response``; routes match on method and a
path predicate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
_REASONS = {status.value: status.phrase for status in HTTPStatus}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body (the last value of each field)."""
        fields = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[-1] for name, values in fields.items()}

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Response:
    status: int
    body: Any  # JSON-encoded
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, keep_alive: bool) -> bytes:
        data = json.dumps(self.body, separators=(",", ":")).encode()
        head = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, '')}"]
        head.append("content-type: application/json")
        head.append(f"content-length: {len(data)}")
        head.extend(f"{name}: {value}" for name, value in self.headers.items())
        if not keep_alive:
            head.append("connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Routes ``(method, path predicate) -> handler``; 404/405 like a framework would."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, Callable[[str], bool], Handler]] = []

    def route(self, method: str, match: Callable[[str], bool]) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append((method, match, handler))
            return handler

        return register

    async def dispatch(self, request: Request) -> Response:
        allowed = False
        for method, match, handler in self.routes:
            if match(request.path):
                if method == request.method:
                    return await handler(request)
                allowed = True
        if allowed:
            return Response(405, {"detail": "Method Not Allowed"})
        return Response(404, {"detail": "Not Found"})

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    writer.write(Response(431, {"detail": "headers too large"}).encode(False))
                    return
                except asyncio.IncompleteReadError:
                    return  # the client closed the connection
                lines = head[:-4].decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    writer.write(Response(400, {"detail": "bad request line"}).encode(False))
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    writer.write(Response(411, {"detail": "send a Content-Length"}).encode(False))
                    return
                length = int(headers.get("content-length") or 0)
                if length > MAX_BODY:
                    writer.write(Response(413, {"detail": "body too large"}).encode(False))
                    return
                body = await reader.readexactly(length) if length else b""
                parts = urlsplit(target)
                request = Request(
                    method=method.upper(),
                    path=unquote(parts.path),
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers=headers,
                    body=body,
                )
                connection = headers.get("connection", "").lower()
                keep_alive = connection != "close" and (
                    version != "HTTP/1.0" or connection == "keep-alive"
                )
                try:
                    response = await self.dispatch(request)
                except Exception:
                    log.exception("%s %s failed", method, target)
                    response = Response(500, {"detail": "Internal Server Error"})
                writer.write(response.encode(keep_alive))
                if not keep_alive:
                    return
                if writer.transport.get_write_buffer_size() > 1 << 20:
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return  # shutting down (3.11's start_server logs a cancelled handler as an error)
        finally:
            writer.close()

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(
            self.serve_connection, host, port, limit=MAX_HEAD, backlog=1024
        )


class HasLatency(Protocol):
    """A stand-in whose answers wait ``latency_ms`` milliseconds."""

    latency_ms: float


def control_routes(
    server: HttpServer,
    latency: Callable[[str], bool],
    health: Callable[[str], bool],
    holder: HasLatency,
) -> None:
    """A stand-in's own routes: ``GET`` and ``POST`` (``{"ms": N}``) of ``holder``'s answer
    latency on ``latency``, and ``GET`` ``{"status": "ok"}`` on ``health``."""

    @server.route("GET", health)
    async def healthz(request: Request) -> Response:
        return Response(200, {"status": "ok"})

    @server.route("GET", latency)
    async def get_latency(request: Request) -> Response:
        return Response(200, {"ms": holder.latency_ms})

    @server.route("POST", latency)
    async def set_latency(request: Request) -> Response:
        try:
            holder.latency_ms = max(0.0, float(request.json().get("ms")))
        except (ValueError, TypeError, AttributeError):
            return Response(400, {"detail": "body must be JSON with a number 'ms'"})
        return Response(200, {"ms": holder.latency_ms})


def standin_parser(
    description: str | None, latency_env: str, answer: str
) -> argparse.ArgumentParser:
    """The command line every stand-in takes: ``--host``, ``--port`` and ``--latency-ms`` (the
    latency of ``answer``; default from environment variable ``latency_env``, else 0)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=latency_from_env(latency_env),
        help=f"answer latency of {answer} (default: ${latency_env} or 0)",
    )
    return parser


def latency_from_env(name: str) -> float:
    """Milliseconds from environment variable ``name`` (0 when unset or empty)."""
    value = os.environ.get(name, "").strip()
    return max(0.0, float(value)) if value else 0.0


async def run_until_signalled(flush: Callable[[], None], every: float = 0.2) -> None:
    """Call ``flush`` every ``every`` seconds until SIGTERM or SIGINT, and once more at the end."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            flush()
    finally:
        flush()
