"""Schema-driven fuzzing of both HTTP APIs (schemathesis) against the real stack.

Schemathesis reads each app's OpenAPI document and, for every operation, sends the schema's
examples, its coverage cases (boundaries, missing and wrong-typed values) and randomly
generated requests, valid and invalid ("all" generation modes). Every response must:

- never be a 5xx (``not_a_server_error``);
- have a status code the operation documents (``status_code_conformance``), a documented
  content type (``content_type_conformance``) and a body matching the documented schema
  (``response_schema_conformance``), with the documented headers
  (``response_headers_conformance``);
- refuse what the schema says is invalid with a 4xx (``negative_data_rejection``);
- refuse a request without a valid credential on a secured operation (our own check below).

The apps run in-process (schemathesis drives the ASGI app, lifespan included) on real
PostgreSQL (this test's schema) and real Kafka (this test's topic prefix): every accepted
admin write is committed and published. Credentials are chosen per request from the case
itself (so a shrunk or replayed case keeps its choice): mostly valid ones, so the fuzz reaches
the real handlers, sometimes none, a wrong API key or a forged token. On the read API, part of
the requests are pointed at a user with seeded notifications (with deliveries and attempt
history), so the handlers that find a row run too, not only the 404 path.

The Server-Sent Events stream is fuzzed too: a stream never ends, so each one is read for
``STREAM_READ_S`` and cut (schemathesis keeps what arrived; its live behaviour has its own
tests in test_read_api.py).

The size of the run: ``HERALD_FUZZ_MAX_EXAMPLES`` random examples per operation (default 50)
on top of the examples and coverage cases.
"""

from __future__ import annotations

import collections
import os
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import psycopg
import pytest
import schemathesis
from psycopg.types.json import Jsonb
from pydantic import SecretStr
from schemathesis import Case, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from herald.auth import (
    LOCAL_ADMIN_API_KEY,
    LOCAL_USER_TOKEN_SECRET,
    AuthSettings,
    session_token,
    user_token,
)
from herald.db import search_path_options
from herald.identity import HERALD_NAMESPACE
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from schemas import Catalogue
from services.inapp_store.api.app import create_app as create_read_app
from services.inapp_store.api.settings import ReadApiSettings
from services.ingest.app import create_app as create_ingest_app
from services.ingest.settings import IngestSettings

pytestmark = pytest.mark.integration

MAX_EXAMPLES = int(os.environ.get("HERALD_FUZZ_MAX_EXAMPLES", "50"))
ADMIN_KEY = LOCAL_ADMIN_API_KEY
WRONG_KEY = "not-the-admin-key-0123456789"
#: Scoped keys: one that may only publish events, one that may only read inboxes.
PUBLISHER_KEY = "fuzz-publisher-key-0123456789"
READER_KEY = "fuzz-inbox-reader-key-0123456789"
#: Every key both apps accept, the admin key with every scope.
API_KEYS = f"{ADMIN_KEY},{PUBLISHER_KEY}=events:write,{READER_KEY}=inbox:read"


@schemathesis.check
def negative_data_rejection_as_sent(ctx: Any, response: Response, case: Case) -> bool | None:
    """``negative_data_rejection``, except for a query that carries a non-string value: it
    reaches the API as text, which may be valid (a boolean generated as "not a string" for an
    event type filter arrives as ``event_type=true``, a valid code), so a 200 proves nothing."""

    def textual(value: Any) -> bool:
        if isinstance(value, list | tuple):
            return all(isinstance(item, str) for item in value)
        return isinstance(value, str)

    if not all(textual(value) for value in (case.query or {}).values()):
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection_as_sent,
]

#: The user whose inbox is seeded (the read API's examples name user-42 too).
SEEDED_USER = "user-42"
#: Seconds a stream request is read before it is cut (a stream never ends by itself).
STREAM_READ_S = 0.5


