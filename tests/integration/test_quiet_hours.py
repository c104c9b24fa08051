"""Quiet hours end to end on the real stack: every service as a process, real Kafka, PostgreSQL,
the SMTP sink and the SMS stand-in.

A user whose quiet window contains "now" gets the in-app notification at once; their email and
SMS are held in PostgreSQL (``held_delivery``) with a ``pending`` status saying why and until
when, and are sent, once, when the window ends. Waiting hours for a real window to end is not
a test: the window is set to end a few hours ahead, the test checks the release time the router
computed from it, then moves ``release_at`` to now, which is exactly what the passing of time
does to the release loop's query (``release_at <= now()``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from herald.identity import delivery_id, notification_id
from tests.integration.pipeline import Pipeline, wait_for

pytestmark = pytest.mark.integration

#: A zone with a half-hour offset and no DST, far from UTC: a window read in the wrong zone
#: would not contain "now".
ZONE = "Asia/Kolkata"


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    # Release due deliveries promptly once the test has moved their release time.
    return {"ROUTER_QUIET_RELEASE_INTERVAL_MS": "300"}


def _put_type(pipeline: Pipeline, code: str, channels: list[str], **fields: Any) -> None:
    response = pipeline.api.put(
        f"/v1/event-types/{code}",
        json={
            "name": code,
            "channels": channels,
            "templates": {
                channel: {"title": "{{ what }}", "body": f"{channel}: {{{{ what }}}}"}
                for channel in channels
            },
            **fields,
        },
    )
    assert response.status_code in (200, 201), response.text


def _delivery(pipeline: Pipeline, event_id: str, user: str, channel: str) -> tuple[Any, ...]:
    rows = pipeline.sql(
        "select status, error_class, error_message from notification_delivery where id = %s",
        delivery_id(notification_id(event_id, user), channel),
    )
    return tuple(rows[0]) if rows else ()


def _status_is(pipeline: Pipeline, event_id: str, user: str, channel: str, status: str) -> bool:
    row = _delivery(pipeline, event_id, user, channel)
    return bool(row) and row[0] == status


def test_email_and_sms_wait_for_the_end_of_quiet_hours(pipeline: Pipeline) -> None:
    reminder, alert = f"reminder.due.{pipeline.run}", f"account.locked.{pipeline.run}"
    _put_type(pipeline, reminder, ["inapp", "email", "sms"])
    _put_type(pipeline, alert, ["inapp", "email"], urgent=True)

    quinn = pipeline.user("quinn", timezone=ZONE)
    rory = pipeline.user("rory", timezone=ZONE)  # no quiet hours
    quinn_contact, rory_contact = pipeline.user_contact(quinn), pipeline.user_contact(rory)
    local_now = datetime.now(ZoneInfo(ZONE))
    start = (local_now - timedelta(hours=1)).strftime("%H:%M")
    end_local = (local_now + timedelta(hours=3)).replace(second=0, microsecond=0)
    response = pipeline.api.put(
        f"/v1/users/{quinn}/preferences",
        json={"quiet_hours_start": start, "quiet_hours_end": end_local.strftime("%H:%M")},
    )
    assert response.status_code == 200, response.text

    first = pipeline.publish(reminder, [quinn, rory], what="Reminder one")
    urgent = pipeline.publish(alert, [quinn], what="Account locked")

    # In-app at once; the urgent alert's email at once; rory (no quiet hours) gets everything.
    wait_for(
        lambda: (
            _status_is(pipeline, first, quinn, "inapp", "delivered")
            and _status_is(pipeline, urgent, quinn, "email", "sent")
            and _status_is(pipeline, first, rory, "email", "sent")
            and _status_is(pipeline, first, rory, "sms", "sent")
        ),
        90,
        "in-app, the urgent email and the unaffected user's deliveries",
    )
    assert [m["subject"] for m in pipeline.emails_to(rory_contact["email"])] == ["Reminder one"]
    assert len(pipeline.sms_to(rory_contact["phone"])) == 1
    # Held: pending, saying why and until when, in the database and through the read API.
    release_at = end_local.astimezone(UTC)
    for channel in ("email", "sms"):
        status, error_class, message = wait_for(
            partial(_delivery, pipeline, first, quinn, channel), 30, f"quinn's {channel} status"
        )
        assert (status, error_class) == ("pending", "quiet_hours.held")
        assert f"released at {release_at:%Y-%m-%dT%H:%M:%SZ}" in message
        assert ZONE in message
    held = pipeline.sql(
        "select channel, release_at, user_id from held_delivery order by channel",
    )
    assert held == [("email", release_at, quinn), ("sms", release_at, quinn)]
    nid = notification_id(first, quinn)
    assert pipeline.read_api is not None
    detail = pipeline.read_api.get(f"/v1/users/{quinn}/notifications/{nid}")
    assert detail.status_code == 200, detail.text
    shown = {d["channel"]: d for d in detail.json()["deliveries"]}
    assert shown["email"]["status"] == "pending"
    assert shown["email"]["error_class"] == "quiet_hours.held"
    assert "released at" in shown["email"]["error_message"]
    # Nothing reached quinn's phone or mailbox but the urgent alert.
    assert [m["subject"] for m in pipeline.emails_to(quinn_contact["email"])] == ["Account locked"]
    assert pipeline.sms_to(quinn_contact["phone"]) == []

    # The window ends (see the module docstring): the release loop sends them, once.
    pipeline.sql("update held_delivery set release_at = now() returning 1")
    wait_for(
        lambda: (
            _status_is(pipeline, first, quinn, "email", "sent")
            and _status_is(pipeline, first, quinn, "sms", "sent")
        ),
        60,
        "the held email and SMS to be sent",
    )
    wait_for(lambda: not pipeline.sql("select 1 from held_delivery"), 30, "no row left held")
    assert len(pipeline.sms_to(quinn_contact["phone"])) == 1

    # Quiet hours removed: the next event is not held.
    response = pipeline.api.put(f"/v1/users/{quinn}/preferences", json={})
    assert response.status_code == 200, response.text
    second = pipeline.publish(reminder, [quinn], what="Reminder two")
    wait_for(
        lambda: (
            _status_is(pipeline, second, quinn, "email", "sent")
            and _status_is(pipeline, second, quinn, "sms", "sent")
        ),
        60,
        "the next event's email and SMS, not held",
    )
    assert _delivery(pipeline, second, quinn, "email")[1] is None
    subjects = sorted(m["subject"] for m in pipeline.emails_to(quinn_contact["email"]))
    assert subjects == ["Account locked", "Reminder one", "Reminder two"]
    assert len(pipeline.sms_to(quinn_contact["phone"])) == 2
    assert pipeline.sql("select count(*) from held_delivery") == [(0,)]


def test_a_held_email_is_sent_when_the_window_really_ends(pipeline: Pipeline) -> None:
    """No shortcut: the window ends at the next minute boundary (30 to 90 s away) and the
    release loop alone, on the database's clock, lets the email go."""
    reminder = f"reminder.soon.{pipeline.run}"
    _put_type(pipeline, reminder, ["inapp", "email"])
    zone = "America/St_Johns"  # UTC-3:30 (-2:30 in summer)
    uma = pipeline.user("uma", timezone=zone)
    email = pipeline.user_contact(uma)["email"]
    # Warm the pipeline up first, so that the held event is routed well inside its window.
    warm = pipeline.publish(reminder, [uma], what="Before")
    wait_for(lambda: _status_is(pipeline, warm, uma, "email", "sent"), 90, "the warm-up email")

    local_now = datetime.now(ZoneInfo(zone))
    end_local = (local_now + timedelta(seconds=90)).replace(second=0, microsecond=0)
    response = pipeline.api.put(
        f"/v1/users/{uma}/preferences",
        json={
            "quiet_hours_start": (local_now - timedelta(hours=1)).strftime("%H:%M"),
            "quiet_hours_end": end_local.strftime("%H:%M"),
        },
    )
    assert response.status_code == 200, response.text
    held = pipeline.publish(reminder, [uma], what="After the window")
    status = wait_for(partial(_delivery, pipeline, held, uma, "email"), 30, "the held status")
    assert status[:2] == ("pending", "quiet_hours.held"), status

    wait_for(lambda: _status_is(pipeline, held, uma, "email", "sent"), 150, "the released email")
    (delivered_at,) = pipeline.sql(
        "select delivered_at from notification_delivery where id = %s",
        delivery_id(notification_id(held, uma), "email"),
    )[0]
    assert delivered_at >= end_local
    assert sorted(m["subject"] for m in pipeline.emails_to(email)) == [
        "After the window",
        "Before",
    ]
    assert pipeline.sql("select count(*) from held_delivery") == [(0,)]
