"""Issue 13, item 6: bounded ids and strings everywhere, from outside.

Every service runs as a real process. Over HTTP, a 3,000-character user id, an over-long
context key or value, too many context entries and an over-long metadata value are refused
with 422 naming the field. With a plain confluent-kafka producer and the public Avro contract
(``examples/publish_event.py``), events carrying the same are parked on the events DLQ with
their reason (``record.too_long``, ``record.invalid_id``); a delivery request with a
3,000-character user id written straight to the in-app topic is parked on inapp_store's DLQ
(and one on the email topic on the email sender's), and the good record behind it is stored.
PostgreSQL itself refuses an over-long id. Afterwards an ordinary event is delivered, and
another user's inbox is what it was.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from confluent_kafka import Message, Producer

from examples.publish_event import SCHEMA_FILE, encode_event, make_event
from herald.bounds import CONTEXT, METADATA
from herald.serde import decode
from herald.streaming import H_ERROR_CLASS, H_ERROR_MESSAGE, headers_dict
from tests.integration.delivery_util import delivery_request
from tests.integration.kafka_util import read_all
from tests.integration.pipeline import Pipeline, wait_for

pytestmark = pytest.mark.integration

NOTE = "sec.note"
#: A user id far past MAX_ID_LENGTH (255). One character repeated: PostgreSQL compresses it
#: into its btree index, so only the length constraints (migration 0006) refuse it there.
LONG_ID = "x" * 3000
REQUEST_SCHEMA = SCHEMA_FILE.with_name("DeliveryRequest.avsc")


def titles(pipeline: Pipeline, user: str) -> list[str]:
    """The titles in ``user``'s inbox, read through the read API, newest first."""
    assert pipeline.read_api is not None
    response = pipeline.read_api.get(f"/v1/users/{user}/notifications")
    assert response.status_code == 200, response.text
    return [item["title"] for item in response.json()["items"]]


def send(pipeline: Pipeline, user: str, n: str) -> str:
    """``POST /v1/events``: one note; its id."""
    body = {"event_type": NOTE, "recipients": [user], "context": {"n": n}}
    response = pipeline.api.post("/v1/events", json=body)
    assert response.status_code == 202, response.text
    [event_id] = response.json()["event_ids"]
    return str(event_id)


def produce(pipeline: Pipeline, records: list[tuple[str, str, bytes]]) -> None:
    """``(topic, key, value)`` records with a plain confluent-kafka producer, in order."""
    producer = Producer(
        {"bootstrap.servers": pipeline.kafka.bootstrap_servers, "partitioner": "murmur2_random"}
    )
    for topic, key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def dead_letters(pipeline: Pipeline, topic: str) -> dict[str, dict[str, str]]:
    """A DLQ's records: the event id each carries -> its headers."""
    return {parked_id(m): headers_dict(m) for m in read_all(pipeline.kafka, topic)}


def parked_id(message: Message) -> str:
    """The event id of a dead letter: an event's, a recipient's copy of one (parked in stage
    2) or a delivery request's."""
    record = decode(message.value() or b"")
    return str(record.get("event", record)["event_id"])


