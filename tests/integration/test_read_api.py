"""The read API against real PostgreSQL (and, for the stream, real Kafka and the real sink).

Most endpoints run in-process (FastAPI's TestClient, lifespan included, so the real-time
listener connects too) on this test's uuid-named schema, with rows inserted directly where
that is the clearer test. The delivery-status test and the real-time stream test run the real
in-app store sink on this test's topics; the stream test also runs the API as real uvicorn
processes, since a stream never ends and only a real server can show it (and show that a
change made through one process reaches the streams of another).
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb
from pydantic import SecretStr
from sqlalchemy.dialects import postgresql

from herald.auth import AuthSettings, user_token
from herald.db import search_path_options
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from schemas import Catalogue
from services.inapp_store.api.app import create_app
from services.inapp_store.api.pagination import Cursor
from services.inapp_store.api.queries import InboxFilter, inbox_statement, unread_count_statement
from services.inapp_store.api.settings import ReadApiSettings
from tests.integration.delivery_util import wait_for
from tests.integration.services import ServiceProcess, service_env
from tests.integration.test_inapp_store import (
    Publisher,
    free_port,
    inapp_request,
    notification,
    status,
    wait_until_consumed,
)

pytestmark = pytest.mark.integration

SECRET = "read-api-test-secret-0123456789"
ADMIN = "read-api-test-admin-key-0123456789"
PROBLEM_JSON = "application/problem+json"
API_MODULE = "services.inapp_store.api"
SINK_MODULE = "services.inapp_store"


def token(user_id: str) -> str:
    return user_token(user_id, SECRET)


def as_user(user_id: str) -> dict[str, str]:
    return {"X-User-Token": token(user_id)}


ADMIN_HEADERS = {"X-API-Key": ADMIN}


def make_client(database: DatabaseSettings, **config: Any) -> TestClient:
    app = create_app(
        Settings(database=database),
        ReadApiSettings(**{"rate_limit_per_s": 0, **config}),
        # Failed authentications unlimited: the refusal tests make dozens on purpose (the
        # limit has its own tests in tests/unit/test_auth.py and tests/security).
        AuthSettings(
            admin_api_keys=SecretStr(ADMIN),
            user_token_secret=SecretStr(SECRET),
            auth_failures_per_min=0,
        ),
    )
    return TestClient(app)


@pytest.fixture
def client(db_settings: DatabaseSettings) -> Iterator[TestClient]:
    with make_client(db_settings) as test_client:
        yield test_client


def connect(database: DatabaseSettings) -> psycopg.Connection[Any]:
    return psycopg.connect(
        database.libpq_url, options=search_path_options(database.database_schema), autocommit=True
    )


def row(
    user_id: str,
    created_at: datetime,
    *,
    event_type: str = "comment.created",
    is_read: bool = False,
    archived: bool = False,
    title: str | None = None,
) -> dict[str, Any]:
    """A notification row to insert directly."""
    return {
        "id": uuid.uuid4(),
        "event_id": uuid.uuid4(),
        "user_id": user_id,
        "event_type": event_type,
        "title": title or f"for {user_id} at {created_at.isoformat()}",
        "message": "hello",
        "metadata": Jsonb({"source": "test"}),
        "is_read": is_read,
        "read_at": created_at if is_read else None,
        "archived_at": created_at if archived else None,
        "created_at": created_at,
    }


def insert(database: DatabaseSettings, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = list(rows)
    with connect(database) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO notification (id, event_id, user_id, event_type, title, message, "
            "metadata, is_read, read_at, archived_at, created_at) VALUES (%(id)s, %(event_id)s, "
            "%(user_id)s, %(event_type)s, %(title)s, %(message)s, %(metadata)s, %(is_read)s, "
            "%(read_at)s, %(archived_at)s, %(created_at)s)",
            rows,
        )
    return rows


def ids(items: Iterable[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def sid(rows: Iterable[dict[str, Any]]) -> list[str]:
    return [str(r["id"]) for r in rows]


def newest_first(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)


def without_instance(problem: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in problem.items() if k != "instance"}


# --- the inbox -------------------------------------------------------------------------------


def test_inbox_newest_first_with_filters(client: TestClient, db_settings: DatabaseSettings) -> None:
    base = datetime(2024, 5, 1, 12, tzinfo=UTC)
    mine = insert(
        db_settings,
        [
            row(
                "alice",
                base + timedelta(minutes=n),
                event_type=("comment.created", "order.shipped", "login.new_device")[n % 3],
                is_read=n % 4 == 0,
                archived=n % 10 == 9,
            )
            for n in range(30)
        ],
    )
    insert(db_settings, [row("bob", base + timedelta(minutes=n)) for n in range(5)])
    visible = newest_first(r for r in mine if r["archived_at"] is None)

    page = client.get("/v1/users/alice/notifications", headers=as_user("alice")).json()
    assert ids(page["items"]) == sid(visible[:20])  # default limit 20, newest first
    assert page["next_cursor"]
    first = page["items"][0]
    assert first["user_id"] == "alice" and first["metadata"] == {"source": "test"}
    assert first["created_at"] == visible[0]["created_at"].isoformat().replace("+00:00", "Z")

    def listed(**params: Any) -> list[str]:
        response = client.get(
            "/v1/users/alice/notifications",
            params={"limit": 100, **params},
            headers=as_user("alice"),
        )
        assert response.status_code == 200, response.text
        assert response.json()["next_cursor"] is None
        return ids(response.json()["items"])

    assert listed() == sid(visible)
    assert listed(unread="true") == sid(r for r in visible if not r["is_read"])
    assert listed(event_type="order.shipped") == sid(
        r for r in visible if r["event_type"] == "order.shipped"
    )
    assert listed(event_type=["order.shipped", "login.new_device"]) == sid(
        r for r in visible if r["event_type"] != "comment.created"
    )
    since, until = base + timedelta(minutes=10), base + timedelta(minutes=20)
    assert listed(since=since.isoformat(), until=until.isoformat()) == sid(
        r for r in visible if since <= r["created_at"] < until
    )
    # A time without a zone is UTC.
    assert listed(since="2024-05-01T12:10:00", until="2024-05-01T12:20:00") == listed(
        since=since.isoformat(), until=until.isoformat()
    )
    assert listed(include_archived="true") == sid(newest_first(mine))
    assert listed(unread="true", event_type="comment.created", include_archived="true") == sid(
        r for r in newest_first(mine) if not r["is_read"] and r["event_type"] == "comment.created"
    )
    # Another user's rows never show; a user without rows has an empty inbox.
    empty = client.get("/v1/users/carol/notifications", headers=as_user("carol")).json()
    assert empty == {"items": [], "next_cursor": None}


def test_invalid_inbox_parameters_are_problems(client: TestClient) -> None:
    for params in (
        {"limit": 0},
        {"limit": 101},
        {"cursor": "garbage"},
        {"since": "yesterday"},
        {"unread": "maybe"},
    ):
        response = client.get(
            "/v1/users/alice/notifications", params=params, headers=as_user("alice")
        )
        assert response.status_code == 422, params
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["detail"]
    bad_cursor = client.get(
        "/v1/users/alice/notifications", params={"cursor": "x"}, headers=as_user("alice")
    ).json()
    assert bad_cursor["type"] == "urn:herald:problem:invalid-cursor"


def test_pagination_neither_skips_nor_repeats_under_concurrent_inserts(
    client: TestClient, db_settings: DatabaseSettings
) -> None:
    base = datetime.now(UTC) - timedelta(hours=1)
    # 40 distinct times, 6 rows each: ties that only the id can order.
    original = insert(
        db_settings,
        [row("alice", base + timedelta(seconds=n // 6)) for n in range(240)],
    )
    go: queue.Queue[int | None] = queue.Queue()
    done: queue.Queue[list[dict[str, Any]]] = queue.Queue()

    def inserter() -> None:
        # Another thread (its own connection) inserts between page fetches: brand-new rows
        # (newest) and late arrivals whose times fall inside the pages already read and
        # still to read, including exact ties with existing rows.
        step = 0
        while go.get() is not None:
            step += 1
            rows = [
                row("alice", datetime.now(UTC)),
                row("alice", base + timedelta(seconds=(step * 7) % 40)),
                row("alice", base + timedelta(seconds=(step * 13) % 40, microseconds=500)),
            ]
            done.put(insert(db_settings, rows))

    thread = threading.Thread(target=inserter, daemon=True)
    thread.start()
    seen: list[dict[str, Any]] = []
    inserted: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    try:
        while True:
            params: dict[str, Any] = {"limit": 7}
            if cursor:
                params["cursor"] = cursor
            page = client.get(
                "/v1/users/alice/notifications", params=params, headers=as_user("alice")
            ).json()
            seen.extend(page["items"])
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
            go.put(pages)
            inserted.extend(done.get(timeout=30))
    finally:
        go.put(None)
        thread.join(30)

    seen_ids = ids(seen)
    assert len(seen_ids) == len(set(seen_ids)), "a notification was repeated"
    assert set(sid(original)) <= set(seen_ids), "a notification was skipped"
    # Strictly newest first across all pages.
    keys = [(item["created_at"], uuid.UUID(item["id"])) for item in seen]
    parsed = [(datetime.fromisoformat(t), i) for t, i in keys]
    assert parsed == sorted(parsed, reverse=True) and len(set(parsed)) == len(parsed)
    assert pages >= 240 // 7 and len(inserted) == 3 * (pages - 1)
    # Rows newer than the first page never show up later (they are above every cursor).
    newest = {str(r["id"]) for r in inserted if r["created_at"] > base + timedelta(minutes=30)}
    assert newest and not newest & set(seen_ids)


def test_inbox_queries_use_the_inbox_indexes(db_settings: DatabaseSettings) -> None:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    insert(
        db_settings,
        [
            row(f"user-{n % 50}", base + timedelta(seconds=n), is_read=n % 3 > 0)
            for n in range(3000)
        ],
    )

    def plan(statement: Any) -> str:
        text = statement.compile(
            dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
        )
        with connect(db_settings) as conn:
            conn.execute("ANALYZE notification")
            # Small table: make the planner show which index it can use rather than scan.
            conn.execute("SET enable_seqscan = off")
            conn.execute("SET enable_bitmapscan = off")
            return "\n".join(r[0] for r in conn.execute(f"EXPLAIN {text}"))

    keyset = plan(
        inbox_statement(
            "user-7", InboxFilter(), Cursor(base + timedelta(hours=1), uuid.uuid4()), 21
        )
    )
    assert "Index Scan using ix_notification_inbox" in keyset, keyset
    # The cursor is part of the index condition, not a filter applied after reading rows.
    index_condition = next(line for line in keyset.splitlines() if "Index Cond" in line)
    assert "ROW(created_at, id) < ROW(" in index_condition, keyset
    assert "Sort" not in keyset, keyset
    unread = plan(inbox_statement("user-7", InboxFilter(unread_only=True), None, 21))
    assert "ix_notification_unread" in unread, unread
    assert "ix_notification_unread" in plan(unread_count_statement("user-7"))


# --- read state ------------------------------------------------------------------------------


def test_read_unread_archive_and_unread_count(
    client: TestClient, db_settings: DatabaseSettings
) -> None:
    base = datetime.now(UTC) - timedelta(minutes=10)
    rows = insert(db_settings, [row("alice", base + timedelta(minutes=n)) for n in range(5)])
    insert(db_settings, [row("bob", base)])
    user = as_user("alice")
    prefix = "/v1/users/alice/notifications"

    def unread() -> int:
        response = client.get(f"{prefix}/unread-count", headers=user)
        assert response.status_code == 200
        body = response.json()
        assert body["user_id"] == "alice"
        return int(body["unread"])

    assert unread() == 5
    target = str(rows[0]["id"])
    read = client.post(f"{prefix}/{target}/read", headers=user)
    assert read.status_code == 200
    assert read.json()["is_read"] is True and read.json()["read_at"]
    assert unread() == 4
    # Idempotent: read_at stays the first one.
    again = client.post(f"{prefix}/{target}/read", headers=user).json()
    assert again["read_at"] == read.json()["read_at"]
    unread_again = client.post(f"{prefix}/{target}/unread", headers=user).json()
    assert unread_again["is_read"] is False and unread_again["read_at"] is None
    assert unread() == 5

    archived = client.post(f"{prefix}/{target}/archive", headers=user).json()
    assert archived["archived_at"]
    assert unread() == 4  # archived ones are not counted
    listed = client.get(prefix, headers=user).json()["items"]
    assert target not in ids(listed)
    assert client.get(f"{prefix}/{target}", headers=user).json()["archived_at"]
    restored = client.post(f"{prefix}/{target}/unarchive", headers=user).json()
    assert restored["archived_at"] is None
    assert target in ids(client.get(prefix, headers=user).json()["items"])

    # Mark all read, up to a time: the newest stays unread.
    until = (base + timedelta(minutes=4)).isoformat()
    result = client.post(f"{prefix}/read-all", params={"until": until}, headers=user).json()
    assert result == {"user_id": "alice", "updated": 4}
    assert unread() == 1
    assert client.post(f"{prefix}/read-all", headers=user).json()["updated"] == 1
    assert client.post(f"{prefix}/read-all", headers=user).json()["updated"] == 0
    assert unread() == 0
    # Bob's notification was not touched.
    assert (
        client.get("/v1/users/bob/notifications/unread-count", headers=as_user("bob")).json()[
            "unread"
        ]
        == 1
    )

    # Unknown ids and malformed ids.
    missing = client.post(f"{prefix}/{uuid.uuid4()}/read", headers=user)
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM_JSON
    assert client.get(f"{prefix}/not-a-uuid", headers=user).status_code == 422


def test_delivery_status_and_history_written_by_the_sink(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    client: TestClient,
) -> None:
    run_service(SINK_MODULE, service_env(kafka_settings, db_settings, INAPP_STORE_METRICS_PORT="0"))
    note = notification()
    user_id, nid = note["user_id"], note["notification_id"]
    publisher = Publisher(kafka_settings, topics)
    publisher.notification(note)
    publisher.request(inapp_request(note))
    publisher.status(
        status(note, "email", "retrying", 1, error_class="smtp.451", error_message="451 later")
    )
    publisher.status(status(note, "email", "sent", 2, provider_message_id=f"<{nid}@herald.local>"))
    publisher.flush()
    wait_until_consumed(kafka_settings, topics)

    def detail() -> dict[str, Any] | None:
        response = client.get(f"/v1/users/{user_id}/notifications/{nid}", headers=as_user(user_id))
        body = response.json() if response.status_code == 200 else None
        return body if body and len(body["deliveries"]) == 2 else None

    body = wait_for(detail, 30, "the notification with two deliveries")
    assert body["id"] == nid and body["title"] == note["title"]
    assert body["metadata"] == note["metadata"]
    email, inapp = body["deliveries"]  # by channel name
    assert email["channel"] == "email" and email["status"] == "sent"
    assert email["retry_count"] == 1 and email["provider_message_id"] == f"<{nid}@herald.local>"
    assert [(a["attempt"], a["status"], a["error_class"]) for a in email["attempts"]] == [
        (1, "retrying", "smtp.451"),
        (2, "sent", None),
    ]
    assert inapp["channel"] == "inapp" and inapp["status"] == "delivered"
    assert [(a["attempt"], a["status"]) for a in inapp["attempts"]] == [(1, "delivered")]
    assert inapp["delivered_at"]

    # Someone else asking for this id, with their own valid token: exactly "not found".
    theirs = client.get(f"/v1/users/mallory/notifications/{nid}", headers=as_user("mallory"))
    random = client.get(
        f"/v1/users/mallory/notifications/{uuid.uuid4()}", headers=as_user("mallory")
    )
    assert theirs.status_code == random.status_code == 404
    assert theirs.json()["type"] == random.json()["type"]
    assert theirs.json()["title"] == random.json()["title"]


# --- security --------------------------------------------------------------------------------

# Every user endpoint: (method, path after /v1/users/{user}).
USER_ENDPOINTS = [
    ("GET", "/notifications"),
    ("GET", "/notifications/unread-count"),
    ("POST", "/notifications/read-all"),
    ("GET", "/notifications/{id}"),
    ("POST", "/notifications/{id}/read"),
    ("POST", "/notifications/{id}/unread"),
    ("POST", "/notifications/{id}/archive"),
    ("POST", "/notifications/{id}/unarchive"),
    ("GET", "/stream"),
]


def test_refusals_do_not_reveal_whether_a_user_exists(
    client: TestClient, db_settings: DatabaseSettings
) -> None:
    [owned] = insert(db_settings, [row("alice", datetime.now(UTC))])
    owned_id = str(owned["id"])
    forged = "0" * 64
    refusals = {
        "no credential": ({}, 401),
        "forged token": ({"X-User-Token": forged}, 403),
        "another user's token": (as_user("mallory"), 403),
        "token in the query": ({}, 401),  # only the stream takes ?token=
        "wrong API key": ({"X-API-Key": "not-the-admin-key-0123456789"}, 401),
        "wrong bearer key": ({"Authorization": "Bearer not-the-admin-key-0123"}, 401),
    }
    for method, template in USER_ENDPOINTS:
        for what, (headers, expected) in refusals.items():
            answers = []
            for user in ("alice", "ghost"):  # alice has data, ghost never existed
                path = f"/v1/users/{user}" + template.replace("{id}", owned_id)
                params = {"token": forged} if what == "token in the query" else {}
                if what == "token in the query" and template == "/stream":
                    expected = 403  # the stream does take it, and it is forged
                response = client.request(method, path, headers=headers, params=params)
                assert response.status_code == expected, (method, template, what, user)
                assert response.headers["content-type"] == PROBLEM_JSON
                answers.append(
                    (
                        response.status_code,
                        without_instance(response.json()),
                        response.headers.get("www-authenticate"),
                    )
                )
            assert answers[0] == answers[1], (method, template, what)
    # Nothing was changed by the refused writes.
    state = client.get(f"/v1/users/alice/notifications/{owned_id}", headers=ADMIN_HEADERS).json()
    assert state["is_read"] is False and state["archived_at"] is None


def test_credentials_that_work(client: TestClient, db_settings: DatabaseSettings) -> None:
    [owned] = insert(db_settings, [row("alice", datetime.now(UTC))])
    path = "/v1/users/alice/notifications"
    for headers in (
        as_user("alice"),
        ADMIN_HEADERS,
        {"Authorization": f"Bearer {ADMIN}"},
        {"X-User-Token": token("alice").upper()},
    ):
        response = client.get(path, headers=headers)
        assert response.status_code == 200, headers
        assert ids(response.json()["items"]) == [str(owned["id"])]

    # The admin token endpoint mints exactly the token the secret gives.
    minted = client.post("/v1/users/alice/token", headers=ADMIN_HEADERS)
    assert minted.json() == {"user_id": "alice", "token": token("alice")}
    assert client.get(path, headers={"X-User-Token": minted.json()["token"]}).status_code == 200
    assert client.post("/v1/users/alice/token").status_code == 401
    assert client.post("/v1/users/alice/token", headers=as_user("alice")).status_code == 401
    assert client.post("/v1/users/bad%20id/token", headers=ADMIN_HEADERS).status_code == 422


def test_rate_limit_answers_429_with_retry_after(db_settings: DatabaseSettings) -> None:
    with make_client(db_settings, rate_limit_per_s=0.2, rate_limit_burst=3) as limited:
        path = "/v1/users/alice/notifications/unread-count"
        statuses = [limited.get(path, headers=as_user("alice")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = limited.get(path, headers=as_user("alice"))
        assert refused.status_code == 429
        assert refused.headers["content-type"] == PROBLEM_JSON
        assert 1 <= int(refused.headers["Retry-After"]) <= 5  # a token every 5 s
        assert refused.json()["type"] == "urn:herald:problem:rate-limited"
        # Buckets are per caller: another user and the admin key are not affected.
        assert (
            limited.get(
                "/v1/users/bob/notifications/unread-count", headers=as_user("bob")
            ).status_code
            == 200
        )
        assert limited.get(path, headers=ADMIN_HEADERS).status_code == 200


def test_a_10_mb_body_is_refused_with_413(
    client: TestClient, db_settings: DatabaseSettings
) -> None:
    [owned] = insert(db_settings, [row("alice", datetime.now(UTC))])
    response = client.post(
        "/v1/users/alice/notifications/read-all",
        headers=as_user("alice"),
        content=b"x" * (10 * 1024 * 1024),
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["type"] == "urn:herald:problem:body-too-large"
    # Refused before the endpoint ran: nothing was marked read.
    state = client.get(f"/v1/users/alice/notifications/{owned['id']}", headers=as_user("alice"))
    assert state.json()["is_read"] is False


# --- health, readiness, metrics, docs --------------------------------------------------------


def test_health_readiness_metrics_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    # Anonymous: only the status; a key with the admin scope sees the checks.
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/readyz", headers={"X-API-Key": ADMIN}).json() == {
        "status": "ready",
        "checks": {"database": "ok", "listener": "ok"},
    }
    client.get("/v1/users/alice/notifications", headers=as_user("alice"))
    metrics = client.get("/metrics").text
    assert (
        'herald_http_request_seconds_count{method="GET",route="/v1/users/{user_id}/notifications",'
        'service="read_api",status="200"}'
    ) in metrics
    assert "herald_read_api_streams_open" in metrics
    assert client.get("/docs").status_code == 200
    assert "/v1/users/{user_id}/stream" in client.get("/openapi.json").json()["paths"]


def test_readiness_and_errors_when_the_database_does_not_answer(
    db_settings: DatabaseSettings,
) -> None:
    # A port nothing listens on: connections are refused.
    down = db_settings.model_copy(
        update={"database_url": f"postgresql+psycopg://herald@127.0.0.1:{free_port()}/herald"}
    )
    with make_client(down, ready_timeout_s=1) as broken:
        assert broken.get("/healthz").status_code == 200
        anonymous = broken.get("/readyz")
        assert anonymous.status_code == 503 and "checks" not in anonymous.json()
        assert "127.0.0.1" not in anonymous.text and "herald" not in anonymous.json()["detail"]
        ready = broken.get("/readyz", headers={"X-API-Key": ADMIN})
        assert ready.status_code == 503 and ready.headers["content-type"] == PROBLEM_JSON
        checks = ready.json()["checks"]
        assert checks["database"].startswith("failed") and checks["listener"].startswith("failed")
        inbox = broken.get("/v1/users/alice/notifications", headers=as_user("alice"))
        assert inbox.status_code == 503
        assert inbox.json()["type"] == "urn:herald:problem:database-unavailable"
        assert inbox.headers["Retry-After"]
        stream = broken.get("/v1/users/alice/stream", headers=as_user("alice"))
        assert stream.status_code == 503
        assert stream.json()["type"] == "urn:herald:problem:stream-unavailable"


# --- the real-time stream, on real processes --------------------------------------------------


class SseClient:
    """A Server-Sent Events client reading in a thread; events land in a queue."""

    def __init__(
        self,
        url: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url, self.params, self.headers = url, params or {}, headers or {}
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.received: list[tuple[str, Any]] = []
        #: The SSE id of each event that had one, by the id in its data.
        self.ids: dict[str, str] = {}
        self.comments: list[str] = []
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.status: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            timeout = httpx.Timeout(10, read=30)
            with httpx.stream(
                "GET", self.url, params=self.params, headers=self.headers, timeout=timeout
            ) as response:
                self.status = response.status_code
                if response.status_code != 200:
                    return
                name, data, event_id = "message", list[str](), ""
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith(":"):
                        self.comments.append(line[1:].strip())
                        if line[1:].strip() == "connected":
                            self.connected.set()
                    elif line == "":
                        if data:
                            event = (name, json.loads("\n".join(data)))
                            if event_id and isinstance(event[1], dict) and "id" in event[1]:
                                self.ids[event[1]["id"]] = event_id
                            self.received.append(event)
                            self.events.put(event)
                        name, data, event_id = "message", [], ""
                    else:
                        field, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if field == "event":
                            name = value
                        elif field == "id":
                            event_id = value
                        elif field == "data":
                            data.append(value)
        except httpx.HTTPError:
            pass
        finally:
            self.connected.set()
            self.ended.set()

    def wait_connected(self, timeout: float = 15) -> None:
        assert self.connected.wait(timeout), f"{self.url} did not connect"
        assert self.status == 200, f"{self.url} answered {self.status}"

    def next(self, name: str, timeout: float, match: Callable[[Any], bool] = bool) -> Any:
        """The data of the next ``name`` event ``match`` accepts (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name} event within {timeout}s; got {self.received}")
            try:
                event_name, data = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event_name == name and match(data):
                return data

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def start_api(
    run_service: Callable[..., ServiceProcess],
    kafka: KafkaSettings,
    database: DatabaseSettings,
    **extra: str,
) -> tuple[str, ServiceProcess]:
    """Start ``python -m services.inapp_store.api``; its base URL and process once ready."""
    port = free_port()
    env = service_env(
        kafka,
        database,
        HERALD_READ_API_PORT=str(port),
        HERALD_ADMIN_API_KEYS=ADMIN,
        HERALD_USER_TOKEN_SECRET=SECRET,
        READ_API_STREAM_HEARTBEAT_S="1",
        **extra,
    )
    service = run_service(API_MODULE, env, name=f"read_api-{port}")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert service.running(), f"the read API exited:\n{service.output()[-3000:]}"
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 30, "the read API to be ready")
    return url, service


