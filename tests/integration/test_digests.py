"""Digest windows (issue 15) end to end on the real stack: every service as a process, real
Kafka, PostgreSQL and the SMTP sink. Events of a type with ``digest: {window, key}`` become one
notification per user and key and window, exactly once, even when the router is SIGKILLed at
the window's end (services.router.digests)."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient

from herald.producer import AckedProducer
from herald.settings import DatabaseSettings, KafkaSettings
from herald.streaming import Outgoing, producer_config
from schemas import Catalogue
from services.router.stage1 import partition_of
from tests.integration.kafka_util import (
    committed_and_end,
    downstream_caught_up,
    poll_safely,
    read_all,
)
from tests.integration.pipeline import Pipeline, wait_for
from tests.integration.services import ServiceProcess
from tests.integration.test_ingest import (
    assert_problem,
    client,
    create_event_type,
    records,
    rows,
)
from tests.integration.test_router import assigned_partitions

pytestmark = pytest.mark.integration

__all__ = ["client"]  # the ingest API in-process (a fixture of test_ingest)

#: The digest window of the tests' event types.
WINDOW_S = 6
ACTORS = ("Alice", "Bob", "Carol", "Dan", "Erin")


class Recorder:
    """The conftest's ``run_service``, remembering each service it started by module."""

    def __init__(self, run: Callable[..., ServiceProcess]) -> None:
        self.run = run
        self.started: dict[str, ServiceProcess] = {}

    def __call__(
        self, module: str, env: dict[str, str], *args: str, name: str | None = None
    ) -> ServiceProcess:
        service = self.run(module, env, *args, name=name)
        self.started[module] = service
        return service


@pytest.fixture
def run_service(run_service: Callable[..., ServiceProcess]) -> Recorder:
    return Recorder(run_service)


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    return {
        # Nothing is committed before the SIGKILL: the restarted router reads every event and
        # every recipients record again (stage 1 expands each event again, with new offsets).
        "ROUTER_COMMIT_INTERVAL_MS": "60000",
        "ROUTER_DIGEST_WINDOW_TICK_MS": "200",
    }


def _put_digest_type(pipeline: Pipeline, code: str) -> None:
    response = pipeline.api.put(
        f"/v1/event-types/{code}",
        json={
            "name": "New comment",
            "channels": ["inapp", "email"],
            "digest": {"window": f"{WINDOW_S}s", "key": "post_id"},
            "templates": {
                "inapp": {"title": "{{ actor_name }} commented", "body": "{{ excerpt }}"},
                "email": {"title": "{{ actor_name }} commented", "body": "{{ excerpt }}"},
                "digest": {
                    "title": "{{ actors[0] }}{% if others %} and {{ others }} other"
                    "{{ 's' if others > 1 else '' }}{% endif %} commented on {{ post_title }}",
                    "body": "{% for e in events %}{{ e.actor_name }}: {{ e.excerpt }}\n"
                    "{% endfor %}",
                },
            },
        },
    )
    assert response.status_code in (200, 201), response.text
    assert response.json()["digest"] == {"window_s": WINDOW_S, "key": "post_id"}
    assert "digest" in response.json()["templates"]


def _notifications(pipeline: Pipeline, code: str) -> list[tuple[Any, ...]]:
    return pipeline.sql(
        "select user_id, title, message, metadata from notification where event_type = %s"
        " order by user_id",
        code,
    )


def _comments(pipeline: Pipeline, code: str, users: list[str], ns: range, post: str) -> None:
    """Publish comments ``ns`` on ``post`` for ``users`` at once (one producer, one flush:
    they all fall in one window)."""
    records = []
    for n in ns:
        event: dict[str, Any] = {
            "event_id": str(uuid.uuid4()),
            "event_type": code,
            "occurred_at": datetime.now(UTC),
            "producer": "test_digests",
            "actor_id": None,
            "recipients": users,
            "context": {
                "post_id": post,
                "post_title": "Hello",
                "actor_name": ACTORS[n % len(ACTORS)],
                "excerpt": f"comment {n}",
            },
            "metadata": {},
        }
        topic = pipeline.catalogue.events.name
        records.append(Outgoing(topic, event["event_id"], pipeline.encode_event(event)))
    assert AckedProducer(producer_config(pipeline.kafka)).deliver(records) == []


def _titles(others: int) -> set[str]:
    more = f" and {others} other{'s' if others > 1 else ''}" if others else ""
    return {f"{actor}{more} commented on Hello" for actor in ACTORS}


def _numbered(lines: list[str]) -> list[tuple[str, str]]:
    return [(line, line.rsplit(" ", 1)[1]) for line in lines]


def _first_notification(pipeline: Pipeline, timeout: float) -> bool:
    """Whether a record reaches the notifications topic within ``timeout`` (polled closely, to
    kill the router right as it emits)."""
    topic = pipeline.catalogue.notifications
    consumer = Consumer(
        {
            "bootstrap.servers": pipeline.kafka.bootstrap_servers,
            "group.id": f"{pipeline.kafka.topic_prefix}digest-watch",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic.name, p, 0) for p in range(topic.partitions)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.02)
            if message is not None and message.error() is None:
                return True
        return False
    finally:
        consumer.close()


