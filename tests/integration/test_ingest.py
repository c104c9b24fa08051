"""The ingest/admin API against real Kafka and real PostgreSQL.

The app runs in-process (FastAPI's TestClient, lifespan included) on this test's uuid-prefixed
topics and uuid-named schema; what it wrote is read back from PostgreSQL and from the topics.
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import KafkaException
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from herald.auth import LOCAL_ADMIN_API_KEY
from herald.db import make_engine, search_path_options
from herald.devstack.process import free_port
from herald.serde import decode
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from herald.streaming import Outgoing
from schemas import CATALOGUE, Catalogue
from services.ingest.app import create_app
from services.ingest.idempotency import REPLAYED_HEADER, purge_expired
from services.ingest.publisher import Publisher
from services.ingest.settings import IngestSettings
from tests.integration.kafka_util import read_all
from tests.integration.services import ServiceProcess, service_env

#: The local stack's well-known admin key: every ingest route needs one.
ADMIN = {"X-API-Key": LOCAL_ADMIN_API_KEY}

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"


def make_client(
    kafka: KafkaSettings, database: DatabaseSettings, **limits: Any
) -> Iterator[TestClient]:
    app = create_app(
        Settings(kafka=kafka, database=database),
        IngestSettings(**{"max_batch_events": 5, "publish_timeout_s": 10.0, **limits}),
    )
    with TestClient(app, headers=ADMIN) as client:
        yield client


@pytest.fixture
def client(
    kafka_settings: KafkaSettings, topics: Catalogue, db_settings: DatabaseSettings
) -> Iterator[TestClient]:
    yield from make_client(kafka_settings, db_settings)


def records(kafka: KafkaSettings, topic: str) -> list[tuple[str, dict[str, Any]]]:
    """(key, decoded value) of every record now on ``topic``."""
    deadline = time.monotonic() + 15
    while True:
        try:
            messages = read_all(kafka, topic)
            break
        except KafkaException:
            # A topic created moments ago and never written to may not have its partition
            # leaders elected yet ("not leader for partition"): wait for them.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    out = []
    for message in messages:
        key = message.key()
        assert isinstance(key, bytes)
        value = message.value()
        assert value is not None
        out.append((key.decode(), decode(value)))
    return out


def rows(database: DatabaseSettings, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(
        database.libpq_url,
        options=search_path_options(database.database_schema),
        row_factory=dict_row,
    ) as conn:
        return conn.execute(sql, params).fetchall()


def execute(database: DatabaseSettings, sql: str, *params: Any) -> None:
    with psycopg.connect(
        database.libpq_url, options=search_path_options(database.database_schema)
    ) as conn:
        conn.execute(sql, params)


def assert_problem(response: Any, status: int, *phrases: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= body.keys()
    for phrase in phrases:
        assert phrase in body["detail"], body["detail"]
    return body


def create_event_type(client: TestClient, code: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/event-types", json={"code": code, "name": code.title(), **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# --- health -----------------------------------------------------------------------------------


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "kafka": "ok"}}
    assert "herald_http_request_seconds" in client.get("/metrics").text
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").json()["paths"].keys() >= {
        "/v1/events",
        "/v1/event-types/{code}",
        "/v1/users/{user_id}/preferences",
    }


def test_readyz_is_503_when_topics_are_missing(
    kafka_settings: KafkaSettings, db_settings: DatabaseSettings
) -> None:
    # No `topics` fixture: this test's prefixed topics do not exist.
    for client in make_client(kafka_settings, db_settings):
        body = assert_problem(client.get("/readyz"), 503, "kafka failed: missing topics")
        assert body["checks"]["database"] == "ok"
        expected = CATALOGUE.with_prefix(kafka_settings.topic_prefix).events.name
        assert expected in body["detail"]


# --- event types ------------------------------------------------------------------------------


def test_event_type_without_templates_gets_generated_ones(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    created = create_event_type(
        client,
        "comment.created",
        channels=["inapp", "email", "sms"],
        context_keys=["post_title", "comment_url"],
    )
    assert set(created["templates"]) == {"inapp", "email", "sms"}

    [row] = rows(db_settings, "select * from event_type where code = %s", "comment.created")
    assert row["channels"] == ["inapp", "email", "sms"]
    for channel in ("inapp", "email", "sms"):
        assert "{{ post_title }}" in row["templates"][channel]["body"]
    assert "{{ comment_url }}" in row["templates"]["email"]["html"]

    [(key, record)] = records(kafka_settings, topics.event_types.name)
    assert key == "comment.created"
    assert record["templates"]["email"]["body"] == row["templates"]["email"]["body"]
    assert record["is_active"] is True

    assert client.get("/v1/event-types/comment.created").json() == created


def test_event_type_with_templates_update_and_deactivate(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    email = {"title": "Hi {{ who }}", "body": "Body {{ who }}", "html": "<b>{{ who }}</b>"}
    create_event_type(client, "order.shipped", channels=["email"], templates={"email": email})
    [row] = rows(db_settings, "select templates from event_type where code = 'order.shipped'")
    assert row["templates"] == {"email": email}

    duplicate = client.post("/v1/event-types", json={"code": "order.shipped", "name": "Again"})
    assert_problem(duplicate, 409, "'order.shipped' already exists", "PUT /v1/event-types/")

    # PUT replaces the settings; templates not sent are kept.
    updated = client.put(
        "/v1/event-types/order.shipped", json={"name": "Order shipped", "urgent": True}
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["templates"]["inapp"]["title"] == "Order shipped"  # generated
    assert updated.json()["templates"]["email"] == email  # kept
    assert updated.json()["urgent"] is True

    # PUT of a new code creates it.
    assert client.put("/v1/event-types/order.lost", json={"name": "Lost"}).status_code == 201

    deactivated = client.delete("/v1/event-types/order.shipped")
    assert deactivated.status_code == 200, deactivated.text
    assert deactivated.json()["is_active"] is False
    assert rows(db_settings, "select is_active from event_type where code = 'order.shipped'") == [
        {"is_active": False}
    ]
    published = records(kafka_settings, topics.event_types.name)
    versions = [record for key, record in published if key == "order.shipped"]
    # create, PUT, DELETE: the last version is what the compacted topic keeps.
    assert [v["is_active"] for v in versions] == [True, True, False]
    assert versions[1]["urgent"] is True
    assert {key for key, _ in published} == {"order.shipped", "order.lost"}

    listed = client.get("/v1/event-types", params={"active": "false"}).json()["items"]
    assert [item["code"] for item in listed] == ["order.shipped"]
    assert_problem(client.delete("/v1/event-types/no.such"), 404, "no event type 'no.such'")


def test_invalid_event_types_are_refused_and_nothing_is_published(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    bad_template = client.post(
        "/v1/event-types",
        json={"code": "a.b", "name": "A", "templates": {"inapp": {"body": "Hello {{ name"}}},
    )
    body = assert_problem(bad_template, 422, "templates.inapp.body: invalid template")
    assert body["errors"][0]["field"] == "templates.inapp.body"
    assert_problem(
        client.post("/v1/event-types", json={"code": "Bad Code", "name": "X"}),
        422,
        "code: 'Bad Code' is not a valid event type code",
    )
    assert_problem(
        client.put("/v1/event-types/a.b", json={"code": "c.d", "name": "X"}),
        422,
        "does not match",
    )
    assert rows(db_settings, "select code from event_type") == []
    assert records(kafka_settings, topics.event_types.name) == []


# --- users and preferences --------------------------------------------------------------------


def test_user_is_stored_and_published_with_default_preferences(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    created = client.put(
        "/v1/users/user-42",
        json={
            "email": "Ada@Example.COM",
            "phone": "+44 20 7946 0958",
            "locale": "en_GB",
            "timezone": "Europe/London",
            "display_name": "Ada",
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["phone"] == "+442079460958"

    [row] = rows(db_settings, "select * from user_account where id = 'user-42'")
    assert (row["email"], row["phone"], row["locale"]) == (
        "Ada@example.com",
        "+442079460958",
        "en-GB",
    )
    [prefs] = rows(db_settings, "select * from notification_preference where user_id = 'user-42'")
    assert prefs["inapp_enabled"] and prefs["email_enabled"] and prefs["sms_enabled"]

    [(key, user)] = records(kafka_settings, topics.users.name)
    assert key == "user-42"
    assert user["email"] == "Ada@example.com"
    assert user["timezone"] == "Europe/London"
    [(key, published)] = records(kafka_settings, topics.preferences.name)
    assert key == "user-42"
    assert published["sms_enabled"] is True
    assert published["event_overrides"] == {}

    again = client.put("/v1/users/user-42", json={"email": "ada@example.com"})
    assert again.status_code == 200, again.text
    fetched = client.get("/v1/users/user-42").json()
    assert fetched["email"] == "ada@example.com"
    assert fetched["timezone"] == "UTC"  # PUT replaces: left out means the default
    assert_problem(client.get("/v1/users/nobody"), 404, "no user 'nobody'")


@pytest.mark.parametrize(
    ("field", "value", "phrase"),
    [
        ("phone", "0170 1234567", "'0170 1234567' is not an E.164 phone number"),
        ("email", "ada@", "'ada@' is not a valid email address"),
        ("timezone", "Mars/Olympus", "'Mars/Olympus' is not a known IANA time zone"),
    ],
)
def test_bad_contact_data_is_refused_readably(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    field: str,
    value: str,
    phrase: str,
) -> None:
    body = assert_problem(client.put("/v1/users/u-1", json={field: value}), 422, phrase)
    assert body["errors"] == [{"field": field, "message": body["detail"].split(": ", 1)[1]}]
    assert rows(db_settings, "select id from user_account") == []
    assert records(kafka_settings, topics.users.name) == []


def test_preferences_are_stored_replaced_and_published(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    create_event_type(client, "comment.created")
    create_event_type(client, "newsletter.sent")
    assert client.put("/v1/users/u-7", json={}).status_code == 201

    wanted = {
        "sms_enabled": False,
        "quiet_hours_start": "22:00",
        "quiet_hours_end": "07:30",
        "event_overrides": {
            "comment.created": {"channels": ["inapp"]},
            "newsletter.sent": {"enabled": False},
        },
    }
    response = client.put("/v1/users/u-7/preferences", json=wanted)
    assert response.status_code == 200, response.text
    assert response.json()["event_overrides"] == {
        "comment.created": {"enabled": True, "channels": ["inapp"]},
        "newsletter.sent": {"enabled": False, "channels": None},
    }
    [prefs] = rows(db_settings, "select * from notification_preference where user_id = 'u-7'")
    assert prefs["sms_enabled"] is False
    assert str(prefs["quiet_hours_start"]) == "22:00:00"
    overrides = rows(
        db_settings,
        "select event_type_code, enabled, channels from user_event_preference "
        "where user_id = 'u-7' order by event_type_code",
    )
    assert overrides == [
        {"event_type_code": "comment.created", "enabled": True, "channels": ["inapp"]},
        {"event_type_code": "newsletter.sent", "enabled": False, "channels": None},
    ]
    latest = [record for key, record in records(kafka_settings, topics.preferences.name)][-1]
    assert latest["quiet_hours_end"] == "07:30"
    assert latest["event_overrides"]["newsletter.sent"] == {"enabled": False, "channels": None}
    assert client.get("/v1/users/u-7/preferences").json() == response.json()

    # A PUT replaces: overrides left out are gone, in PostgreSQL and on the topic.
    assert client.put("/v1/users/u-7/preferences", json={}).status_code == 200
    assert rows(db_settings, "select * from user_event_preference") == []
    latest = [record for key, record in records(kafka_settings, topics.preferences.name)][-1]
    assert latest["event_overrides"] == {}
    assert latest["sms_enabled"] is True

    unknown = client.put(
        "/v1/users/u-7/preferences", json={"event_overrides": {"no.such": {"enabled": False}}}
    )
    assert_problem(unknown, 422, "unknown event type 'no.such'")
    assert_problem(
        client.put("/v1/users/ghost/preferences", json={}), 404, "PUT /v1/users/ghost first"
    )
    assert_problem(
        client.put("/v1/users/u-7/preferences", json={"quiet_hours_start": "22:00"}),
        422,
        "quiet hours need both",
    )


class JitteryPublisher(Publisher):
    """The real publisher, after a random pause: widens the gap between a write's commit and
    its publish, where concurrent writers of one record could overtake each other."""

    def publish(self, records: Sequence[Outgoing]) -> None:
        time.sleep(random.uniform(0, 0.03))
        super().publish(records)


def test_concurrent_writes_leave_kafka_on_the_databases_version(
    kafka_settings: KafkaSettings, topics: Catalogue, db_settings: DatabaseSettings
) -> None:
    publisher = JitteryPublisher(kafka_settings)
    app = create_app(Settings(kafka=kafka_settings, database=db_settings), publisher=publisher)
    try:
        with TestClient(app, headers=ADMIN) as client:

            def put(n: int) -> int:
                response = client.put("/v1/users/racer", json={"display_name": f"v{n}"})
                return response.status_code

            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(put, range(24)))
    finally:
        publisher.close()
    assert statuses.count(201) == 1 and statuses.count(200) == 23, statuses
    [row] = rows(db_settings, "select display_name from user_account where id = 'racer'")
    published = [record for key, record in records(kafka_settings, topics.users.name)]
    assert len(published) == 24
    # Versions reach Kafka in the order PostgreSQL committed them (each write's transaction
    # starts once it holds the record's lock, so updated_at follows that order)...
    stamps = [record["updated_at"] for record in published]
    assert stamps == sorted(stamps)
    # ...so the compacted topic ends on the version PostgreSQL kept.
    assert published[-1]["display_name"] == row["display_name"]


# --- events -----------------------------------------------------------------------------------


def test_single_and_batch_events_are_published(
    client: TestClient, kafka_settings: KafkaSettings, topics: Catalogue
) -> None:
    create_event_type(client, "comment.created")
    given = str(uuid.uuid4())
    single = client.post(
        "/v1/events",
        json={
            "event_type": "comment.created",
            "recipients": ["u-1", "u-2"],
            "actor_id": "u-0",
            "context": {"post_title": "Kafka", "count": 3, "hot": True},
            "metadata": {"trace_id": "t-1"},
            "occurred_at": "2024-05-01T14:00:00+02:00",
        },
    )
    assert single.status_code == 202, single.text
    [single_id] = single.json()["event_ids"]
    batch = client.post(
        "/v1/events",
        json={
            "events": [
                {"event_type": "comment.created", "recipients": ["u-3"], "event_id": given},
                {"event_type": "comment.created", "recipients": ["u-4"]},
            ]
        },
    )
    assert batch.status_code == 202, batch.text
    assert batch.json()["accepted"] == 2
    batch_ids = batch.json()["event_ids"]
    assert batch_ids[0] == given

    published = dict(records(kafka_settings, topics.events.name))
    assert published.keys() == {single_id, *batch_ids}
    event = published[single_id]
    assert event["event_id"] == single_id
    assert event["recipients"] == ["u-1", "u-2"]
    assert event["actor_id"] == "u-0"
    assert event["context"] == {"post_title": "Kafka", "count": "3", "hot": "true"}
    assert event["metadata"] == {"trace_id": "t-1"}
    assert event["occurred_at"].isoformat() == "2024-05-01T12:00:00+00:00"
    assert published[batch_ids[1]]["recipients"] == ["u-4"]


def test_idempotency_key_replays_the_first_response_and_refuses_another_body(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    create_event_type(client, "order.shipped")
    event = {"event_type": "order.shipped", "recipients": ["u-1"], "context": {"order": "991"}}
    headers = {"Idempotency-Key": f"order-991-{uuid.uuid4()}"}
    first = client.post("/v1/events", json=event, headers=headers)
    assert first.status_code == 202, first.text
    assert REPLAYED_HEADER not in first.headers
    # The same body (spelt differently) again: the first response, and nothing published.
    respelled = {**event, "context": {"order": 991}, "metadata": {}}
    second = client.post("/v1/events", json=respelled, headers=headers)
    assert second.status_code == 202, second.text
    assert second.headers[REPLAYED_HEADER] == "true"
    assert second.content == first.content
    [event_id] = first.json()["event_ids"]
    assert [key for key, _ in records(kafka_settings, topics.events.name)] == [event_id]
    [stored] = rows(db_settings, "select * from idempotency_key")
    assert stored["key"] == headers["Idempotency-Key"]
    assert stored["caller"].startswith("http-ingest:")
    assert (stored["response_status"], stored["response_body"]) == (202, first.json())

    # The same key with another body (a batch of the event, another recipient) is refused,
    # and publishes nothing.
    for other in ({"events": [event, event]}, {**event, "recipients": ["u-2"]}):
        body = assert_problem(
            client.post("/v1/events", json=other, headers=headers),
            422,
            "already used with a different request body",
        )
        assert body["type"].endswith(":idempotency-key-reused")
    assert [key for key, _ in records(kafka_settings, topics.events.name)] == [event_id]

    # A key may come with a batch: ids derived for the events without one, replayed alike.
    given = str(uuid.uuid4())
    batch = {"events": [event, {**event, "event_id": given}, event]}
    batch_key = {"Idempotency-Key": str(uuid.uuid4())}
    accepted = client.post("/v1/events", json=batch, headers=batch_key)
    assert accepted.status_code == 202, accepted.text
    ids = accepted.json()["event_ids"]
    assert len(set(ids)) == 3 and ids[1] == given and event_id not in ids
    replayed = client.post("/v1/events", json=batch, headers=batch_key)
    assert replayed.headers[REPLAYED_HEADER] == "true"
    assert replayed.json() == accepted.json()
    assert sorted(key for key, _ in records(kafka_settings, topics.events.name)) == sorted(
        [event_id, *ids]
    )
    assert_problem(
        client.post("/v1/events", json=event, headers={"Idempotency-Key": "x" * 256}),
        422,
        "Idempotency-Key must be 1 to 255 visible characters",
    )


def test_a_failed_keyed_request_stores_nothing_and_may_be_retried(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    event = {"event_type": "order.shipped", "recipients": ["u-1"]}
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    assert_problem(
        client.post("/v1/events", json=event, headers=headers), 422, "unknown event type"
    )
    assert rows(db_settings, "select * from idempotency_key") == []
    # Fixed (the event type registered): the same key goes through, as a new request.
    create_event_type(client, "order.shipped")
    retried = client.post("/v1/events", json=event, headers=headers)
    assert retried.status_code == 202, retried.text
    assert REPLAYED_HEADER not in retried.headers

    # Kafka down: 503, the claim is released; the retry publishes the same derived ids.
    broken = kafka_settings.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})
    key = {"Idempotency-Key": str(uuid.uuid4())}
    for down in make_client(broken, db_settings, publish_timeout_s=1.5):
        failed = assert_problem(down.post("/v1/events", json=event, headers=key), 503)
        stored = rows(db_settings, "select key from idempotency_key")
        assert key["Idempotency-Key"] not in {row["key"] for row in stored}
    again = client.post("/v1/events", json=event, headers=key)
    assert again.status_code == 202, again.text
    assert again.json()["event_ids"] == failed["event_ids"]


def test_a_key_held_by_a_crashed_request_is_taken_over_and_an_expired_one_is_new(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    create_event_type(client, "order.shipped")
    event = {"event_type": "order.shipped", "recipients": ["u-1"]}
    key = str(uuid.uuid4())
    first = client.post("/v1/events", json=event, headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    # As if the request had died between publishing and storing its response.
    execute(db_settings, "update idempotency_key set response_status = null, response_body = null")
    in_use = client.post("/v1/events", json=event, headers={"Idempotency-Key": key})
    body = assert_problem(in_use, 409, "still in progress")
    assert body["type"].endswith(":idempotency-key-in-use")
    assert in_use.headers["retry-after"] == "1"
    # Past the lock timeout the retry takes it over and publishes the same id again.
    execute(db_settings, "update idempotency_key set locked_at = now() - interval '1 hour'")
    taken = client.post("/v1/events", json=event, headers={"Idempotency-Key": key})
    assert taken.status_code == 202, taken.text
    assert REPLAYED_HEADER not in taken.headers
    assert taken.json() == first.json()
    [event_id] = first.json()["event_ids"]
    assert [k for k, _ in records(kafka_settings, topics.events.name)] == [event_id, event_id]

    # Older than the TTL, a key counts as never used: another body is a new request...
    execute(db_settings, "update idempotency_key set created_at = now() - interval '2 days'")
    other = {**event, "recipients": ["u-2"]}
    fresh = client.post("/v1/events", json=other, headers={"Idempotency-Key": key})
    assert fresh.status_code == 202, fresh.text
    assert fresh.json()["event_ids"] != first.json()["event_ids"]
    # ... and expired keys are deleted.
    execute(db_settings, "update idempotency_key set created_at = now() - interval '2 days'")
    engine = make_engine(db_settings)
    try:
        assert purge_expired(engine, 86_400, batch=1) == 1
    finally:
        engine.dispose()
    assert rows(db_settings, "select * from idempotency_key") == []


def test_unknown_or_inactive_event_types_publish_nothing(
    client: TestClient, kafka_settings: KafkaSettings, topics: Catalogue
) -> None:
    create_event_type(client, "comment.created")
    create_event_type(client, "old.feature")
    assert client.delete("/v1/event-types/old.feature").status_code == 200

    known = {"event_type": "comment.created", "recipients": ["u-1"]}
    unknown = client.post(
        "/v1/events",
        json={"events": [known, {"event_type": "comment.creatd", "recipients": ["u-1"]}]},
    )
    body = assert_problem(unknown, 422, "unknown event type 'comment.creatd'")
    assert body["event_types"] == ["comment.creatd"]
    inactive = client.post("/v1/events", json={"event_type": "old.feature", "recipients": ["u"]})
    assert_problem(inactive, 422, "event type 'old.feature' is inactive")
    malformed = client.post("/v1/events", json={"events": [known, {"recipients": []}]})
    body = assert_problem(malformed, 422, "events[1].event_type: is required")
    assert {e["field"] for e in body["errors"]} == {"events[1].event_type", "events[1].recipients"}
    too_many = client.post("/v1/events", json={"events": [known] * 6})
    assert_problem(too_many, 413, "at most 5 events", "has 6")
    not_json = client.post(
        "/v1/events", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert_problem(not_json, 422, "not valid JSON")
    assert records(kafka_settings, topics.events.name) == []


def test_kafka_failure_is_503_and_the_database_write_stays(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    create_event_type(client, "comment.created")
    # Nothing listens on port 1: every record times out after the (short) publish timeout.
    broken = kafka_settings.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})
    for down in make_client(broken, db_settings, publish_timeout_s=1.5):
        event_id = str(uuid.uuid4())
        failed = down.post(
            "/v1/events",
            json={"event_type": "comment.created", "recipients": ["u-1"], "event_id": event_id},
        )
        body = assert_problem(failed, 503, "retry with the same event ids")
        assert body["event_ids"] == [event_id]
        assert failed.headers["retry-after"] == "5"

        user = down.put("/v1/users/u-9", json={"display_name": "Nine"})
        assert_problem(user, 503, "user 'u-9' is saved in PostgreSQL", "repeat this PUT")
        assert rows(db_settings, "select display_name from user_account where id = 'u-9'") == [
            {"display_name": "Nine"}
        ]
        assert_problem(down.get("/readyz"), 503, "kafka failed")
    # Kafka is back (the working client): repeating the PUT publishes user and preferences.
    assert client.put("/v1/users/u-9", json={"display_name": "Nine"}).status_code == 200
    assert [key for key, _ in records(kafka_settings, topics.users.name)] == ["u-9"]
    assert [key for key, _ in records(kafka_settings, topics.preferences.name)] == ["u-9"]


# --- the service process ----------------------------------------------------------------------


def test_service_process_serves_and_stops_cleanly_on_sigterm(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    port = free_port()
    service = run_service(
        "services.ingest",
        service_env(kafka_settings, db_settings, HERALD_INGEST_PORT=str(port)),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert service.running(), service.output()
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "ingest did not become ready:\n" + service.output()
        time.sleep(0.2)

    created = httpx.post(
        f"{base}/v1/event-types", json={"code": "ping.sent", "name": "Ping"}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    sent = httpx.post(
        f"{base}/v1/events", json={"event_type": "ping.sent", "recipients": ["u"]}, headers=ADMIN
    )
    assert sent.status_code == 202, sent.text
    assert [key for key, _ in records(kafka_settings, topics.events.name)] == sent.json()[
        "event_ids"
    ]

    # uvicorn finishes in-flight requests and the lifespan (producer flushed, pool closed),
    # then re-raises SIGTERM: exit status 0 or "terminated by SIGTERM" are both clean.
    assert service.stop() in (0, -signal.SIGTERM), service.output()
    logged = [json.loads(line) for line in service.output().splitlines() if line.startswith("{")]
    assert "Application shutdown complete." in [entry["msg"] for entry in logged]


def test_database_failure_is_503(kafka_settings: KafkaSettings, topics: Catalogue) -> None:
    # Nothing listens on port 1.
    database = DatabaseSettings(database_url="postgresql://herald@127.0.0.1:1/herald")
    for down in make_client(kafka_settings, database):
        event = {"event_type": "comment.created", "recipients": ["u-1"]}
        assert_problem(down.post("/v1/events", json=event), 503, "PostgreSQL did not answer")
        assert_problem(down.put("/v1/users/u-1", json={}), 503, "PostgreSQL did not answer")
        assert_problem(down.get("/readyz"), 503, "database failed")
    assert records(kafka_settings, topics.events.name) == []


def test_admin_key_is_required_and_bodies_are_limited(client: TestClient) -> None:
    body = {"event_type": "x.y", "recipients": ["u"]}
    missing = client.post("/v1/events", json=body, headers={"X-API-Key": ""})
    assert missing.status_code == 401
    assert missing.json()["status"] == 401
    wrong = client.post("/v1/events", json=body, headers={"X-API-Key": "not-a-key-of-ours-at-all"})
    assert wrong.status_code == 401
    huge = client.post(
        "/v1/events",
        content=b"{" + b" " * (10 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413
