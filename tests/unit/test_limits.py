"""herald.limits: the token-bucket rate limiter and the request body size limit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from herald.limits import (
    BodySizeLimitMiddleware,
    RateLimiter,
    TokenBucket,
    install_body_limit,
    retry_after,
)
from herald.webapi import install_problem_handlers

# --- rate limiting -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, tokens=3, updated=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token at 2/s
    assert bucket.take(0.25) == pytest.approx(0.25)  # half a token since
    assert bucket.take(0.5) == 0.0
    # It never holds more than the burst, however long it rests.
    bucket.take(1000.0)
    assert bucket.tokens == pytest.approx(2.0)


def test_rate_limiter_keeps_a_bucket_per_key() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock=clock)
    assert [limiter.acquire("a"), limiter.acquire("a")] == [0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(1.0)
    assert limiter.acquire("b") == 0.0  # another key, another bucket
    clock.now += 1.0
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(1.0)
    assert len(limiter) == 2


def test_a_refused_request_takes_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    assert limiter.acquire("a") == 0.0
    for _ in range(10):
        assert limiter.acquire("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.acquire("a") == 0.0


def test_rate_limiter_forgets_the_least_recently_used_keys() -> None:
    clock = Clock()
    limiter = RateLimiter(0.001, 1, max_keys=2, clock=clock)
    limiter.acquire("a")
    limiter.acquire("b")
    limiter.acquire("a")  # "a" used last
    limiter.acquire("c")  # forgets "b"
    assert len(limiter) == 2
    assert limiter.acquire("a") > 0  # still remembered and empty
    assert limiter.acquire("b") == 0.0  # forgotten: starts full (errs towards allowing)


def test_rate_zero_disables_limiting() -> None:
    limiter = RateLimiter(0, 1)
    assert not limiter.enabled
    assert all(limiter.acquire("a") == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_rate_limiter_refuses_nonsense() -> None:
    for rate, burst in ((-1.0, 1), (1.0, 0)):
        with pytest.raises(ValueError):
            RateLimiter(rate, burst)


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after(s) for s in (0.01, 0.5, 1.0, 1.2, 59.9)] == ["1", "1", "1", "2", "60"]


# --- body size limit ---------------------------------------------------------------------------


class Item(BaseModel):
    text: str


LIMIT = 1000


def body_app() -> tuple[FastAPI, list[str]]:
    app = FastAPI()
    install_problem_handlers(app)
    install_body_limit(app, LIMIT)
    calls: list[str] = []

    @app.post("/items")
    def create(item: Item) -> dict[str, int]:
        calls.append("items")
        return {"length": len(item.text)}

    @app.post("/action")
    def action() -> dict[str, str]:
        # Never reads its body: a limit enforced only on reading would let it run.
        calls.append("action")
        return {"done": "yes"}

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        calls.append("raw")
        return {"length": len(await request.body())}

    return app, calls


@pytest.fixture
def body_client() -> Iterator[tuple[TestClient, list[str]]]:
    app, calls = body_app()
    with TestClient(app) as client:
        yield client, calls


def assert_413(response: object) -> None:
    assert getattr(response, "status_code", None) == 413
    problem = response.json()  # type: ignore[attr-defined]
    assert problem["type"] == "urn:herald:problem:body-too-large"
    assert problem["status"] == 413
    assert problem["limit_bytes"] == LIMIT
    assert str(LIMIT) in problem["detail"]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    assert response.headers["connection"] == "close"  # type: ignore[attr-defined]


def test_bodies_within_the_limit_pass(body_client: tuple[TestClient, list[str]]) -> None:
    client, calls = body_client
    assert client.post("/items", json={"text": "x" * 900}).json() == {"length": 900}
    assert client.post("/raw", content=b"y" * LIMIT).json() == {"length": LIMIT}
    assert calls == ["items", "raw"]


def test_an_announced_oversized_body_is_refused_before_the_endpoint_runs(
    body_client: tuple[TestClient, list[str]],
) -> None:
    client, calls = body_client
    for path in ("/items", "/action", "/raw"):
        assert_413(client.post(path, content=b"z" * (LIMIT + 1)))
    assert_413(client.post("/action", content=b"z" * 10 * 1024 * 1024))
    assert calls == []


def test_a_streamed_oversized_body_is_refused_once_it_crosses_the_limit(
    body_client: tuple[TestClient, list[str]],
) -> None:
    client, calls = body_client

    def chunks() -> Iterator[bytes]:
        # No Content-Length: chunked transfer, counted as it arrives.
        for _ in range(10):
            yield b'{"text": "' + b"a" * 200

    assert_413(client.post("/items", content=chunks()))
    assert_413(client.post("/raw", content=chunks()))
    assert calls == ["raw"]  # it ran, but its read of the body failed


def test_middleware_passes_other_scopes_through() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append(str(scope["type"]))

    import asyncio

    middleware = BodySizeLimitMiddleware(app, 10)  # type: ignore[arg-type]
    asyncio.run(middleware({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]
    with pytest.raises(ValueError):
        BodySizeLimitMiddleware(app, -1)  # type: ignore[arg-type]
