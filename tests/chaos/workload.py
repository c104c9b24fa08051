"""What the chaos run publishes and what it therefore expects at the sinks.

Users and event types go to their compacted topics (as ingest writes them). Events go to
``herald.events.v1`` through a plain confluent-kafka producer with the example producer's
``encode_event`` (the public contract, no Herald code). Every acknowledged event adds its
expected (event, user, channel) triples; ids follow herald.identity (uuid5).

One user in :data:`WEBHOOK_EVERY` has a webhook endpoint on the private webhook sink: a row in
PostgreSQL ``channel_endpoint`` (what the webhook sender reads at send time, as the admin API
``PUT /v1/users/{id}/endpoints/webhook`` stores it) and ``endpoints`` on the user's record in
``herald.users.v1`` (what the router routes by, as the admin API republishes it). The others
have none: the router skips the webhook channel for them, so no webhook is expected.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer

from examples.publish_event import encode_event
from herald.identity import delivery_id, notification_id
from herald.serde import encode
from herald.settings import KafkaSettings
from herald.streaming import H_ATTEMPT, H_NOT_BEFORE
from herald.webhooks import new_secret
from schemas import Catalogue

#: Event types of the run: code → channels. Each template names ``n`` (the event's number)
#: and ``excerpt`` (empty, except in the oversize event).
EVENT_TYPES: dict[str, list[str]] = {
    "chaos.all": ["inapp", "email", "sms", "webhook"],
    "chaos.mail": ["inapp", "email"],
    "chaos.text": ["sms"],
    "chaos.broadcast": ["inapp"],
}
#: How often each type is chosen for an ordinary event.
MIX = (("chaos.all", 5), ("chaos.mail", 3), ("chaos.text", 2))
#: SMS numbers of the users whose SMS fail during the provider outage (a prefix of their own,
#: so the outage is scoped and the senders' breaker does not trip for everyone).
OUTAGE_PREFIX = "+1555200"
NORMAL_PREFIX = "+1555100"
#: Users 0, WEBHOOK_EVERY, 2*WEBHOOK_EVERY, ... have a webhook endpoint (user 0 gets the probe,
#: user 1 the oversize event, which therefore sends no webhook).
WEBHOOK_EVERY = 3
#: An excerpt this long is HTML-escaped five-fold into the email body: over 1 MB.
OVERSIZE_EXCERPT = 200_000

Triple = tuple[str, str, str]  # (event_id, user_id, channel)


def _templates(channels: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for channel in channels:
        if channel == "sms":
            out[channel] = {"title": "", "body": "Chaos {{ n }}", "html": None}
        elif channel == "email":
            out[channel] = {
                "title": "Chaos {{ n }}",
                "body": "Event {{ n }} {{ excerpt }}",
                "html": "<p>Event {{ n }}</p><p>{{ excerpt }}</p>",
            }
        else:
            out[channel] = {"title": "Chaos {{ n }}", "body": "Event {{ n }} {{ excerpt }}"}
            out[channel]["html"] = None
    return out


@dataclass
class User:
    user_id: str
    email: str
    phone: str
    #: URL of the user's webhook endpoint on the webhook sink, or None (no endpoint)
    webhook: str | None = None


@dataclass
class Special:
    """A record the run injects on purpose, and whether it must end on a DLQ."""

    kind: str
    key: str
    parked_expected: bool


@dataclass
class Workload:
    """The run's users, and every event Kafka acknowledged with what it should produce."""

    users: int = 200
    bulk_recipients: int = 0
    #: the webhook sink's base URL; empty: no user has a webhook endpoint
    webhook_sink: str = ""
    seed: int = 7
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    people: list[User] = field(default_factory=list)
    bulk: list[str] = field(default_factory=list)
    #: (event, user, channel) → the id the sink is checked for (delivery id; for in-app the
    #: notification id, which is the inbox row's primary key).
    expected: dict[Triple, str] = field(default_factory=dict)
    #: event id → its kind ("event", "oversize", "bulk", "probe").
    events: dict[str, str] = field(default_factory=dict)
    specials: list[Special] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        for i in range(self.users):
            outage = i % 10 == 9  # one user in ten is in the SMS outage's number range
            prefix = OUTAGE_PREFIX if outage else NORMAL_PREFIX
            user_id = f"c{i}-{self.run}"
            hook = f"{self.webhook_sink}/hooks/{user_id}" if self.webhook_sink else None
            self.people.append(
                User(user_id, f"{user_id}@chaos.test", f"{prefix}{i:04d}",
                     hook if i % WEBHOOK_EVERY == 0 else None)
            )  # fmt: skip
        self.bulk = [f"b{i}-{self.run}" for i in range(self.bulk_recipients)]
        self.hooks = {u.user_id for u in self.people if u.webhook}

    def webhook_users(self) -> list[User]:
        return [u for u in self.people if u.webhook]

    # --- set-up ----------------------------------------------------------------------------

    def seed_endpoints(self, database_url: str) -> None:
        """The webhook users' endpoints in PostgreSQL, as the admin API stores them (the
        user's row, then the endpoint with a generated signing secret)."""
        with psycopg.connect(database_url, autocommit=True) as conn:
            for user in self.webhook_users():
                conn.execute("INSERT INTO user_account (id) VALUES (%s) ON CONFLICT DO NOTHING",
                             (user.user_id,))  # fmt: skip
                conn.execute(
                    "INSERT INTO channel_endpoint (user_id, kind, url, secret)"
                    " VALUES (%s, 'webhook', %s, %s)",
                    (user.user_id, user.webhook, new_secret()),
                )

    def seed_topics(self, kafka: KafkaSettings, catalogue: Catalogue) -> None:
        """Event types and users on their compacted topics, acknowledged."""
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                             "partitioner": "murmur2_random", "linger.ms": 20})  # fmt: skip
        now = datetime.now(UTC)
        for code, channels in EVENT_TYPES.items():
            record = {"code": code, "name": code, "channels": channels,
                      "templates": _templates(channels), "updated_at": now}  # fmt: skip
            producer.produce(catalogue.event_types.name, key=code,
                             value=encode("herald.EventType", record))  # fmt: skip
        contacts: list[tuple[str, str | None, str | None, dict[str, str]]]
        contacts = [
            (u.user_id, u.email, u.phone, {"webhook": u.webhook} if u.webhook else {})
            for u in self.people
        ]
        contacts += [(b, None, None, {}) for b in self.bulk]
        for user_id, email, phone, endpoints in contacts:
            record = {"user_id": user_id, "email": email, "phone": phone,
                      "endpoints": endpoints, "updated_at": now}  # fmt: skip
            producer.produce(catalogue.users.name, key=user_id,
                             value=encode("herald.User", record))  # fmt: skip
            producer.poll(0)
        if producer.flush(60):
            raise RuntimeError("Kafka did not acknowledge the users and event types")

    # --- events ----------------------------------------------------------------------------

    def ordinary(self, n: int) -> dict[str, Any]:
        code = self.random.choices([c for c, _ in MIX], [w for _, w in MIX])[0]
        recipients = [u.user_id for u in self.random.sample(self.people, self.random.randint(1, 3))]
        return self.event(code, recipients, n)

    def event(self, code: str, recipients: list[str], n: int, excerpt: str = "") -> dict[str, Any]:
        return {
            "event_id": str(uuid.uuid4()),
            "event_type": code,
            "occurred_at": datetime.now(UTC),
            "producer": "chaos",
            "actor_id": None,
            "recipients": recipients,
            "context": {"n": str(n), "excerpt": excerpt},
            "metadata": {},
        }

    def acknowledged(self, event: dict[str, Any], kind: str) -> None:
        """Kafka took ``event``: expect its deliveries."""
        with self.lock:
            self.events[event["event_id"]] = kind
            for user in event["recipients"]:
                notification = notification_id(event["event_id"], user)
                for channel in EVENT_TYPES[event["event_type"]]:
                    if channel == "webhook" and user not in self.hooks:
                        continue  # no endpoint: the router skips the channel
                    key = (event["event_id"], user, channel)
                    self.expected[key] = (
                        notification if channel == "inapp" else delivery_id(notification, channel)
                    )


