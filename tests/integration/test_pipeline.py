"""The whole pipeline end to end on the real stack: ingest (HTTP) and a plain confluent-kafka
producer → router → channel topics → email_sender (SMTP), sms_sender (HTTP provider),
inapp_store (PostgreSQL)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Producer

from examples.publish_event import encode_event, make_event
from herald.auth import LOCAL_ADMIN_API_KEY
from herald.db.engine import search_path_options
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from schemas import Catalogue
from tests.integration.services import ServiceProcess, service_env

pytestmark = pytest.mark.integration

SMTP_API = "http://127.0.0.1:12526"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@dataclass
class Pipeline:
    api: httpx.Client
    kafka: KafkaSettings
    db: DatabaseSettings
    catalogue: Catalogue
    settings: Settings
    run: str  # unique per test: in every address, so the shared SMTP/SMS logs can be filtered

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(
            self.db.libpq_url, options=search_path_options(self.db.database_schema)
        ) as conn:
            return conn.execute(query, params).fetchall()

    def emails_to(self, address: str) -> list[dict[str, Any]]:
        messages = httpx.get(f"{SMTP_API}/messages", timeout=10).json()
        return [m for m in messages if address in m["rcpt_tos"]]

    def sms_to(self, number: str) -> list[dict[str, Any]]:
        sid = self.settings.sms.sms_account_sid
        url = f"{self.settings.sms.sms_api_url}/2010-04-01/Accounts/{sid}/Messages.json"
        return [m for m in httpx.get(url, timeout=10).json()["messages"] if m["to"] == number]

    def status(self, user: str, channel: str) -> tuple[str, str | None] | None:
        rows = self.sql(
            "select d.status, d.error_message from notification_delivery d"
            " where d.user_id = %s and d.channel = %s order by d.updated_at desc limit 1",
            user,
            channel,
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def publish(
        self, event_type: str, recipients: list[str], event_id: str | None = None, **context: str
    ) -> str:
        """Publish with a plain confluent-kafka producer: the public contract, no Herald code."""
        event = make_event(event_type, recipients, context)
        if event_id is not None:
            event["event_id"] = event_id  # a producer's retry re-sends the same id
        producer = Producer(
            {"bootstrap.servers": self.kafka.bootstrap_servers, "partitioner": "murmur2_random"}
        )
        producer.produce(
            self.catalogue.events.name, key=event["event_id"], value=encode_event(event)
        )
        assert producer.flush(10) == 0
        return str(event["event_id"])

    def user(self, name: str, **fields: Any) -> str:
        user_id = f"{name}-{self.run}"
        body = {
            "email": f"{user_id}@example.test",
            "phone": "+1555" + str(int(uuid.uuid4().int % 10**7)).zfill(7),
            "display_name": name.capitalize(),
            **fields,
        }
        response = self.api.put(f"/v1/users/{user_id}", json=body)
        assert response.status_code in (200, 201), response.text
        return user_id

    def user_contact(self, user_id: str) -> dict[str, Any]:
        response = self.api.get(f"/v1/users/{user_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture
def pipeline(
    local_stack: Settings,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> Iterator[Pipeline]:
    port = free_port()
    env = service_env(
        kafka_settings,
        db_settings,
        HERALD_INGEST_PORT=str(port),
        ROUTER_METRICS_PORT="0",
        EMAIL_SENDER_METRICS_PORT="0",
        SMS_SENDER_METRICS_PORT="0",
        INAPP_STORE_METRICS_PORT="0",
        INGEST_METRICS_PORT="0",
    )
    for module in (
        "services.inapp_store",
        "services.router",
        "services.email_sender",
        "services.sms_sender",
        "services.ingest",
    ):
        run_service(module, env)
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        timeout=15,
        headers={"X-API-Key": LOCAL_ADMIN_API_KEY},
    ) as api:

        def ready() -> bool:
            try:
                return api.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 60, "the ingest API to be ready")
        yield Pipeline(api, kafka_settings, db_settings, topics, local_stack, uuid.uuid4().hex[:8])


def test_events_reach_every_channel_exactly_once(pipeline: Pipeline) -> None:
    response = pipeline.api.put(
        "/v1/event-types/comment.created",
        json={
            "name": "New comment",
            "channels": ["inapp", "email", "sms"],
            "templates": {
                "inapp": {"title": "New comment on {{ post_title }}", "body": "{{ excerpt }}"},
                "email": {
                    "title": "New comment on {{ post_title }}",
                    "body": "Someone wrote: {{ excerpt }}",
                    "html": "<p>Someone wrote: <em>{{ excerpt }}</em></p>",
                },
                "sms": {"title": "Comment", "body": "New comment on {{ post_title }}"},
            },
        },
    )
    assert response.status_code in (200, 201), response.text
    alice, bob = pipeline.user("alice"), pipeline.user("bob")
    carol = pipeline.user("carol")
    response = pipeline.api.put(f"/v1/users/{carol}/preferences", json={"email_enabled": False})
    assert response.status_code == 200, response.text
    contacts = {u: pipeline.user_contact(u) for u in (alice, bob, carol)}

    event_id = pipeline.publish(
        "comment.created", [alice, bob, carol], post_title="Kafka at scale", excerpt="Nice post!"
    )

    def all_final() -> bool:
        rows = pipeline.sql(
            "select count(*) from notification_delivery where status in"
            " ('sent','delivered','skipped','failed','dead')"
        )
        return rows[0][0] >= 9

    wait_for(all_final, 90, "9 final delivery statuses (3 users x 3 channels)")
    for user in (alice, bob):
        emails = pipeline.emails_to(contacts[user]["email"])  # sent before its status
        assert len(emails) == 1
        assert emails[0]["subject"] == "New comment on Kafka at scale"
        assert "Nice post!" in emails[0]["raw"]
    assert pipeline.emails_to(contacts[carol]["email"]) == []
    status = pipeline.status(carol, "email")
    assert status is not None and status[0] == "skipped"
    assert status[1] and "prefer" in status[1].lower()
    for user in (alice, bob, carol):
        assert len(pipeline.sms_to(contacts[user]["phone"])) == 1
        assert pipeline.status(user, "inapp") == ("delivered", None)
    inbox = pipeline.sql("select user_id, title from notification order by user_id")
    assert sorted(r[0] for r in inbox) == sorted([alice, bob, carol])
    assert {r[1] for r in inbox} == {"New comment on Kafka at scale"}

    # The same event again (a producer retry): nothing is delivered twice.
    pipeline.publish(
        "comment.created",
        [alice, bob, carol],
        event_id=event_id,
        post_title="Kafka at scale",
        excerpt="Nice post!",
    )
    marker = pipeline.publish("comment.created", [alice], post_title="Marker", excerpt="m")
    wait_for(lambda: len(pipeline.emails_to(contacts[alice]["email"])) == 2, 60, "the marker email")
    assert marker != event_id
    for user in (alice, bob):
        subjects = [m["subject"] for m in pipeline.emails_to(contacts[user]["email"])]
        assert subjects.count("New comment on Kafka at scale") == 1
    for user in (alice, bob, carol):
        assert len(pipeline.sms_to(contacts[user]["phone"])) == (2 if user == alice else 1)


def test_event_type_created_through_the_api_is_usable_at_once(pipeline: Pipeline) -> None:
    dave = pipeline.user("dave")
    response = pipeline.api.post(
        "/v1/event-types",
        json={
            "code": f"invoice.paid.{pipeline.run}",
            "name": "Invoice paid",
            "channels": ["inapp"],
            "context_keys": ["amount", "invoice"],
        },
    )
    assert response.status_code == 201, response.text
    response = pipeline.api.post(
        "/v1/events",
        json={
            "event_type": f"invoice.paid.{pipeline.run}",
            "recipients": [dave],
            "context": {"amount": "42.00 EUR", "invoice": "INV-7"},
        },
    )
    assert response.status_code == 202, response.text
    rows = wait_for(
        lambda: pipeline.sql("select title, message from notification where user_id = %s", dave),
        60,
        "dave's notification",
    )
    assert rows[0][0] == "Invoice paid"
    assert "42.00 EUR" in rows[0][1] and "INV-7" in rows[0][1]


def test_a_preference_change_is_honoured_by_the_next_event(pipeline: Pipeline) -> None:
    response = pipeline.api.put(
        "/v1/event-types/digest.ready",
        json={"name": "Digest ready", "channels": ["inapp", "email"], "context_keys": ["week"]},
    )
    assert response.status_code in (200, 201), response.text
    erin = pipeline.user("erin")
    email = pipeline.user_contact(erin)["email"]
    pipeline.publish("digest.ready", [erin], week="47")
    wait_for(lambda: len(pipeline.emails_to(email)) == 1, 60, "the first email")

    response = pipeline.api.put(f"/v1/users/{erin}/preferences", json={"email_enabled": False})
    assert response.status_code == 200, response.text
    pipeline.publish("digest.ready", [erin], week="48")
    wait_for(
        lambda: pipeline.sql(
            "select 1 from notification_delivery where user_id = %s and channel = 'email'"
            " and status = 'skipped'",
            erin,
        ),
        60,
        "the second email to be skipped",
    )
    assert len(pipeline.emails_to(email)) == 1
    inbox = pipeline.sql("select count(*) from notification where user_id = %s", erin)
    assert inbox[0][0] == 2
