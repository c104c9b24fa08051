"""``Idempotency-Key`` on ``POST /v1/events`` from outside: every service running as a real
process, requests over HTTP, outcomes read from the read API, the events topic and
PostgreSQL.

A key stands for one request of one API key: the same body gets the first response again and
publishes nothing; another body is refused (before, it got 202 and its notification silently
never appeared); a second API key's use of the same key is its own request; a request sent
while the key's first request is still running gets 409.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from herald.auth import LOCAL_ADMIN_API_KEY
from herald.db.engine import quote_identifier
from tests.integration.kafka_util import read_all
from tests.integration.pipeline import Pipeline, wait_for

pytestmark = pytest.mark.integration

#: A second full-access admin key, beside the local one every pipeline client sends.
SECOND_KEY = "second-admin-key-for-idempotency-tests"
REPLAYED = "Idempotent-Replayed"
CODE = "order.shipped"


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    """Every service accepts both admin keys."""
    return {"HERALD_ADMIN_API_KEYS": f"{LOCAL_ADMIN_API_KEY},{SECOND_KEY}"}


def register(pipeline: Pipeline) -> None:
    response = pipeline.api.put(
        f"/v1/event-types/{CODE}",
        json={
            "name": "Order shipped",
            "channels": ["inapp"],
            "context_keys": ["order"],
            "templates": {"inapp": {"title": "Order {{ order }} shipped", "body": "On its way"}},
        },
    )
    assert response.status_code in (200, 201), response.text


def order(user: str, number: str) -> dict[str, Any]:
    return {"event_type": CODE, "recipients": [user], "context": {"order": number}}


def titles(pipeline: Pipeline, user: str) -> list[str]:
    """The titles in ``user``'s inbox, read through the read API, newest first."""
    assert pipeline.read_api is not None
    response = pipeline.read_api.get(f"/v1/users/{user}/notifications")
    assert response.status_code == 200, response.text
    return [item["title"] for item in response.json()["items"]]


def published(pipeline: Pipeline) -> list[str]:
    """The event ids on the events topic."""
    keys = [message.key() for message in read_all(pipeline.kafka, pipeline.catalogue.events.name)]
    return sorted(key.decode() for key in keys if key is not None)


def problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:herald:problem:{kind}", body
    return body


def still_flows(pipeline: Pipeline, user: str, untouched: str, untouched_before: list[str]) -> str:
    """Publish one ordinary event to ``user``; wait for it in the inbox; ``untouched``'s inbox
    did not change. The marker's event id."""
    response = pipeline.api.post("/v1/events", json=order(user, "marker"))
    assert response.status_code == 202, response.text
    wait_for(lambda: "Order marker shipped" in titles(pipeline, user), 60, "the marker")
    assert titles(pipeline, untouched) == untouched_before
    [marker] = response.json()["event_ids"]
    return str(marker)


def test_same_key_another_body_is_refused_and_the_same_body_is_replayed(
    pipeline: Pipeline,
) -> None:
    register(pipeline)
    alice, bob = pipeline.user("alice"), pipeline.user("bob")
    key = {"Idempotency-Key": str(uuid.uuid4())}

    first = pipeline.api.post("/v1/events", json=order(alice, "1"), headers=key)
    assert first.status_code == 202, first.text
    assert REPLAYED not in first.headers
    [event_id] = first.json()["event_ids"]

    # Another body under the same key: another order, another recipient.
    for other in (order(alice, "2"), order(bob, "1")):
        body = problem(
            pipeline.api.post("/v1/events", json=other, headers=key), 422, "idempotency-key-reused"
        )
        assert "different request body" in body["detail"]

    replay = pipeline.api.post("/v1/events", json=order(alice, "1"), headers=key)
    assert replay.status_code == 202, replay.text
    assert replay.headers[REPLAYED] == "true"
    assert replay.json() == first.json()

    marker = still_flows(pipeline, alice, untouched=bob, untouched_before=[])
    wait_for(lambda: "Order 1 shipped" in titles(pipeline, alice), 60, "order 1")
    # Exactly one notification for the keyed event; the refused bodies were never published.
    assert sorted(titles(pipeline, alice)) == ["Order 1 shipped", "Order marker shipped"]
    assert published(pipeline) == sorted([event_id, marker])
    assert titles(pipeline, bob) == []