class Publisher:
    """Publishes the workload's events at a steady rate in a thread; progress = events Kafka
    acknowledged. Special records (poison, oversize, bulk) are injected on request."""

    def __init__(self, kafka: KafkaSettings, catalogue: Catalogue, workload: Workload,
                 total: int, rate: float) -> None:  # fmt: skip
        self.topic = catalogue.events.name
        self.workload = workload
        self.total = total
        self.rate = rate
        # The public contract's producer: murmur2 keys as Java and Herald do; idempotent so a
        # broker restart does not write an event twice (Herald would de-duplicate it anyway).
        self.producer = Producer({
            "bootstrap.servers": kafka.bootstrap_servers, "partitioner": "murmur2_random",
            "enable.idempotence": True, "linger.ms": 5, "message.max.bytes": 2_000_000,
            # The broker is killed on purpose: its reconnect errors are noise here.
            "log_level": 2,
        })  # fmt: skip
        self.acked = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos-publisher", daemon=True)

    def progress(self) -> float:
        return self.acked / self.total if self.total else 1.0

    def start(self) -> None:
        self.thread.start()

    def _produce(self, key: bytes | str, value: bytes, on_ack: Any,
                 headers: list[tuple[str, str | bytes | None]] | None = None) -> None:  # fmt: skip
        while not self.stop.is_set():
            try:
                self.producer.produce(self.topic, key=key, value=value, headers=headers,
                                      on_delivery=on_ack)  # fmt: skip
                return
            except BufferError:
                self.producer.poll(0.1)  # the broker is away: wait for room, never drop

    def publish(self, event: dict[str, Any], kind: str) -> None:
        def on_ack(err: KafkaError | None, _message: Message) -> None:
            if err is None:
                self.workload.acknowledged(event, kind)
                if kind == "event":
                    with self.workload.lock:
                        self.acked += 1
            else:
                self.failed.append(f"{event['event_id']}: {err}")

        self._produce(event["event_id"], encode_event(event), on_ack)
        self.producer.poll(0)

    def inject(
        self, kind: str, key: str, value: bytes, headers: list[tuple[str, str | bytes | None]]
    ) -> None:
        self.workload.specials.append(Special(kind, key, parked_expected=True))
        self._produce(key, value, None, headers)
        self.producer.poll(0)

    def _run(self) -> None:
        began, base = time.monotonic(), 0
        window = max(int(self.rate * 2), 10)  # at most ~2 s of events unacknowledged
        for n in range(self.total):
            if self.stop.is_set():
                return
            if n - self.acked > window:
                # The broker is away: wait for it instead of queueing, and go on at the set
                # rate afterwards (no burst that would leave the faults no time).
                while n - self.acked > window and not self.stop.is_set():
                    self.producer.poll(0.1)
                began, base = time.monotonic(), n
            due = began + (n - base) / self.rate
            while (delay := due - time.monotonic()) > 0:
                self.producer.poll(delay)  # returns early when it served a delivery report
            self.publish(self.workload.ordinary(n), "event")
        while self.producer.flush(1) and not self.stop.is_set():
            pass

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def close(self) -> None:
        self.stop.set()
        if self.thread.ident is not None:  # it was started
            self.thread.join(30)
        self.producer.flush(30)