@pytest.fixture(autouse=True)
def _legacy_node_id(request: pytest.FixtureRequest) -> None:
    # schemathesis (4.32) reads and sets ``node._nodeid`` to name each operation's subtest;
    # pytest 9.2 keeps the node id elsewhere (``_id``). Giving it the attribute back is
    # enough (nodes still have a ``__dict__``); pytest itself ignores it.
    request.node._nodeid = request.node.nodeid


def fuzz_config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                # Credentials are set by the tests, not generated at random.
                "with-security-parameters": False,
                # No .hypothesis folder in the work tree; every run starts afresh.
                "database": "none",
            },
            # Stateful runs (chains of requests through links) would multiply the run time.
            "phases": {"stateful": {"enabled": False}},
        }
    )


def choice(case: Case, buckets: int) -> int:
    """A number in ``range(buckets)`` fixed by the case's content: the same case (replayed,
    shrunk) always gets the same credential."""
    seen = repr((case.path_parameters, case.query, case.body))
    return zlib.crc32(seen.encode("utf-8", "surrogatepass")) % buckets


def secured(case: Case) -> bool:
    """Whether the operation needs a credential (``/readyz`` lists ``{}``: anonymous too)."""
    security = case.operation.definition.raw.get("security") or []
    return bool(security) and {} not in security


def takes_user_token(case: Case) -> bool:
    """Whether the operation accepts a user token (the others need an admin key)."""
    security = case.operation.definition.raw.get("security") or []
    return any("UserToken" in requirement for requirement in security)


def check_refused(response: Response, case: Case, refused: bool) -> None:
    """A secured operation called without a valid credential is never served."""
    if refused and secured(case):
        assert response.status_code >= 400, (
            f"{case.operation.label} answered {response.status_code} without a valid credential"
        )


Tally = collections.Counter[tuple[str, int]]


@pytest.fixture
def tally() -> Iterator[Tally]:
    """Requests sent, by operation and status (printed afterwards: ``pytest -s`` shows it)."""
    counts: Tally = collections.Counter()
    yield counts
    for operation in sorted({label for label, _ in counts}):
        statuses = {
            status: n for (label, status), n in sorted(counts.items()) if label == operation
        }
        print(f"{operation}: {sum(statuses.values())} requests, by status {statuses}")
    print(f"in all: {sum(counts.values())} requests")


def validate(case: Case, tally: Tally, **kwargs: Any) -> Response:
    try:
        response = case.call_and_validate(checks=CHECKS, **kwargs)
    except Exception as exc:
        # A failed check: count the response it was about.
        failed = getattr(exc, "response", None)
        tally[case.operation.label, getattr(failed, "status_code", 0)] += 1
        raise
    tally[case.operation.label, response.status_code] += 1
    return response


# --- the ingest/admin API -----------------------------------------------------------------------


def seed_ingest(database: DatabaseSettings) -> None:
    """The event types and user the OpenAPI examples name, so the examples reach the
    handlers' success paths (an event of a registered type is really published)."""
    with psycopg.connect(
        database.libpq_url, options=search_path_options(database.database_schema), autocommit=True
    ) as conn:
        for code, channels in (
            ("comment.created", ["inapp", "email"]),
            ("security.new_device", ["email", "sms"]),
        ):
            conn.execute(
                "INSERT INTO event_type (code, name, channels, templates) VALUES (%s, %s, %s, %s)",
                (
                    code,
                    code,
                    channels,
                    Jsonb({channel: {"title": "t", "body": "b"} for channel in channels}),
                ),
            )
        conn.execute("INSERT INTO user_account (id) VALUES (%s)", (SEEDED_USER,))


