"""The router as a real process (``python -m services.router``) on the real broker: tables fed
from the compacted topics, events fanned out and routed, poison parked on the events DLQ, and
several workers sharing the partitions with lookups that stay local and correct."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from herald.devstack.process import free_port
from herald.identity import delivery_id, notification_id
from herald.serde import decode, encode
from herald.settings import KafkaSettings
from herald.streaming import (
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FIRST_FAILED_AT,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
    headers_dict,
    producer_config,
)
from herald.topics import admin_client, delete_topics
from schemas import Catalogue
from tests.integration.kafka_util import read_all
from tests.integration.services import ServiceProcess, service_env

pytestmark = pytest.mark.integration

T = TypeVar("T")

#: Faust needs a few seconds to join the group and recover its tables.
DEADLINE = 60.0

TEMPLATES = {
    "inapp": {"title": "New comment on {{ post_title }}", "body": "{{ excerpt }}", "html": None},
    "email": {
        "title": "Re: {{ post_title }}",
        "body": "Hi {{ display_name }}: {{ excerpt }}",
        "html": "<p>{{ excerpt }}</p>",
    },
    "sms": {"title": "", "body": "Comment on {{ post_title }}", "html": None},
}


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout.

    A Kafka error while polling counts as "not yet": a busy shared broker may briefly answer
    NOT_LEADER_FOR_PARTITION for a topic created a moment ago.
    """
    deadline = time.monotonic() + timeout
    error: KafkaException | None = None
    while True:
        try:
            result = check()
        except KafkaException as exc:
            result, error = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} ({error})")
        time.sleep(0.25)


def at_least(count: int, fetch: Callable[[], list[T]]) -> Callable[[], list[T] | None]:
    """A check for :func:`wait_for`: what ``fetch`` returns, once it holds ``count`` items."""

    def check() -> list[T] | None:
        items = fetch()
        return items if len(items) >= count else None

    return check


def event_type(code: str, **fields: Any) -> dict[str, Any]:
    return {
        "code": code,
        "name": "New comment",
        "channels": ["inapp", "email", "sms"],
        "templates": TEMPLATES,
        "updated_at": datetime.now(UTC),
        **fields,
    }


def user(user_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "email": f"{user_id}@example.test",
        "phone": "+15555550100",
        "display_name": user_id.split("-")[0].capitalize(),
        "updated_at": datetime.now(UTC),
        **fields,
    }


def preferences(user_id: str, **fields: Any) -> dict[str, Any]:
    return {"user_id": user_id, "updated_at": datetime.now(UTC), **fields}


def event(code: str, recipients: list[str], actor: str | None = None, **context: str) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": code,
        "occurred_at": datetime.now(UTC),
        "producer": "test_router",
        "actor_id": actor,
        "recipients": recipients,
        "context": {"post_title": "Kafka at scale", "excerpt": "Nice post!", **context},
        "metadata": {"trace": "t-1"},
    }


class Kafka:
    """Produce and read back this test's topics."""

    def __init__(self, settings: KafkaSettings, catalogue: Catalogue) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.producer = Producer(producer_config(settings))

    def send(self, topic: str, key: str, value: bytes | None) -> None:
        self.producer.produce(topic, key=key, value=value)
        assert self.producer.flush(30) == 0

    def event_type(self, record: dict[str, Any]) -> None:
        self.send(
            self.catalogue.event_types.name, record["code"], encode("herald.EventType", record)
        )

    def user(self, record: dict[str, Any]) -> None:
        self.send(self.catalogue.users.name, record["user_id"], encode("herald.User", record))

    def preferences(self, record: dict[str, Any]) -> None:
        self.send(
            self.catalogue.preferences.name,
            record["user_id"],
            encode("herald.Preferences", record),
        )

    def event(self, record: dict[str, Any]) -> str:
        self.send(self.catalogue.events.name, record["event_id"], encode("herald.Event", record))
        return str(record["event_id"])

    def records(self, topic: str) -> list[dict[str, Any]]:
        return [decode(m.value() or b"") for m in read_all(self.settings, topic)]

    def messages(self, topic: str) -> list[Message]:
        return read_all(self.settings, topic)

    def group(self) -> str:
        """The router's consumer group (its Faust app id)."""
        return f"{self.settings.topic_prefix}herald-router"

    def ends(self, topic: str) -> dict[int, int]:
        """The high watermark of each partition."""
        consumer = Consumer(
            {"bootstrap.servers": self.settings.bootstrap_servers, "group.id": self.group()}
        )
        try:
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(self.catalogue.by_name(topic).partitions)
            }
        finally:
            consumer.close()

    def committed(self, topic: str) -> dict[int, int]:
        """The router group's committed offset of each partition (0 when none)."""
        consumer = Consumer(
            {"bootstrap.servers": self.settings.bootstrap_servers, "group.id": self.group()}
        )
        try:
            partitions = range(self.catalogue.by_name(topic).partitions)
            offsets = consumer.committed([TopicPartition(topic, p) for p in partitions], 10)
            return {tp.partition: max(tp.offset, 0) for tp in offsets}
        finally:
            consumer.close()

    def changelog(self, table: str) -> list[Message]:
        return read_all(
            self.settings, f"{self.settings.topic_prefix}herald-router-{table}-changelog"
        )


