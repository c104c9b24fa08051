"""Bounded work per record, on the real broker (and PostgreSQL for the ingest API):

- one event to 10,000 recipients is routed by a real router process whose peak memory
  (VmHWM) stays bounded (stage 1 used to copy the whole recipient list into every copy);
- a template that would loop forever and an over-long id are parked on the events DLQ with
  their reasons (``template.limit``, ``record.invalid_id``), and the stream flows on;
- the ingest API refuses a template that does not compile (422) when an event type is saved.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from herald.identity import MAX_ID_LENGTH
from herald.serde import encode
from herald.settings import DatabaseSettings, KafkaSettings
from herald.streaming import H_ERROR_CLASS, H_ERROR_MESSAGE, headers_dict
from schemas import Catalogue
from tests.integration import test_router
from tests.integration.services import ServiceProcess
from tests.integration.test_ingest import ADMIN, assert_problem, make_client
from tests.integration.test_router import Kafka, event, event_type, user, wait_for

# The router tests' fixtures: this module's topics as a Kafka helper, and router processes.
kafka = test_router.kafka
start_router = test_router.start_router

pytestmark = pytest.mark.integration

RECIPIENTS = 10_000
#: The router's peak resident memory (VmHWM) with one 10,000-recipient event. Measured on the
#: local stack: 120 MB before the event, 132 MB after. With the whole recipient list copied
#: into every copy, the copies' Avro alone was ~1.5 GB (and ~3.7 GB of Python objects).
MAX_PEAK_RSS_MB = 400
BOMB = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident set size (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def test_a_10000_recipient_event_is_routed_with_bounded_memory_and_poison_is_parked(
    kafka: Kafka, start_router: Callable[..., ServiceProcess]
) -> None:
    catalogue = kafka.catalogue
    run = uuid.uuid4().hex[:8]
    users = [f"u{n:05}-{run}" for n in range(RECIPIENTS)]
    kafka.event_type(event_type("comment.created", channels=["inapp"]))
    kafka.event_type(
        event_type(
            "bomb.loop",
            channels=["inapp"],
            templates={"inapp": {"title": "", "body": BOMB, "html": None}},
        )
    )
    for user_id in users:  # in bulk: one flush for all
        kafka.producer.produce(
            catalogue.users.name, key=user_id, value=encode("herald.User", user(user_id))
        )
    assert kafka.producer.flush(60) == 0
    router = start_router()

    # Poison first, and a small event behind it: once that is routed, the router has started,
    # loaded the 10,000 users and parked the poison; its peak memory so far is the baseline.
    bomb = kafka.event(event("bomb.loop", [users[0]]))
    too_long = kafka.event(event("comment.created", [users[1], "x" * (MAX_ID_LENGTH + 1)]))
    after = kafka.event(event("comment.created", [users[2]], excerpt="After the poison"))
    inapp = catalogue.for_channel("inapp").name

    def delivered(count: int) -> Callable[[], bool]:
        return lambda: sum(kafka.ends(inapp).values()) >= count

    wait_for(delivered(1), 120, "the small event's in-app delivery")
    baseline = peak_rss_mb(router.proc.pid)
    big = kafka.event(event("comment.created", users))
    wait_for(delivered(RECIPIENTS + 1), 300, f"{RECIPIENTS + 1} in-app deliveries")
    peak = peak_rss_mb(router.proc.pid)
    print(
        f"router peak RSS (VmHWM): {baseline:.0f} MB before, {peak:.0f} MB after routing one "
        f"event to {RECIPIENTS} recipients"
    )
    assert peak < MAX_PEAK_RSS_MB

    notifications = kafka.records(catalogue.notifications.name)
    by_event: dict[str, set[str]] = {}
    for notification in notifications:
        by_event.setdefault(notification["event_id"], set()).add(notification["user_id"])
    assert by_event[big] == set(users)
    assert by_event[after] == {users[2]}
    assert bomb not in by_event and too_long not in by_event

    dlq = wait_for(lambda: kafka.messages(catalogue.events.dlq_name) or None, 60, "the events DLQ")
    reasons = {headers_dict(m)[H_ERROR_CLASS]: headers_dict(m)[H_ERROR_MESSAGE] for m in dlq}
    assert set(reasons) == {"template.limit", "record.invalid_id"}, reasons
    assert "range() of 100000 numbers" in reasons["template.limit"]
    assert f"ids have 1 to {MAX_ID_LENGTH}" in reasons["record.invalid_id"]


@pytest.fixture
def client(
    kafka_settings: KafkaSettings, topics: Catalogue, db_settings: DatabaseSettings
) -> Iterator[TestClient]:
    yield from make_client(kafka_settings, db_settings)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ({"title": "{{ name", "body": "x"}, "unexpected end of template"),
        ({"body": "{{ name|no_such_filter }}"}, "No filter named 'no_such_filter'"),
        ({"body": "{% include 'other.html' %}"}, "'include' is not allowed"),
    ],
)
def test_ingest_refuses_a_template_that_does_not_compile(
    client: TestClient, template: dict[str, str], reason: str
) -> None:
    response = client.post(
        "/v1/event-types",
        json={"code": "bad.template", "name": "Bad", "templates": {"inapp": template}},
        headers=ADMIN,
    )
    assert_problem(response, 422, reason)
    assert client.get("/v1/event-types/bad.template").status_code == 404
    fine = {"title": "Hi", "body": "{% for x in range(3) %}{{ x }}{% endfor %}"}
    response = client.post(
        "/v1/event-types",
        json={"code": "good.template", "name": "Good", "templates": {"inapp": fine}},
    )
    assert response.status_code == 201, response.text