def _settled(pipeline: Pipeline, users: list[str]) -> bool:
    """Whether no digest can still come for ``users``: the router absorbed the newest
    recipients record of each (its offset is in the user's digest state on the changelog, or
    the router committed past it; records of a partition are absorbed in order) and holds no
    open window for them (a window leaves the state only once its outputs are acknowledged);
    then the email sender and the in-app store consumed everything the router produced.
    What a test polls instead of sleeping a window long after the digest arrived."""
    kafka = pipeline.kafka
    recipients = pipeline.catalogue.recipients.name
    newest: dict[str, tuple[int, int]] = {}
    for message in read_all(kafka, recipients):  # in offset order
        newest[(message.key() or b"").decode()] = (message.partition() or 0, message.offset() or 0)
    changelog = f"{kafka.topic_prefix}herald-router-digest_windows-changelog"
    states = {
        (m.key() or b"").decode(): json.loads(m.value() or b"{}")  # a tombstone: no state
        for m in read_all(kafka, changelog)
    }
    committed = committed_and_end(kafka, f"{kafka.topic_prefix}herald-router", [recipients])
    for user in users:
        if user not in newest:
            return False
        partition, offset = newest[user]
        state = states.get(user, {})
        if state.get("w"):
            return False  # a window still open: it is emitted at its end
        if offset not in state.get("o", ()) and committed[(recipients, partition)][0] <= offset:
            return False  # not absorbed yet
    return downstream_caught_up(kafka, pipeline.catalogue, ("email",))


def _wait_settled(pipeline: Pipeline, users: list[str], what: str) -> None:
    """Wait until :func:`_settled` (a window opened now would end within WINDOW_S)."""
    settled = poll_safely(lambda: _settled(pipeline, users))
    wait_for(settled, WINDOW_S + 60, f"{what} to settle (no digest to come)")


def test_fifty_events_make_one_digest_even_with_a_sigkill_at_the_window_end(
    pipeline: Pipeline, run_service: Recorder
) -> None:
    code = f"comment.digest.{pipeline.run}"
    _put_digest_type(pipeline, code)
    reader = pipeline.user("reader")
    email = pipeline.user_contact(reader)["email"]
    router = run_service.started["services.router"]

    _comments(pipeline, code, [reader], range(50), "p1")
    # The window ends WINDOW_S after its first event; the router is killed the moment its
    # digest reaches the notifications topic, before it could commit anything.
    assert _first_notification(pipeline, WINDOW_S + 60), "no digest emitted"
    router.proc.send_signal(signal.SIGKILL)
    router.proc.wait(10)
    restarted = run_service(router.module, router.env, name="router-restarted")

    wait_for(lambda: len(_notifications(pipeline, code)) == 1, 90, "the digest notification")
    wait_for(lambda: pipeline.emails_to(email), 90, "the digest email")
    # The restarted router expands every event again (50 more recipients records) and reads
    # every recipients record again; a second window they opened would be emitted at its end.
    recipients = pipeline.catalogue.recipients.name
    wait_for(lambda: len(read_all(pipeline.kafka, recipients)) >= 100, 90, "the replay")
    wait_for(lambda: "Worker ready" in restarted.output(), 60, "the restarted router")
    _wait_settled(pipeline, [reader], "the replay")

    (row,) = _notifications(pipeline, code)
    user_id, title, message, metadata = row
    assert user_id == reader
    # The events topic has several partitions: the first actor is whoever was routed first.
    assert title in _titles(49)
    lines = message.splitlines()
    assert len(lines) == 20 == len(set(lines))  # the template lists the 20 the window keeps
    assert all(f"{ACTORS[int(n) % 5]}: comment {n}" == line for line, n in _numbered(lines))
    assert metadata["digest_count"] == "50" and metadata["digest_key"] == "p1"
    mails = pipeline.emails_to(email)
    assert [m["subject"] for m in mails] == [title]
    statuses = pipeline.sql(
        "select channel, status from notification_delivery where user_id = %s order by channel",
        reader,
    )
    assert statuses == [("email", "sent"), ("inapp", "delivered")]