@pytest.fixture
def kafka(kafka_settings: KafkaSettings, topics: Catalogue) -> Kafka:
    return Kafka(kafka_settings, topics)


@pytest.fixture
def start_router(
    kafka_settings: KafkaSettings, topics: Catalogue, run_service: Callable[..., ServiceProcess]
) -> Iterator[Callable[..., ServiceProcess]]:
    """Start router workers on this test's topics; stop them, then delete the changelog
    topics Faust created (the ``topics`` fixture only knows the catalogue's)."""
    started: list[ServiceProcess] = []

    def start(name: str = "router", **extra: str) -> ServiceProcess:
        env = {**service_env(kafka_settings, ROUTER_METRICS_PORT="0"), **extra}
        service = run_service("services.router", env, name=name)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
    prefix = f"{kafka_settings.topic_prefix}herald-router-"
    names = admin_client(kafka_settings).list_topics(timeout=10).topics
    delete_topics(kafka_settings, [name for name in names if name.startswith(prefix)])


def assigned_partitions(service: ServiceProcess) -> list[int] | None:
    """The recipients partitions of the worker's latest assignment, from its JSON log, once
    the worker has recovered its tables for it (Faust logs "Worker ready")."""
    latest, ready = None, False
    for line in service.output().splitlines():
        if '"partitions assigned"' in line:
            latest, ready = json.loads(line[line.index("{") :])["recipients_partitions"], False
        elif "Worker ready" in line:
            ready = True
    return latest if ready else None


def by_user_and_channel(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["user_id"], r["channel"]): r for r in records}


