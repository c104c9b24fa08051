"""The whole pipeline end to end on the real stack: ingest (HTTP) and a plain confluent-kafka
producer → router → channel topics → email_sender (SMTP), sms_sender (HTTP provider),
inapp_store (PostgreSQL)."""

from __future__ import annotations

import pytest

from tests.integration.pipeline import Pipeline, wait_for

pytestmark = pytest.mark.integration

# The ``pipeline`` fixture (every service as a real process, on this test's own topics and
# schema) is in conftest.py; tests/integration/test_scenarios.py uses it too.


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