def test_the_same_key_sent_with_two_api_keys_is_two_requests(pipeline: Pipeline) -> None:
    register(pipeline)
    alice, bob = pipeline.user("alice"), pipeline.user("bob")
    key = str(uuid.uuid4())
    first_key = {"Idempotency-Key": key}
    second_key = {"Idempotency-Key": key, "X-API-Key": SECOND_KEY}

    first = pipeline.api.post("/v1/events", json=order(alice, "1"), headers=first_key)
    assert first.status_code == 202, first.text
    # The second API key's request under the same key is its own: neither a replay of the
    # first, nor refused, nor deduplicated into it (its ids are its own).
    second = pipeline.api.post("/v1/events", json=order(bob, "2"), headers=second_key)
    assert second.status_code == 202, second.text
    assert REPLAYED not in second.headers
    assert set(second.json()["event_ids"]).isdisjoint(first.json()["event_ids"])
    same_body = pipeline.api.post("/v1/events", json=order(alice, "1"), headers=second_key)
    problem(same_body, 422, "idempotency-key-reused")  # the second key's K stands for bob's

    # Each API key gets its own first response back, and not the other's.
    for headers, body, response in (
        (first_key, order(alice, "1"), first),
        (second_key, order(bob, "2"), second),
    ):
        replay = pipeline.api.post("/v1/events", json=body, headers=headers)
        assert replay.headers.get(REPLAYED) == "true", replay.text
        assert replay.json() == response.json()
    problem(
        pipeline.api.post("/v1/events", json=order(bob, "2"), headers=first_key),
        422,
        "idempotency-key-reused",
    )

    wait_for(lambda: titles(pipeline, alice) == ["Order 1 shipped"], 60, "alice's order")
    wait_for(lambda: titles(pipeline, bob) == ["Order 2 shipped"], 60, "bob's order")
    marker = still_flows(pipeline, alice, untouched=bob, untouched_before=["Order 2 shipped"])
    assert published(pipeline) == sorted(
        [*first.json()["event_ids"], *second.json()["event_ids"], marker]
    )


def test_a_key_in_use_is_409_until_its_first_request_finishes(pipeline: Pipeline) -> None:
    register(pipeline)
    alice, bob = pipeline.user("alice"), pipeline.user("bob")
    key = str(uuid.uuid4())
    headers = {"Idempotency-Key": key}
    db = pipeline.db
    # Hold the event-type registry: the first request claims its key, then waits in the
    # event-type lookup for as long as the lock is held.
    with (
        psycopg.connect(db.libpq_url) as lock,
        httpx.Client(
            base_url=pipeline.api.base_url, headers=pipeline.api.headers, timeout=60
        ) as other_client,
        ThreadPoolExecutor(1) as pool,
    ):
        schema = quote_identifier(db.database_schema)
        lock.execute(f"LOCK TABLE {schema}.event_type IN ACCESS EXCLUSIVE MODE")
        running = pool.submit(
            other_client.post, "/v1/events", json=order(alice, "1"), headers=headers
        )
        wait_for(
            lambda: pipeline.sql(
                "select 1 from pg_locks where not granted and relation = %s::regclass",
                f"{schema}.event_type",
            ),
            30,
            "the first request to wait for the event-type lookup",
        )
        in_use = pipeline.api.post("/v1/events", json=order(alice, "1"), headers=headers)
        body = problem(in_use, 409, "idempotency-key-in-use")
        assert "still in progress" in body["detail"]
        assert int(in_use.headers["retry-after"]) >= 1
        assert not running.done()
        # The first request's claim, committed before it looked the event type up.
        claimed = pipeline.sql("select response_status from idempotency_key where key = %s", key)
        assert claimed == [(None,)]
        lock.rollback()  # releases the lock
        first = running.result(timeout=60)
    assert first.status_code == 202, first.text
    assert REPLAYED not in first.headers

    third = pipeline.api.post("/v1/events", json=order(alice, "1"), headers=headers)
    assert third.status_code == 202, third.text
    assert third.headers[REPLAYED] == "true"
    assert third.json() == first.json()

    marker = still_flows(pipeline, alice, untouched=bob, untouched_before=[])
    wait_for(lambda: "Order 1 shipped" in titles(pipeline, alice), 60, "order 1")
    assert sorted(titles(pipeline, alice)) == ["Order 1 shipped", "Order marker shipped"]
    assert published(pipeline) == sorted([*first.json()["event_ids"], marker])