def test_routes_events_and_parks_poison_on_the_dlq(
    kafka: Kafka, start_router: Callable[..., ServiceProcess]
) -> None:
    run = uuid.uuid4().hex[:8]
    catalogue = kafka.catalogue
    alice, bob, carol, ghost = (f"{n}-{run}" for n in ("alice", "bob", "carol", "ghost"))
    kafka.event_type(event_type("comment.created"))
    kafka.event_type(event_type("old.thing", is_active=False))
    kafka.event_type(
        event_type("needs.key", templates={"inapp": {"title": "", "body": "{{ invoice }}"}})
    )
    kafka.user(user(alice))
    kafka.user(user(bob, phone=None))
    kafka.user(user(carol))
    kafka.preferences(preferences(carol, email_enabled=False))
    router = start_router()

    e1 = kafka.event(event("comment.created", [alice, bob, carol, bob], actor=alice))
    kafka.send(catalogue.events.name, "poison-1", b"definitely not avro")
    kafka.send(catalogue.events.name, "poison-2", b"\xc3\x01" + os.urandom(8))
    kafka.send(catalogue.events.name, "poison-3", encode("herald.User", user("x")))
    kafka.event(event("no.such.type", [alice]))
    kafka.event(event("old.thing", [alice]))
    e4 = kafka.event(event("comment.created", [ghost, alice]))
    kafka.event(event("needs.key", [alice]))
    e6 = kafka.event(event("comment.created", [alice], excerpt="After the poison"))

    dlq = wait_for(
        at_least(7, lambda: kafka.messages(catalogue.events.dlq_name)),
        DEADLINE,
        "7 records on the events DLQ",
    )
    statuses = wait_for(
        # 4 notifications x email and SMS (in-app has no status from the router)
        at_least(8, lambda: kafka.records(catalogue.delivery_status.name)),
        DEADLINE,
        "8 delivery statuses",
    )

    # The poison, each with its reason and where it came from.
    reasons = Counter(headers_dict(m)[H_ERROR_CLASS] for m in dlq)
    assert reasons == {
        "serde.not_avro": 1,
        "serde.unknown_schema": 1,
        "serde.wrong_schema": 1,
        "event_type.unknown": 1,
        "event_type.inactive": 1,
        "user.unknown": 1,
        "template.missing_key": 1,
    }
    for message in dlq:
        headers = headers_dict(message)
        assert headers[H_ERROR_MESSAGE]
        assert float(headers[H_FIRST_FAILED_AT]) > 0
        assert int(headers[H_ORIGINAL_PARTITION]) in range(catalogue.events.partitions)
        assert int(headers[H_ORIGINAL_OFFSET]) >= 0
        stage2 = headers[H_ERROR_CLASS] in ("user.unknown", "template.missing_key")
        expected_topic = catalogue.recipients.name if stage2 else catalogue.events.name
        assert headers[H_ORIGINAL_TOPIC] == expected_topic
    poison = {headers_dict(m)[H_ERROR_CLASS]: m for m in dlq}
    assert poison["serde.not_avro"].value() == b"definitely not avro"
    assert poison["serde.not_avro"].key() == b"poison-1"
    ghost_copy = decode(poison["user.unknown"].value() or b"")
    assert ghost_copy["user_id"] == ghost and ghost_copy["event"]["event_id"] == e4
    assert ghost in headers_dict(poison["user.unknown"])[H_ERROR_MESSAGE]
    assert "invoice" in headers_dict(poison["template.missing_key"])[H_ERROR_MESSAGE]

    # Everyone else was routed, before and after the poison.
    notifications = kafka.records(catalogue.notifications.name)
    assert sorted((n["event_id"], n["user_id"]) for n in notifications) == sorted(
        [(e1, bob), (e1, carol), (e4, alice), (e6, alice)]
    )
    for n in notifications:
        assert n["notification_id"] == notification_id(n["event_id"], n["user_id"])
    after = next(n for n in notifications if n["event_id"] == e6)
    assert after["title"] == "New comment on Kafka at scale"
    assert after["message"] == "After the poison"
    assert after["metadata"] == {"trace": "t-1"}

    e1_statuses = by_user_and_channel(
        [
            s
            for s in statuses
            if s["notification_id"] in {notification_id(e1, bob), notification_id(e1, carol)}
        ]
    )
    assert {k: (v["status"], v["error_message"]) for k, v in e1_statuses.items()} == {
        # No in-app status from the router: inapp_store's `delivered` is the first.
        (bob, "email"): ("pending", None),
        (bob, "sms"): ("skipped", "user has no phone number"),
        (carol, "email"): ("skipped", "email disabled by the user's preferences"),
        (carol, "sms"): ("pending", None),
    }
    assert len(statuses) == 8  # e1: bob and carol, e4 and e6: alice; email and SMS each

    emails = kafka.records(catalogue.deliveries_email.name)
    assert sorted((d["event_id"], d["user_id"]) for d in emails) == sorted(
        [(e1, bob), (e4, alice), (e6, alice)]
    )
    bob_email = next(d for d in emails if d["user_id"] == bob)
    assert bob_email["destination"] == f"{bob}@example.test"
    assert bob_email["subject"] == "Re: Kafka at scale"
    assert bob_email["body_text"] == "Hi Bob: Nice post!"
    assert bob_email["body_html"] == "<p>Nice post!</p>"
    assert bob_email["delivery_id"] == delivery_id(notification_id(e1, bob), "email")
    sms = kafka.records(catalogue.deliveries_sms.name)
    assert sorted((d["event_id"], d["user_id"]) for d in sms) == sorted(
        [(e1, carol), (e4, alice), (e6, alice)]
    )
    assert all(d["destination"] == "+15555550100" and d["subject"] == "" for d in sms)
    inapp = kafka.records(catalogue.deliveries_inapp.name)
    assert sorted((d["event_id"], d["user_id"]) for d in inapp) == sorted(
        [(e1, bob), (e1, carol), (e4, alice), (e6, alice)]
    )
    # One worker holds every user's tables, so recipients are routed where their event was
    # expanded: only the two copies stage 2 parks (with their real offsets) take the hop.
    hop = kafka.records(catalogue.recipients.name)
    assert sorted((r["event"]["event_type"], r["user_id"]) for r in hop) == sorted(
        [("comment.created", ghost), ("needs.key", alice)]
    )
    # Every delivery is keyed by its user, on the partition of that user's table rows.
    for message in kafka.messages(catalogue.deliveries_inapp.name):
        assert message.key() == decode(message.value() or b"")["user_id"].encode()

    # SIGTERM: a clean exit, with every consumed offset committed (a restart redoes nothing).
    assert router.stop() == 0
    assert "partitions assigned" in router.output()
    for topic in (catalogue.events.name, catalogue.recipients.name):
        assert kafka.committed(topic) == kafka.ends(topic), topic


