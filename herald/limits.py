"""Request limits Herald's HTTP APIs share: per-key rate limiting and a request body size limit.

- :class:`RateLimiter`: one token bucket per key (an API key, a user id), in memory, so each
  API process limits on its own (N processes allow N times the rate; put a shared limiter in
  front, e.g. at the load balancer, when that matters). :mod:`herald.auth` charges every
  authenticated request to its caller's bucket and answers ``429`` with ``Retry-After``.
- :class:`BodySizeLimitMiddleware`: refuses a request body over the limit with a ``413``
  problem, before the endpoint runs when ``Content-Length`` announces it, and as soon as the
  limit is crossed when the body is streamed (chunked).

Both are plain objects without settings of their own: each service builds them from its own
settings class (``READ_API_MAX_BODY_BYTES``, ``READ_API_RATE_LIMIT_PER_S``...).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from herald.webapi import problem_response

#: The default request body limit of Herald's APIs: 1 MiB.
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` header value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


@dataclass
class TokenBucket:
    """A token bucket: holds up to ``burst`` tokens and gains ``rate`` tokens per second."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def wait(self, now: float, cost: float = 1.0) -> float:
        """Seconds until the bucket will hold ``cost`` tokens (0: now), taking nothing."""
        tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        return 0.0 if tokens >= cost else (cost - tokens) / self.rate

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens if the bucket has them and return 0; otherwise take nothing
        and return how many seconds until it will have them."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


class RateLimiter:
    """Token buckets by key: ``rate_per_s`` sustained, ``burst`` at once.

    Buckets live in memory and the least recently used are forgotten beyond ``max_keys`` (a
    forgotten bucket starts full again, which only ever errs towards allowing). ``rate_per_s``
    of 0 turns limiting off. Thread-safe: FastAPI runs sync dependencies in a thread pool.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate_per_s must be >= 0, burst and max_keys >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether requests are limited at all."""
        return self.rate_per_s > 0

    def acquire(self, key: str, cost: float = 1.0) -> float:
        """Charge ``cost`` to ``key``'s bucket: 0 if allowed, else the seconds to wait."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = TokenBucket(self.rate_per_s, self.burst, self.burst, now)
                self._buckets[key] = bucket
                if len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            return bucket.take(now, cost)

    def wait(self, key: str, cost: float = 1.0) -> float:
        """How long until ``key`` could be charged ``cost`` (0: now), charging nothing."""
        if not self.enabled:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(key)
            return 0.0 if bucket is None else bucket.wait(self._clock(), cost)

    def __len__(self) -> int:
        return len(self._buckets)


class BodyTooLarge(StarletteHTTPException):
    """The request body is larger than the limit (answered ``413``).

    An ``HTTPException`` on purpose: raised from ``receive`` while FastAPI reads a body, it
    passes through FastAPI's body parsing unchanged (other errors become ``400``) to the app's
    problem handlers.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            413,
            f"the request body is larger than the limit of {limit} bytes",
            headers={"Connection": "close"},
        )


class BodySizeLimitMiddleware:
    """ASGI middleware: request bodies larger than ``max_bytes`` are answered ``413``.

    Starlette's own ``RequestBodyLimitMiddleware`` (and FastAPI's ``max_body_size``) only
    refuse an oversized ``Content-Length`` when the body is read or the response starts, so an
    endpoint that never reads its body would already have done its work, and the answer is
    plain text. This one refuses before the endpoint runs, as a problem (the connection is
    closed afterwards: the unread body cannot be skipped on a kept-alive connection).
    """

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            # Reached only when no handler answered it (a body read outside FastAPI's parsing).
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = body_too_large_response(Request(scope), self.max_bytes)
        await response(scope, receive, send)


def body_too_large_response(request: Request, limit: int) -> JSONResponse:
    """The ``413`` problem answered for a body over ``limit`` bytes."""
    error = BodyTooLarge(limit)
    return problem_response(
        request,
        413,
        "Content Too Large",
        str(error.detail),
        type_="urn:herald:problem:body-too-large",
        headers=error.headers,
        limit_bytes=limit,
    )


async def _on_body_too_large(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyTooLarge)
    return body_too_large_response(request, int(exc.limit))


def install_body_limit(app: FastAPI, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Limit ``app``'s request bodies to ``max_bytes``: a larger one is a ``413`` problem,
    the same whether ``Content-Length`` announced it or a streamed body crossed the limit."""
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_bytes)
    # Without it, a BodyTooLarge raised while FastAPI reads a body would reach the generic
    # HTTPException handler and lose its problem type.
    app.add_exception_handler(BodyTooLarge, _on_body_too_large)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        # Malformed: the server's HTTP parser refuses it; nothing to decide here.
        return None
