"""Who may call Herald's APIs, tried from outside (issue 13, items 1, 2 and 4).

Every test runs the real services as processes (the ``pipeline`` fixture: ingest and read
APIs, router, senders, inapp_store on this test's topics and schema) and attacks them over
HTTP or by starting a service with a given environment. Each asserts the refusal, then that
nothing else was affected: another user's inbox is unchanged and one normal event is still
delivered afterwards.

Client addresses: uvicorn believes ``X-Forwarded-For`` from 127.0.0.1 (its default
``FORWARDED_ALLOW_IPS``, as behind a local proxy), so the tests speak as several addresses.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from herald.auth import LOCAL_ADMIN_API_KEY, LOCAL_USER_TOKEN_SECRET, user_token
from herald.demo import System
from herald.devstack.process import free_port
from herald.settings import DatabaseSettings, KafkaSettings
from tests.integration.services import ServiceProcess, service_env

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Scoped keys the services are started with, beside the local admin key (every scope).
PUBLISHER = "security-publisher-key-0123456789"
READER = "security-inbox-reader-key-0123456789"
MINTER = "security-token-minter-key-0123456789"
NEW_ADMIN = "security-rotated-admin-key-0123456789"
KEYS = (
    f"{LOCAL_ADMIN_API_KEY},{NEW_ADMIN}=admin events:write inbox:read,"
    f"{PUBLISHER}=events:write,{READER}=inbox:read,{MINTER}=tokens:mint"
)


#: The rest of what comment.created's templates need.
AUTHOR = {"author_name": "Eve", "excerpt": "hello"}


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    return {
        "HERALD_ADMIN_API_KEYS": KEYS,
        "HERALD_AUTH_FAILURE_BURST": "5",
        "HERALD_AUTH_FAILURES_PER_MIN": "6",
        "READ_API_MAX_STREAMS": "3",
        "READ_API_MAX_STREAMS_PER_KEY": "2",
        "READ_API_LIMIT_CONCURRENCY": "8",
    }


def key(secret: str, address: str | None = None) -> dict[str, str]:
    headers = {"X-API-Key": secret}
    if address:
        headers["X-Forwarded-For"] = address
    return headers


def token(user_id: str) -> dict[str, str]:
    return {"X-User-Token": user_token(user_id, LOCAL_USER_TOKEN_SECRET)}


def inbox(system: System, user_id: str) -> list[str]:
    """Titles in ``user_id``'s inbox, read with the user's own token."""
    assert system.read_api is not None
    response = system.read_api.get(f"/v1/users/{user_id}/notifications", headers=token(user_id))
    assert response.status_code == 200, response.text
    return [item["title"] for item in response.json()["items"]]


def still_flowing(system: System, recipient: str, bystander: str, before: list[str]) -> None:
    """One normal event reaches ``recipient``'s inbox; ``bystander``'s inbox is as it was."""
    system.seed()
    event_id = system.publish(
        "comment.created", [recipient], post_title="after the attack", **AUTHOR
    )
    assert system.poll(lambda: system.inbox(event_id).get(recipient)), "the pipeline stopped"
    assert inbox(system, bystander) == before


def people(system: System) -> tuple[str, str]:
    system.seed()
    return system.user("alice"), system.user("bob")


# --- 1. well-known local secrets -----------------------------------------------------------------


def start_refused(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_local_default_secrets_refuse_to_serve_other_machines(
    pipeline: System, kafka_settings: KafkaSettings, db_settings: DatabaseSettings
) -> None:
    alice, bob = people(pipeline)
    bobs = inbox(pipeline, bob)
    base = service_env(kafka_settings, db_settings, HERALD_INGEST_PORT=str(free_port()))
    base["HERALD_READ_API_PORT"] = str(free_port())
    cases = [
        # Both well-known values, every interface.
        ("services.ingest", {"INGEST_HOST": "0.0.0.0"}, "HERALD_ADMIN_API_KEYS and HERALD_USER"),
        # The keys set, the token secret forgotten: anyone could compute any user's token.
        (
            "services.inapp_store.api",
            {"READ_API_HOST": "0.0.0.0", "HERALD_ADMIN_API_KEYS": NEW_ADMIN},
            "HERALD_USER_TOKEN_SECRET holds",
        ),
        # Production says never, even on loopback.
        ("services.ingest", {"HERALD_ENV": "production"}, "HERALD_ENV=production"),
    ]
    for module, env, named in cases:
        started = time.monotonic()
        result = start_refused(module, {**base, **env})
        assert result.returncode != 0, f"{module} started with {env}:\n{result.stderr[-2000:]}"
        assert named in result.stderr, result.stderr[-2000:]
        assert "secrets.token_urlsafe" in result.stderr  # how to make a value
        assert "HERALD_ENV=local" in result.stderr
        assert time.monotonic() - started < 60
    # The same settings with secrets of one's own start (on loopback here).
    own = {
        **base,
        "HERALD_ENV": "production",
        "HERALD_ADMIN_API_KEYS": NEW_ADMIN,
        "HERALD_USER_TOKEN_SECRET": "security-test-own-secret-0123456789",
    }
    with _running("services.inapp_store.api", own) as url:
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    still_flowing(pipeline, alice, bob, bobs)


@contextlib.contextmanager
def _running(module: str, env: dict[str, str]) -> Iterator[str]:
    port = env["HERALD_READ_API_PORT" if "inapp" in module else "HERALD_INGEST_PORT"]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait(lambda: _answers(f"{url}/healthz"), 60, f"{module} to answer", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _wait(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[Any]
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"exited while waiting for {what}:\n{out!s:.3000}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# --- 2. scoped keys ------------------------------------------------------------------------------


def test_each_key_does_only_what_its_scopes_allow(pipeline: System) -> None:
    api, read = pipeline.api, pipeline.read_api
    assert read is not None
    alice, bob = people(pipeline)
    bobs = inbox(pipeline, bob)

    # The publishing key publishes, and nothing else.
    event = {
        "event_type": "comment.created",
        "recipients": [alice],
        "context": {"post_title": "x", **AUTHOR},
    }
    published = api.post("/v1/events", json=event, headers=key(PUBLISHER))
    assert published.status_code == 202, published.text
    (event_id,) = published.json()["event_ids"]
    refused = [
        api.put("/v1/event-types/evil.type", json={"name": "e"}, headers=key(PUBLISHER)),
        api.put(f"/v1/users/{bob}", json={"email": "evil@example.test"}, headers=key(PUBLISHER)),
        api.get(f"/v1/users/{bob}/preferences", headers=key(PUBLISHER)),
        read.get(f"/v1/users/{bob}/notifications", headers=key(PUBLISHER)),
        read.post(f"/v1/users/{bob}/token", headers=key(PUBLISHER)),
        # The inbox reader reads, and neither writes, mints nor publishes.
        read.post(f"/v1/users/{alice}/notifications/read-all", headers=key(READER)),
        read.post(f"/v1/users/{bob}/token", headers=key(READER)),
        api.post("/v1/events", json=event, headers=key(READER)),
        # The minter mints, and reads nothing.
        read.get(f"/v1/users/{bob}/notifications", headers=key(MINTER)),
        api.get("/v1/event-types", headers=key(MINTER)),
    ]
    for response in refused:
        assert response.status_code == 403, (response.request.url, response.text)
        problem = response.json()
        assert problem["type"] == "urn:herald:problem:insufficient-scope"
        assert problem["required_scopes"]
    assert pipeline.poll(lambda: pipeline.inbox(event_id).get(alice))
    assert read.get(f"/v1/users/{bob}/notifications", headers=key(READER)).status_code == 200
    minted = read.post(f"/v1/users/{bob}/token", headers=key(MINTER))
    assert minted.json()["token"] == user_token(bob, LOCAL_USER_TOKEN_SECRET)
    # Nothing the refused requests asked for happened.
    assert api.get("/v1/event-types/evil.type").status_code == 404
    assert pipeline.user_contact(bob)["email"] != "evil@example.test"
    unread = read.get(f"/v1/users/{alice}/notifications/unread-count", headers=token(alice))
    assert unread.json()["unread"] >= 1
    # Rotation: two full keys at once, old and new.
    for secret in (LOCAL_ADMIN_API_KEY, NEW_ADMIN):
        assert api.get("/v1/event-types", headers=key(secret)).status_code == 200
    # The OpenAPI documents say which scope each operation needs.
    operations = api.get("/openapi.json").json()["paths"]
    assert {"AdminApiKey": ["events:write"]} in operations["/v1/events"]["post"]["security"]
    assert {"AdminApiKey": ["admin"]} in operations["/v1/event-types"]["get"]["security"]
    paths = read.get("/openapi.json").json()["paths"]
    mint = paths["/v1/users/{user_id}/token"]["post"]
    assert {"AdminApiKey": ["tokens:mint"]} in mint["security"]
    read_all = paths["/v1/users/{user_id}/notifications/read-all"]["post"]
    assert {"AdminApiKey": ["inbox:write"]} in read_all["security"]
    still_flowing(pipeline, alice, bob, bobs)


# --- 4. anonymous endpoints, failed attempts, connection caps ------------------------------------


def test_failed_authentication_is_limited_per_address(pipeline: System) -> None:
    api, read = pipeline.api, pipeline.read_api
    assert read is not None
    alice, bob = people(pipeline)
    bobs = inbox(pipeline, bob)
    attacker, neighbour = "203.0.113.7", "198.51.100.2"
    # A client of its own: the pipeline's clients send the admin key with every request.
    read = httpx.Client(base_url=read.base_url, timeout=15)
    guesses = [
        read.get(
            f"/v1/users/{bob}/notifications",
            headers={"X-User-Token": f"{n:064x}", "X-Forwarded-For": attacker},
        ).status_code
        for n in range(7)
    ]
    # HERALD_AUTH_FAILURE_BURST=5 wrong tokens, then 429 before anything is checked.
    assert guesses == [403] * 5 + [429] * 2, guesses
    limited = httpx.get(
        f"{_base(api)}/v1/event-types", headers=key("guessed-key-0123456789", attacker)
    )
    assert limited.status_code == 401  # the ingest API is another process, another budget
    blocked = read.get(f"/v1/users/{bob}/notifications", headers=key(LOCAL_ADMIN_API_KEY, attacker))
    assert blocked.status_code == 429, blocked.text  # even the right key, from that address
    assert 1 <= int(blocked.headers["Retry-After"]) <= 10
    assert blocked.json()["type"] == "urn:herald:problem:too-many-failed-attempts"
    # Another address is not affected; missing credentials are not guesses.
    for _ in range(10):
        anonymous = read.get(
            f"/v1/users/{bob}/notifications", headers={"X-Forwarded-For": neighbour}
        )
        assert anonymous.status_code == 401
    mine = {**token(bob), "X-Forwarded-For": neighbour}
    assert read.get(f"/v1/users/{bob}/notifications", headers=mine).status_code == 200
    # The budget refills (6 a minute): the attacker's address may try again after Retry-After.
    time.sleep(int(blocked.headers["Retry-After"]))
    again = read.get(f"/v1/users/{bob}/notifications", headers=key(LOCAL_ADMIN_API_KEY, attacker))
    assert again.status_code == 200
    metrics = read.get("/metrics").text
    read.close()
    assert _counter(metrics, "herald_auth_failures_total") >= 5
    assert _counter(metrics, "herald_auth_failures_limited_total") >= 3
    still_flowing(pipeline, alice, bob, bobs)


def _base(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def _counter(metrics: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{name}{re.escape(labels)} ([0-9.e+]+)$", metrics, re.M)
    assert match, f"{name}{labels} not in the metrics"
    return float(match[1])


def test_readyz_tells_strangers_only_ready_or_not_and_runs_once_a_second(
    pipeline: System,
    kafka_settings: KafkaSettings,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    read = pipeline.read_api
    assert read is not None
    alice, bob = people(pipeline)
    bobs = inbox(pipeline, bob)
    assert read.get("/readyz", headers={"X-API-Key": ""}).json() == {"status": "ready"}
    assert pipeline.api.get("/readyz", headers={"X-API-Key": ""}).json() == {"status": "ready"}
    assert read.get("/readyz").json()["checks"] == {"database": "ok", "listener": "ok"}
    # A flood of anonymous probes costs one check a second.
    label = '{service="read_api"}'
    before = _counter(read.get("/metrics").text, "herald_readiness_checks_total", label)
    started = time.monotonic()
    for _ in range(40):
        assert httpx.get(f"{_base(read)}/readyz", timeout=10).status_code == 200
    elapsed = time.monotonic() - started
    after = _counter(read.get("/metrics").text, "herald_readiness_checks_total", label)
    assert after - before <= elapsed + 1, (after - before, elapsed)

    # A read API whose database does not answer: strangers learn nothing of it.
    port = free_port()
    dead_db = db_settings.model_copy(
        update={"database_url": f"postgresql+psycopg://herald@127.0.0.1:{free_port()}/herald"}
    )
    service = run_service(
        "services.inapp_store.api",
        service_env(
            kafka_settings,
            dead_db,
            HERALD_READ_API_PORT=str(port),
            READ_API_READY_TIMEOUT_S="1",
            HERALD_ADMIN_API_KEYS=KEYS,
        ),
    )
    _wait(lambda: _answers_at_all(f"http://127.0.0.1:{port}/healthz"), 60, "the API", service.proc)
    anonymous = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    assert anonymous.status_code == 503
    assert set(anonymous.json()) == {"type", "title", "status", "detail", "instance"}
    for secret in ("127.0.0.1", dead_db.database_url.rsplit(":", 1)[1].split("/")[0], "herald@"):
        assert secret not in anonymous.text
    publisher = httpx.get(f"http://127.0.0.1:{port}/readyz", headers=key(PUBLISHER), timeout=10)
    assert "checks" not in publisher.json()  # a key without the admin scope: no details
    admin = httpx.get(f"http://127.0.0.1:{port}/readyz", headers=key(NEW_ADMIN), timeout=10)
    assert admin.status_code == 503 and admin.json()["checks"]["database"].startswith("failed")
    still_flowing(pipeline, alice, bob, bobs)


def _answers_at_all(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.TransportError:
        return False


def test_streams_and_connections_are_capped(pipeline: System) -> None:
    read = pipeline.read_api
    assert read is not None
    alice, bob = people(pipeline)
    bobs = inbox(pipeline, bob)
    carol, dave = f"carol-{uuid.uuid4().hex[:6]}", f"dave-{uuid.uuid4().hex[:6]}"
    base = _base(read)
    with contextlib.ExitStack() as open_streams:

        def stream(user_id: str, headers: dict[str, str]) -> httpx.Response:
            client = open_streams.enter_context(httpx.Client(timeout=10))
            return open_streams.enter_context(
                client.stream("GET", f"{base}/v1/users/{user_id}/stream", headers=headers)
            )

        # READ_API_MAX_STREAMS_PER_KEY=2: a key streaming for many users is capped.
        assert stream(alice, key(READER)).status_code == 200
        assert stream(bob, key(READER)).status_code == 200
        per_key = stream(carol, key(READER))
        per_key.read()
        assert per_key.status_code == 429 and "too-many-streams" in per_key.text
        # READ_API_MAX_STREAMS=3 per process, whoever opens them.
        assert stream(carol, token(carol)).status_code == 200
        full = stream(dave, token(dave))
        full.read()
        assert full.status_code == 503 and "too-many-streams-here" in full.text
        assert int(full.headers["Retry-After"]) >= 1
        # READ_API_LIMIT_CONCURRENCY=8 connections: with idle sockets beside the streams, uvicorn
        # answers the next request 503 instead of holding it.
        host, port = read.base_url.host, read.base_url.port
        assert port is not None
        for _ in range(8):
            open_streams.enter_context(socket.create_connection((host, port), timeout=5))
        refused = pipeline.poll(
            lambda: httpx.get(f"{base}/healthz", timeout=10).status_code == 503, timeout=10
        )
        assert refused, "uvicorn served a request past READ_API_LIMIT_CONCURRENCY"
    # Everything closed: served again.
    assert pipeline.poll(lambda: _answers(f"{base}/healthz"), timeout=15)
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", f"{base}/v1/users/{dave}/stream", headers=token(dave)) as again,
    ):
        assert again.status_code == 200
    still_flowing(pipeline, alice, bob, bobs)