def test_over_long_ids_and_strings_are_refused_everywhere(pipeline: Pipeline) -> None:
    api = pipeline.api
    body = {"code": NOTE, "name": "Note", "channels": ["inapp"]}
    templates = {"inapp": {"title": "Note {{ n }}", "body": "{{ n }}"}}
    created = api.post("/v1/event-types", json={**body, "templates": templates})
    assert created.status_code == 201, created.text
    alice, bob = pipeline.user("alice"), pipeline.user("bob")
    send(pipeline, bob, "before")
    wait_for(lambda: titles(pipeline, bob) == ["Note before"], 90, "bob's first note")

    # --- HTTP: 422 naming the field; nothing is published ----------------------------------
    ok: dict[str, Any] = {"event_type": NOTE, "recipients": [alice], "context": {"n": "1"}}
    for changes, field, reason in (
        ({"recipients": [alice, LONG_ID]}, "recipients[1]", "a user id has 1 to 255 characters"),
        ({"actor_id": LONG_ID}, "actor_id", "a user id has 1 to 255 characters"),
        ({"context": {"k" * 129: "1"}}, "context", "context key 'kkkk"),
        ({"context": {"n": "v" * 8193}}, "context", "context value of 'n' has 8193 characters"),
        ({"context": {f"k{i}": i for i in range(65)}}, "context", "context has 65 entries"),
        ({"metadata": {"trace": "t" * 1025}}, "metadata", "metadata value of 'trace' has 1025"),
        ({"metadata": {"k" * 129: "t"}}, "metadata", "metadata key 'kkkk"),
    ):
        response = api.post("/v1/events", json={**ok, **changes})
        assert response.status_code == 422, (changes.keys(), response.text)
        errors = response.json()["errors"]
        assert any(e["field"] == field and reason in e["message"] for e in errors), errors
    user = api.put(f"/v1/users/{LONG_ID}", json={"email": "long@example.test"})
    assert user.status_code == 422, user.text
    assert api.get(f"/v1/users/{alice}").status_code == 200
    events = pipeline.catalogue.events.name
    assert len(read_all(pipeline.kafka, events)) == 1  # bob's note only

    # --- Kafka: a plain producer writes past the bounds straight to the events topic -------
    def event(**changes: Any) -> dict[str, Any]:
        return {**make_event(NOTE, [alice], {"n": "kafka"}), **changes}

    poison = {
        "record.too_long": [
            event(context={"n": "v" * (CONTEXT.max_value_length + 1)}),
            event(context={"k" * 129: "x", "n": "1"}),
            event(metadata={"trace": "t" * (METADATA.max_value_length + 1)}),
        ],
        "record.invalid_id": [event(recipients=[alice, LONG_ID])],
    }
    expected = {e["event_id"]: error for error, records in poison.items() for e in records}
    everything = [e for records in poison.values() for e in records]
    produce(pipeline, [(events, e["event_id"], encode_event(e)) for e in everything])

    # --- Kafka: delivery requests with a 3,000-character user id, straight to the channels --
    inapp = pipeline.catalogue.for_channel("inapp")
    email = pipeline.catalogue.for_channel("email")
    carol = f"carol-{pipeline.run}"
    long_inapp = delivery_request("inapp", LONG_ID, user_id=LONG_ID, event_type=NOTE)
    good_inapp = delivery_request("inapp", carol, user_id=carol, event_type=NOTE, subject="Direct")
    long_email = delivery_request("email", "long@example.test", user_id=LONG_ID, event_type=NOTE)
    # One key: the good record is behind the poison in the same partition.
    produce(
        pipeline,
        [
            (inapp.name, carol, encode_event(long_inapp, REQUEST_SCHEMA)),
            (inapp.name, carol, encode_event(good_inapp, REQUEST_SCHEMA)),
            (email.name, carol, encode_event(long_email, REQUEST_SCHEMA)),
        ],
    )

    # --- PostgreSQL refuses an over-long id from any other writer ---------------------------
    for table, insert in (
        ("user_account", "insert into user_account (id) values (%s)"),
        (
            "notification",
            "insert into notification (id, event_id, user_id, event_type, title, message)"
            " values (gen_random_uuid(), gen_random_uuid(), %s, 'sec.note', 't', 'm')",
        ),
    ):
        with pytest.raises(psycopg.errors.CheckViolation, match=f"ck_{table}_"):
            pipeline.sql(insert, LONG_ID)

    # --- what was refused, and why -----------------------------------------------------------
    dlq = pipeline.catalogue.events.dlq_name

    def all_parked() -> dict[str, dict[str, str]] | None:
        found = dead_letters(pipeline, dlq)
        return found if set(expected) <= set(found) else None

    letters = wait_for(all_parked, 90, "the poison events on the events DLQ")
    assert {key: h[H_ERROR_CLASS] for key, h in letters.items()} == expected
    reasons = " | ".join(h[H_ERROR_MESSAGE] for h in letters.values())
    for reason in (
        "context value of 'n' has 8193 characters; values have at most 8192",
        "context key 'kkkk",
        "metadata value of 'trace' has 1025 characters",
        "recipient 'xxxx",
    ):
        assert reason in reasons, reasons

    wait_for(lambda: titles(pipeline, carol) == ["Direct"], 90, "the good in-app request's row")
    parked = wait_for(
        lambda: dead_letters(pipeline, inapp.dlq_name) or None, 60, "inapp_store's dead letter"
    )
    [headers] = parked.values()
    assert headers[H_ERROR_CLASS] == "record.invalid_id", headers
    assert headers[H_ERROR_MESSAGE].startswith("user_id 'xxxx"), headers
    assert "has 3000 characters" in headers[H_ERROR_MESSAGE], headers
    [email_headers] = wait_for(
        lambda: dead_letters(pipeline, email.dlq_name) or None, 60, "the email sender's dead letter"
    ).values()
    assert email_headers[H_ERROR_CLASS] == "request.invalid_id", email_headers

    # --- the pipeline still flows; nobody else was touched ------------------------------------
    send(pipeline, alice, "after")
    wait_for(lambda: titles(pipeline, alice) == ["Note after"], 90, "alice's note after")
    assert titles(pipeline, bob) == ["Note before"]
    for table in ("notification", "notification_delivery"):
        rows = pipeline.sql(f"select count(*) from {table} where char_length(user_id) > 255")
        assert rows == [(0,)], table