@pytest.fixture
def ingest_schema(
    kafka_settings: KafkaSettings, topics: Catalogue, db_settings: DatabaseSettings
) -> Iterator[schemathesis.BaseSchema]:
    seed_ingest(db_settings)
    app = create_ingest_app(
        Settings(kafka=kafka_settings, database=db_settings),
        # A rate limit the fuzz never reaches: 429 has its own tests.
        IngestSettings(publish_timeout_s=10.0, rate_limit_per_s=10_000, rate_limit_burst=10_000),
        # No limit on failed authentications either (it has its own tests).
        auth=AuthSettings(admin_api_keys=SecretStr(API_KEYS), auth_failures_per_min=0),
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=fuzz_config())
    stop_apps()


ingest_api = schemathesis.pytest.from_fixture("ingest_schema")


@ingest_api.parametrize()
def test_ingest_api_fuzz(case: Case, tally: Tally) -> None:
    headers = case.headers
    for name in ("X-API-Key", "Authorization"):
        headers.pop(name, None)
    mode = choice(case, 12)
    refused = False
    if mode <= 6:
        headers["X-API-Key"] = ADMIN_KEY
    elif mode == 7:
        headers["Authorization"] = f"Bearer {ADMIN_KEY}"
    elif mode == 8:
        headers["X-API-Key"] = WRONG_KEY
        refused = True
    elif mode == 9:
        # A key that may only publish events: refused everywhere else.
        headers["X-API-Key"] = PUBLISHER_KEY
        refused = case.operation.label != "POST /v1/events"
    elif mode == 10:
        # A read API key: no scope of the ingest API.
        headers["Authorization"] = f"Bearer {READER_KEY}"
        refused = True
    else:
        refused = True
    response = validate(case, tally)
    check_refused(response, case, refused)


# --- the read API ---------------------------------------------------------------------------------


def seed_inbox(database: DatabaseSettings) -> list[uuid.UUID]:
    """Notifications of :data:`SEEDED_USER` (read, unread, archived), two of them with
    deliveries and attempt history; their ids."""
    now = datetime.now(UTC)
    ids = []
    with psycopg.connect(
        database.libpq_url, options=search_path_options(database.database_schema), autocommit=True
    ) as conn:
        for n in range(6):
            notification_id = uuid.uuid5(HERALD_NAMESPACE, f"fuzz-{n}")
            ids.append(notification_id)
            created = now - timedelta(minutes=n)
            conn.execute(
                "INSERT INTO notification (id, event_id, user_id, event_type, title, message, "
                "metadata, is_read, read_at, archived_at, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    notification_id,
                    uuid.uuid4(),
                    SEEDED_USER,
                    "comment.created" if n % 2 else "security.new_device",
                    f"title {n}",
                    f"message {n}",
                    Jsonb({"n": n}),
                    n % 3 == 0,
                    created if n % 3 == 0 else None,
                    created if n == 5 else None,
                    created,
                ),
            )
            if n >= 2:
                continue
            for channel in ("email", "sms"):
                delivery_id = uuid.uuid5(notification_id, channel)
                conn.execute(
                    "INSERT INTO notification_delivery (id, notification_id, user_id, channel, "
                    "status, attempted_at, retry_count, error_class, error_message, "
                    "provider_message_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        delivery_id,
                        notification_id,
                        SEEDED_USER,
                        channel,
                        "sent" if channel == "email" else "failed",
                        created,
                        1,
                        None if channel == "email" else "sms.400",
                        None if channel == "email" else "invalid number",
                        f"<{delivery_id}@herald.local>" if channel == "email" else None,
                    ),
                )
                for attempt, status in ((1, "retrying"), (2, "sent")):
                    conn.execute(
                        "INSERT INTO delivery_attempt (delivery_id, attempt, status, "
                        "error_class, error_message) VALUES (%s, %s, %s, %s, %s)",
                        (
                            delivery_id,
                            attempt,
                            status,
                            "smtp.451" if status == "retrying" else None,
                            "451 try again later" if status == "retrying" else None,
                        ),
                    )
    return ids


@pytest.fixture
def seeded_ids(db_settings: DatabaseSettings) -> list[uuid.UUID]:
    return seed_inbox(db_settings)