def test_tables_follow_their_topics_while_running(
    kafka: Kafka, start_router: Callable[..., ServiceProcess]
) -> None:
    run = uuid.uuid4().hex[:8]
    catalogue = kafka.catalogue
    erin = f"erin-{run}"
    kafka.user(user(erin))
    metrics_port = free_port()
    start_router(ROUTER_METRICS_PORT=str(metrics_port))

    # An event type created a moment before its first event (as through the ingest API).
    code = f"flash.sale.{run}"
    kafka.event_type(event_type(code, channels=["inapp", "email"]))
    first = kafka.event(event(code, [erin]))
    wait_for(
        lambda: [n for n in kafka.records(catalogue.notifications.name) if n["event_id"] == first],
        DEADLINE,
        "the first notification",
    )

    # A preference change reaches the table (its changelog shows it), then rules the next event.
    kafka.preferences(preferences(erin, email_enabled=False))
    wait_for(lambda: kafka.changelog("preferences"), DEADLINE, "the preferences changelog")
    second = kafka.event(event(code, [erin]))
    statuses = wait_for(
        lambda: [
            s
            for s in kafka.records(catalogue.delivery_status.name)
            if s["notification_id"] == notification_id(second, erin)
        ],
        DEADLINE,
        "the second event's statuses",
    )
    assert {s["channel"]: s["status"] for s in statuses} == {"email": "skipped"}
    inapp = kafka.records(catalogue.deliveries_inapp.name)
    assert [d["user_id"] for d in inapp if d["event_id"] == second] == [erin]

    # A tombstone deletes the event type: the next event of that type is parked.
    kafka.send(catalogue.event_types.name, code, None)
    wait_for(
        lambda: any(m.value() is None for m in kafka.changelog("event_types")),
        DEADLINE,
        "the tombstone in the event types changelog",
    )
    third = kafka.event(event(code, [erin]))
    dlq = wait_for(lambda: kafka.messages(catalogue.events.dlq_name), DEADLINE, "the parked event")
    assert [headers_dict(m)[H_ERROR_CLASS] for m in dlq] == ["event_type.unknown"]
    assert decode(dlq[0].value() or b"")["event_id"] == third
    emails = [d for d in kafka.records(catalogue.deliveries_email.name) if d["user_id"] == erin]
    assert [d["event_id"] for d in emails] == [first]

    # Prometheus: events in, records out by topic, dead letters by reason.
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    router = 'service="router"'
    assert f'herald_records_in_total{{{router},topic="{catalogue.events.name}"}} 3.0' in metrics
    out = f'herald_records_out_total{{{router},topic="{catalogue.notifications.name}"}}'
    assert f"{out} 2.0" in metrics
    assert f'herald_errors_total{{error_class="event_type.unknown",{router}}} 1.0' in metrics
    assert 'herald_deliveries_total{channel="email",status="skipped"} 1.0' in metrics