def test_two_users_get_a_digest_each_and_another_key_its_own(pipeline: Pipeline) -> None:
    code = f"comment.digest.{pipeline.run}"
    _put_digest_type(pipeline, code)
    ann, ben = pipeline.user("ann"), pipeline.user("ben")
    _comments(pipeline, code, [ann, ben], range(5), "p1")
    _comments(pipeline, code, [ben], range(7, 8), "p2")

    wait_for(lambda: len(_notifications(pipeline, code)) >= 3, WINDOW_S + 60, "three digests")
    rows = _notifications(pipeline, code)
    got = sorted((user, title in _titles(4), title in _titles(0)) for user, title, _, _ in rows)
    assert got == [(ann, True, False), (ben, False, True), (ben, True, False)], rows
    assert {title for _, title, _, _ in rows} >= {"Carol commented on Hello"}
    for user, count in ((ann, 1), (ben, 2)):
        address = pipeline.user_contact(user)["email"]
        wait_for(
            partial(lambda a, c: len(pipeline.emails_to(a)) >= c, address, count),
            60,
            f"{user}'s digest emails",
        )
    _wait_settled(pipeline, [ann, ben], "the two users")
    assert len(_notifications(pipeline, code)) == 3
    assert len(pipeline.emails_to(pipeline.user_contact(ann)["email"])) == 1
    assert len(pipeline.emails_to(pipeline.user_contact(ben)["email"])) == 2


def test_the_admin_api_stores_and_publishes_a_digest_window(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    digest_template = {"title": "{{ count }} comments", "body": "{{ actors | join(', ') }}"}
    created = create_event_type(
        client,
        "comment.created",
        digest={"window": "10m", "key": "post_id"},
        templates={"inapp": {"body": "{{ excerpt }}"}, "digest": digest_template},
    )
    assert created["digest"] == {"window_s": 600, "key": "post_id"}
    assert created["templates"]["digest"] == {**digest_template, "html": None}
    [row] = rows(db_settings, "select digest, templates from event_type")
    assert row["digest"] == {"window_s": 600, "key": "post_id"}
    assert row["templates"]["digest"]["title"] == "{{ count }} comments"

    # A PUT without templates keeps the digest template; one without digest turns it off.
    updated = client.put(
        "/v1/event-types/comment.created", json={"name": "Comment", "digest": {"window": 90}}
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["digest"] == {"window_s": 90, "key": None}
    assert updated.json()["templates"]["digest"]["title"] == "{{ count }} comments"
    off = client.put("/v1/event-types/comment.created", json={"name": "Comment"})
    assert off.json()["digest"] is None
    published = [record for _, record in records(kafka_settings, topics.event_types.name)]
    assert [r["digest"] for r in published] == [
        {"window_s": 600, "key": "post_id"},
        {"window_s": 90, "key": None},
        None,
    ]

    for digest, phrase in (
        ({"window": "10x"}, "is not a duration"),
        ({"window": "8d"}, "1 second to 7 days"),
        ({"window": "1h", "key": "post-id"}, "not a valid variable name"),
    ):
        refused = client.put(
            "/v1/event-types/comment.created", json={"name": "C", "digest": digest}
        )
        assert_problem(refused, 422, phrase)
    bad = {"digest": {"body": "{{ oops"}}
    refused = client.put("/v1/event-types/comment.created", json={"name": "C", "templates": bad})
    assert_problem(refused, 422, "templates.digest.body: invalid template")


def test_a_window_moved_by_a_rebalance_is_emitted_once(
    pipeline: Pipeline, run_service: Recorder
) -> None:
    """The worker holding the user's partition is SIGKILLed while the window is open; the
    other worker takes the partition over, recovers the window from the changelog (and reads
    every record again: nothing was committed) and emits it, once."""
    code = f"comment.digest.{pipeline.run}"
    _put_digest_type(pipeline, code)
    first = run_service.started["services.router"]
    wait_for(lambda: assigned_partitions(first), 60, "the first worker's assignment")
    second = run_service(first.module, first.env, name="router-second")

    def shared() -> bool:
        a, b = assigned_partitions(first), assigned_partitions(second)
        return bool(a and b and sorted(a + b) == list(range(partitions)))

    partitions = pipeline.catalogue.recipients.partitions
    wait_for(shared, 60, "both workers to hold recipients partitions")
    reader = pipeline.user("mover")
    email = pipeline.user_contact(reader)["email"]
    _comments(pipeline, code, [reader], range(20), "p9")
    owner = (
        first
        if partition_of(reader.encode(), partitions) in (assigned_partitions(first) or [])
        else second
    )
    # Once the window holds all 20 (its changelog has them), kill the worker holding it.
    changelog = f"{pipeline.kafka.topic_prefix}herald-router-digest_windows-changelog"

    def absorbed() -> bool:
        states = [json.loads(m.value() or b"{}") for m in read_all(pipeline.kafka, changelog)]
        return any(w["count"] == 20 for state in states for w in state.get("w", ()))

    wait_for(absorbed, 60, "the window to hold the 20 events")
    owner.proc.send_signal(signal.SIGKILL)
    owner.proc.wait(10)

    wait_for(lambda: _notifications(pipeline, code), 90, "the digest after the rebalance")
    wait_for(lambda: pipeline.emails_to(email), 60, "the digest email")
    _wait_settled(pipeline, [reader], "the takeover")
    (row,) = _notifications(pipeline, code)
    assert row[1] in _titles(19)
    assert row[3]["digest_count"] == "20"
    assert [m["subject"] for m in pipeline.emails_to(email)] == [row[1]]