@pytest.fixture
def read_schema(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    seeded_ids: list[uuid.UUID],
) -> Iterator[schemathesis.BaseSchema]:
    # The user and event types too: the user's preferences routes reach their success paths
    # (a PUT publishes to this test's own preferences topic).
    seed_ingest(db_settings)
    app = create_read_app(
        Settings(kafka=kafka_settings, database=db_settings),
        # No rate limit (429 has its own tests); short heartbeats so a stream sends something.
        ReadApiSettings(rate_limit_per_s=0, stream_heartbeat_s=0.2),
        AuthSettings(
            admin_api_keys=SecretStr(API_KEYS),
            user_token_secret=SecretStr(LOCAL_USER_TOKEN_SECRET),
            auth_failures_per_min=0,
        ),
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=fuzz_config())
    stop_apps()


read_api = schemathesis.pytest.from_fixture("read_schema")


@read_api.parametrize()
def test_read_api_fuzz(case: Case, seeded_ids: list[uuid.UUID], tally: Tally) -> None:
    headers = case.headers
    for name in ("X-API-Key", "Authorization", "X-User-Token"):
        headers.pop(name, None)
    query = case.query
    query.pop("token", None)
    path = case.path_parameters
    mode = choice(case, 23)
    if "user_id" in path and mode < 6:
        # A user with data: the handlers that find rows run too.
        path["user_id"] = SEEDED_USER
        if "notification_id" in path:
            path["notification_id"] = str(seeded_ids[mode % len(seeded_ids)])
    # Path parameters are kept percent-encoded, as they go on the wire; the API decodes them.
    user_id = unquote(path["user_id"]) if isinstance(path.get("user_id"), str) else None
    refused = False
    if mode < 12 and isinstance(user_id, str) and takes_user_token(case):
        headers["X-User-Token"] = user_token(user_id, LOCAL_USER_TOKEN_SECRET)
    elif mode < 15:
        # An admin key (also where the operation takes no user token).
        headers["X-API-Key"] = ADMIN_KEY
    elif mode == 15:
        headers["Authorization"] = f"Bearer {ADMIN_KEY}"
    elif mode == 16:
        headers["X-API-Key"] = WRONG_KEY
        refused = True
    elif mode == 17:
        # Another user's token (a forged one looks the same).
        headers["X-User-Token"] = user_token(f"{user_id}-other", LOCAL_USER_TOKEN_SECRET)
        refused = True
    elif mode == 18 and case.operation.path.endswith("/stream") and isinstance(user_id, str):
        # The stream also takes the token in the query (EventSource sends no headers).
        query["token"] = user_token(user_id, LOCAL_USER_TOKEN_SECRET)
    elif mode == 20:
        # A key that may read inboxes: refused where it would change or mint anything.
        headers["X-API-Key"] = READER_KEY
        refused = case.method.upper() != "GET"
    elif mode == 21:
        # A key that may only publish events: no scope of the read API.
        headers["X-API-Key"] = PUBLISHER_KEY
        refused = True
    elif mode == 22 and isinstance(user_id, str) and takes_user_token(case):
        # The user's session token (what a browser holds); it cannot mint another session.
        session, _ = session_token(user_id, LOCAL_USER_TOKEN_SECRET, 3600)
        if case.operation.path.endswith("/stream") and choice(case, 2):
            query["token"] = session
        else:
            headers["X-User-Token"] = session
        refused = case.operation.path.endswith("/session")
    else:
        refused = True
    # A stream never ends: it is read for STREAM_READ_S, then cut (what it sent is validated).
    timeout = STREAM_READ_S if case.operation.path.endswith("/stream") else 30
    response = validate(case, tally, timeout=timeout)
    check_refused(response, case, refused)


def stop_apps() -> None:
    """End the lifespans schemathesis started for this test's apps (connection pools, the
    Kafka producer, the real-time listener) before the fixtures drop the schema and topics.
    Schemathesis keeps an app's lifespan running until the process exits otherwise."""
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()