# --- the special records ------------------------------------------------------------------


def poison(publisher: Publisher, run: str) -> None:
    """Two poison records: an event of an unknown type with a garbled ``x-attempt`` header
    (issue 9, item 1), and bytes that are not Avro with garbage headers."""
    workload = publisher.workload
    garbled: list[tuple[str, str | bytes | None]] = [(H_ATTEMPT, b"x"), (H_NOT_BEFORE, b"\xff-")]
    event = workload.event("chaos.unknown-type", [workload.people[0].user_id], -1)
    event["event_id"] = f"poison-unknown-type-{run}"
    publisher.inject("poison (unknown type, x-attempt: x)", event["event_id"],
                     encode_event(event), garbled)  # fmt: skip
    garbage: list[tuple[str, str | bytes | None]] = [(H_ATTEMPT, b"\xff"), ("x-\xff", b"")]
    publisher.inject("poison (not Avro, garbage headers)", f"poison-bytes-{run}",
                     b"\x00\xffnot avro at all\xc3", garbage)  # fmt: skip


def oversize(publisher: Publisher) -> None:
    """An event whose email body, HTML-escaped, is over a megabyte (issue 9, item 6)."""
    workload = publisher.workload
    event = workload.event("chaos.all", [workload.people[1].user_id], -2, '"' * OVERSIZE_EXCERPT)
    publisher.publish(event, "oversize")


def bulk(publisher: Publisher) -> None:
    """One in-app event to every bulk recipient (10,000 in the full run)."""
    workload = publisher.workload
    publisher.publish(workload.event("chaos.broadcast", list(workload.bulk), -3), "bulk")


def probe(publisher: Publisher) -> str:
    """One ordinary event to user 0 on every channel (to see that the pipeline is up)."""
    workload = publisher.workload
    event = workload.event("chaos.all", [workload.people[0].user_id], -4)
    publisher.publish(event, "probe")
    return str(event["event_id"])