def test_two_workers_share_the_partitions_and_route_every_user(
    kafka: Kafka, start_router: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    catalogue = kafka.catalogue
    partitions = catalogue.recipients.partitions
    # Users on every partition of the user tables (murmur2, as the producers key them).
    partitioner = DefaultPartitioner()
    users: list[str] = []
    per_partition: Counter[int] = Counter()
    for i in range(1000):
        user_id = f"u{i}-{run}"
        partition = partitioner(user_id.encode(), list(range(partitions)), [])
        if per_partition[partition] < 4:
            per_partition[partition] += 1
            users.append(user_id)
        if len(users) == 4 * partitions:
            break
    assert set(per_partition) == set(range(partitions))

    def worker(name: str) -> ServiceProcess:
        return start_router(
            name,
            ROUTER_WEB_PORT=str(free_port()),
            ROUTER_DATA_DIR=str(tmp_path / name),
            # What is tested is that lookups find the right rows, not how fast tables follow
            # on this shared machine: a lookup on the wrong worker would never succeed.
            ROUTER_LOOKUP_GRACE_MS="10000",
        )

    first = worker("router-a")
    wait_for(lambda: assigned_partitions(first), DEADLINE, "the first worker's assignment")
    second = worker("router-b")

    def shared() -> bool:
        a, b = assigned_partitions(first), assigned_partitions(second)
        return bool(a and b and sorted(a + b) == list(range(partitions)))

    wait_for(shared, DEADLINE, "both workers to hold recipients partitions")

    # Everything is written while both run: the event type reaches the worker that does not
    # read its topic through the global table's changelog; users land on either worker.
    code = f"team.update.{run}"
    kafka.event_type(event_type(code))
    for index, user_id in enumerate(users):
        kafka.user(user(user_id, phone=None if index % 4 == 0 else "+15555550100"))
        if index % 3 == 0:
            kafka.preferences(preferences(user_id, email_enabled=False))
    # The users topic really spreads them as computed above.
    placed = {m.key(): m.partition() for m in kafka.messages(catalogue.users.name)}
    assert {placed[u.encode()] for u in users} == set(range(partitions))

    events = [kafka.event(event(code, users[i : i + 4])) for i in range(0, len(users), 4)]
    expected: dict[tuple[str, str], str] = {}
    for index, user_id in enumerate(users):
        expected[(user_id, "email")] = "skipped" if index % 3 == 0 else "pending"
        expected[(user_id, "sms")] = "skipped" if index % 4 == 0 else "pending"

    def routed() -> dict[tuple[str, str], str] | None:
        parked = kafka.messages(catalogue.events.dlq_name)
        assert not parked, [headers_dict(m)[H_ERROR_MESSAGE] for m in parked]
        # Keyed by delivery: a record read again around a rebalance (at least once) makes
        # the same status again, with the same ids, which every consumer upserts.
        statuses = {s["delivery_id"]: s for s in kafka.records(catalogue.delivery_status.name)}
        got = {(s["user_id"], s["channel"]): s["status"] for s in statuses.values()}
        return got if len(got) >= len(expected) else None

    got = wait_for(routed, DEADLINE, f"{len(expected)} statuses")
    assert got == expected, {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    for status in kafka.records(catalogue.delivery_status.name):  # repeats agree
        assert got[(status["user_id"], status["channel"])] == status["status"]
    assert kafka.messages(catalogue.events.dlq_name) == []
    notifications = kafka.records(catalogue.notifications.name)
    assert {n["user_id"] for n in notifications} == set(users)
    assert {n["event_id"] for n in notifications} == set(events)
    inapp = kafka.records(catalogue.deliveries_inapp.name)
    assert {d["user_id"] for d in inapp} == set(users)
    # Both workers did part of the routing.
    a, b = assigned_partitions(first), assigned_partitions(second)
    assert a and b and not set(a) & set(b)
    routed_partitions = {m.partition() for m in kafka.messages(catalogue.notifications.name)}
    assert routed_partitions & set(a) and routed_partitions & set(b)


def test_garbled_headers_and_oversize_output_are_parked_and_routing_goes_on(
    kafka: Kafka, start_router: Callable[..., ServiceProcess]
) -> None:
    """Issue 9, items 1 and 6: an unknown event type carrying ``x-attempt: x`` (a header any
    producer of the public topic may write; it used to crash the stage-1 agent) and an event
    whose email would exceed the producer's ``message.max.bytes`` both land on the events DLQ
    with their reason; the event after them is routed, every offset is committed, and the
    worker stays ready."""
    run = uuid.uuid4().hex[:8]
    catalogue = kafka.catalogue
    ana = f"ana-{run}"
    code = f"comment.{run}"
    kafka.user(user(ana))
    # Context values are bounded (herald.bounds), so the email repeats one: 8,000 double
    # quotes 24 times, five-fold once HTML-escaped: 192 kB of text and 960 kB of HTML.
    repeat = "{% for _ in range(24) %}{{ excerpt }}{% endfor %}"
    big = {"title": "Re: {{ post_title }}", "body": repeat, "html": f"<p>{repeat}</p>"}
    templates = {**TEMPLATES, "email": big}
    kafka.event_type(event_type(code, channels=["inapp", "email"], templates=templates))
    port = free_port()
    router = start_router(ROUTER_METRICS_PORT=str(port))
    base = f"http://127.0.0.1:{port}"

    def answers(path: str) -> int | None:
        try:
            return httpx.get(base + path, timeout=5).status_code
        except httpx.TransportError:
            return None

    wait_for(lambda: answers("/healthz") == 200, DEADLINE, "the router's /healthz")

    garbled = event(f"no.such.type.{run}", [ana])
    kafka.producer.produce(
        catalogue.events.name,
        key=garbled["event_id"],
        value=encode("herald.Event", garbled),
        headers=[("x-attempt", b"x"), ("x-first-failed-at", b"\xff\xfe")],
    )
    huge = kafka.event(event(code, [ana], excerpt='"' * 8_000))
    good = kafka.event(event(code, [ana]))

    wait_for(
        lambda: [n for n in kafka.records(catalogue.notifications.name) if n["event_id"] == good],
        DEADLINE,
        "the notification of the event after the poison",
    )
    dlq = wait_for(
        at_least(2, lambda: kafka.messages(catalogue.events.dlq_name)), DEADLINE, "two dead letters"
    )
    classes = sorted(headers_dict(m)[H_ERROR_CLASS] for m in dlq)
    # Garbled x-* headers make the record poison on their own (herald.headers).
    assert classes == ["headers.invalid", "record.too_large"], classes
    parked = {headers_dict(m)[H_ERROR_CLASS]: m for m in dlq}
    assert decode(parked["record.too_large"].value() or b"")["event"]["event_id"] == huge
    assert "message.max.bytes" in headers_dict(parked["record.too_large"])[H_ERROR_MESSAGE]
    emails = [d["event_id"] for d in kafka.records(catalogue.deliveries_email.name)]
    assert emails == [good]

    def all_committed() -> bool:
        topics = (catalogue.events.name, catalogue.recipients.name)
        return all(kafka.committed(topic) == kafka.ends(topic) for topic in topics)

    wait_for(all_committed, DEADLINE, "both router inputs committed to their ends")
    assert answers("/readyz") == 200
    assert router.running()


def test_the_dlq_flood_guard_stops_routing_instead_of_draining_into_the_dlq(
    kafka: Kafka, start_router: Callable[..., ServiceProcess]
) -> None:
    """Events of a type the router does not know (as after a deploy that lost the event types)
    go to the DLQ only up to the guard's limit; then the stage pauses and says why on
    /readyz, and once the type exists (the fix) the held events are routed, not parked."""
    run = uuid.uuid4().hex[:8]
    catalogue = kafka.catalogue
    bo = f"bo-{run}"
    code = f"order.shipped.{run}"
    kafka.user(user(bo))
    port = free_port()
    start_router(
        ROUTER_METRICS_PORT=str(port),
        ROUTER_LOOKUP_GRACE_MS="200",
        HERALD_DLQ_GUARD_MAX_CONSECUTIVE="3",
        HERALD_DLQ_GUARD_BACKOFF_SECONDS="1",
    )
    sent = [kafka.event(event(code, [bo])) for _ in range(6)]

    def readyz() -> dict[str, Any] | None:
        try:
            reply = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        except httpx.TransportError:
            return None
        return reply.json() if reply.status_code == 503 else None

    problems = wait_for(readyz, DEADLINE, "the guard to trip")["problems"]
    assert any("dlq_guard.expand_events" in name for name in problems), problems
    parked = wait_for(
        at_least(3, lambda: kafka.messages(catalogue.events.dlq_name)), 20, "three dead letters"
    )
    assert [headers_dict(m)[H_ERROR_CLASS] for m in parked] == ["event_type.unknown"] * 3
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'herald_dlq_guard_tripped{service="router"} 1.0' in metrics

    kafka.event_type(event_type(code, channels=["inapp"]))
    routed = wait_for(
        at_least(
            3,
            lambda: [n for n in kafka.records(catalogue.notifications.name) if n["user_id"] == bo],
        ),
        DEADLINE,
        "the held events routed once the type exists",
    )
    parked_ids = {decode(m.value() or b"")["event_id"] for m in parked}
    assert {n["event_id"] for n in routed} == set(sent) - parked_ids
    assert len(kafka.messages(catalogue.events.dlq_name)) == 3
    wait_for(lambda: readyz() is None, DEADLINE, "the router ready again")