def test_stream_pushes_new_notifications_and_read_state_across_processes(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    run_service(SINK_MODULE, service_env(kafka_settings, db_settings, INAPP_STORE_METRICS_PORT="0"))
    api_a, _ = start_api(run_service, kafka_settings, db_settings)
    api_b, _ = start_api(run_service, kafka_settings, db_settings)
    publisher = Publisher(kafka_settings, topics)
    # Warm up: the sink has joined its group and writes rows.
    warm = notification()
    publisher.notification(warm)
    publisher.flush()
    wait_for(
        lambda: (
            httpx.get(
                f"{api_a}/v1/users/{warm['user_id']}/notifications/unread-count",
                headers=as_user(warm["user_id"]),
            ).json()["unread"]
            == 1
        ),
        60,
        "the sink to write the warm-up notification",
    )

    user, other = f"u-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    # Two sessions of the user on different processes (a browser with ?token=, an app with the
    # header), and another user's session.
    on_a = SseClient(f"{api_a}/v1/users/{user}/stream", params={"token": token(user)})
    on_b = SseClient(f"{api_b}/v1/users/{user}/stream", headers=as_user(user))
    others = SseClient(f"{api_a}/v1/users/{other}/stream", params={"token": token(other)})
    sessions = [on_a, on_b, others]
    try:
        for session in sessions:
            session.wait_connected()

        # A notification published through Kafka: the sink stores it and NOTIFYs on commit.
        note = notification(user)
        published = time.monotonic()
        publisher.notification(note)
        publisher.flush()
        nid = note["notification_id"]
        for session in (on_a, on_b):
            created = session.next("notification.created", 10, lambda d: d["id"] == nid)
            assert created["user_id"] == user and created["title"] == note["title"]
            assert created["metadata"] == note["metadata"] and created["is_read"] is False
        latency = time.monotonic() - published
        # The pushed object is the inbox's own representation.
        listed = httpx.get(f"{api_b}/v1/users/{user}/notifications", headers=as_user(user))
        assert listed.json()["items"] == [created]

        # A read-state change made through B reaches the session on A (and on B).
        changed = time.monotonic()
        read = httpx.post(
            f"{api_b}/v1/users/{user}/notifications/{nid}/read", headers=as_user(user)
        )
        assert read.status_code == 200
        for session in (on_a, on_b):
            event = session.next("notification.read", 5, lambda d: d["id"] == nid)
            assert event["read_at"] == read.json()["read_at"]
        change_latency = time.monotonic() - changed
        httpx.post(f"{api_a}/v1/users/{user}/notifications/{nid}/unread", headers=ADMIN_HEADERS)
        on_b.next("notification.unread", 5, lambda d: d["id"] == nid)
        done = httpx.post(f"{api_b}/v1/users/{user}/notifications/read-all", headers=as_user(user))
        assert done.json()["updated"] == 1
        assert on_a.next("notifications.read_all", 5)["count"] == 1
        httpx.post(f"{api_a}/v1/users/{user}/notifications/{nid}/archive", headers=as_user(user))
        assert on_b.next("notification.archived", 5, lambda d: d["id"] == nid)["archived_at"]

        # The other user's session saw none of it, and gets its own notification.
        their = notification(other)
        publisher.notification(their)
        publisher.flush()
        others.next("notification.created", 10, lambda d: d["id"] == their["notification_id"])
        assert all(data.get("id") != nid for _, data in others.received)
        assert all(d.get("id") != their["notification_id"] for _, d in on_a.received)
        # Idle streams carry heartbeats (every second in this test).
        wait_for(lambda: "heartbeat" in on_a.comments, 5, "a heartbeat on an idle stream")

        # Refusals come before the stream starts, like any other endpoint.
        assert httpx.get(f"{api_a}/v1/users/{user}/stream").status_code == 401
        refused = httpx.get(f"{api_a}/v1/users/{user}/stream", params={"token": token(other)})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == PROBLEM_JSON
        # Reported, not asserted (timings belong to the benchmark, not to tests).
        print(
            f"Kafka publish -> both sessions: {latency:.3f}s; "
            f"mark read on B (request sent) -> both sessions: {change_latency:.3f}s"
        )
    finally:
        for session in sessions:
            session.close()


def test_a_stream_resumed_with_last_event_id_replays_what_it_missed(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    run_service(SINK_MODULE, service_env(kafka_settings, db_settings, INAPP_STORE_METRICS_PORT="0"))
    api, _ = start_api(run_service, kafka_settings, db_settings)
    publisher = Publisher(kafka_settings, topics)
    user = f"u-{uuid.uuid4().hex[:8]}"
    url = f"{api}/v1/users/{user}/stream"

    def unread() -> int:
        reply = httpx.get(
            f"{url[: -len('/stream')]}/notifications/unread-count", headers=as_user(user)
        )
        return int(reply.json()["unread"])

    first = SseClient(url, params={"token": token(user)})
    try:
        first.wait_connected()
        seen = notification(user)
        publisher.notification(seen)
        publisher.flush()
        first.next("notification.created", 60, lambda d: d["id"] == seen["notification_id"])
        last_id = first.ids[seen["notification_id"]]
    finally:
        first.close()
    # Two notifications arrive while the client is away.
    missed = [notification(user), notification(user)]
    for note in missed:
        publisher.notification(note)
    publisher.flush()
    wait_for(lambda: unread() == 3, 60, "the sink to store the missed notifications")

    # EventSource's own reconnection sends Last-Event-ID: the missed ones come first, in
    # inbox order (oldest first), each with its id; the one already seen is not repeated.
    resumed = SseClient(url, params={"token": token(user)}, headers={"Last-Event-ID": last_id})
    try:
        resumed.wait_connected()
        replayed = [resumed.next("notification.created", 10)["id"] for _ in missed]
        assert sorted(replayed) == sorted(note["notification_id"] for note in missed)
        assert seen["notification_id"] not in replayed
        # Live events keep flowing after the replay, once each.
        live = notification(user)
        publisher.notification(live)
        publisher.flush()
        resumed.next("notification.created", 30, lambda d: d["id"] == live["notification_id"])
        assert [d["id"] for _, d in resumed.received].count(live["notification_id"]) == 1
        assert resumed.ids[live["notification_id"]]
    finally:
        resumed.close()
    # The query form (a stream the client reopens itself), and an id this API never gave.
    by_query = SseClient(url, params={"token": token(user), "last_event_id": last_id})
    garbage = SseClient(url, params={"token": token(user)}, headers={"Last-Event-ID": "nonsense"})
    try:
        by_query.wait_connected()
        assert len([by_query.next("notification.created", 10) for _ in range(3)]) == 3
        garbage.wait_connected()
        assert garbage.next("resync", 10)["reason"] == "unknown Last-Event-ID"
    finally:
        by_query.close()
        garbage.close()


def test_streams_resync_after_the_listening_connection_is_lost(
    kafka_settings: KafkaSettings,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    api, _ = start_api(run_service, kafka_settings, db_settings)
    [owned] = insert(db_settings, [row("alice", datetime.now(UTC))])
    session = SseClient(f"{api}/v1/users/alice/stream", params={"token": token("alice")})
    try:
        session.wait_connected()
        # Kill this API's LISTEN connection (found by its application name, which names this
        # test's schema, so no other test's connection is touched).
        with connect(db_settings) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (f"herald-read-api-listen:{db_settings.database_schema}",),
            ).fetchone()
        assert killed == (1,)
        # The stream stays open and is told it may have missed events...
        assert session.next("resync", 10) == {"reason": "reconnected"}
        assert httpx.get(f"{api}/readyz", timeout=5).status_code == 200
        # ...and events flow again.
        nid = str(owned["id"])
        httpx.post(f"{api}/v1/users/alice/notifications/{nid}/read", headers=as_user("alice"))
        session.next("notification.read", 5, lambda d: d["id"] == nid)
    finally:
        session.close()


def test_sigterm_ends_open_streams_and_exits_promptly(
    kafka_settings: KafkaSettings,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    api, service = start_api(run_service, kafka_settings, db_settings)
    session = SseClient(f"{api}/v1/users/alice/stream", params={"token": token("alice")})
    try:
        session.wait_connected()
        started = time.monotonic()
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit is by SIGTERM.
        assert service.stop(timeout=20) in (0, -signal.SIGTERM)
        # Well within uvicorn's 10 s graceful timeout, which an open stream would use up.
        assert time.monotonic() - started < 6
        assert "Application shutdown complete" in service.output()
        assert session.ended.wait(5)
    finally:
        session.close()


def test_a_real_server_refuses_an_announced_10_mb_body_without_reading_it(
    kafka_settings: KafkaSettings,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    api, _ = start_api(run_service, kafka_settings, db_settings)
    port = int(api.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Headers only: the 413 must come before a single body byte is sent.
        sock.sendall(
            b"POST /v1/users/alice/notifications/read-all HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            b"X-User-Token: " + token("alice").encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: 10485760\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"application/problem+json" in head.lower()
    assert json.loads(body)["type"] == "urn:herald:problem:body-too-large"
