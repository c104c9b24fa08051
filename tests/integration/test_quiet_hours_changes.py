"""Quiet hours follow changes (issue 15), end to end on the real stack: a held email and SMS
are decided again when the user changes their address or their preferences
(services.router.hold_review): moved, released early to the new address, or dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from herald.identity import delivery_id, notification_id
from herald.serde import decode
from tests.integration.kafka_util import read_all
from tests.integration.pipeline import Pipeline, wait_for
from tests.integration.test_quiet_hours import _delivery, _put_type, _status_is

pytestmark = pytest.mark.integration

ZONE = "Asia/Kolkata"


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    return {"ROUTER_QUIET_RELEASE_INTERVAL_MS": "300"}


def _window(hours_ahead: int) -> tuple[dict[str, str], datetime]:
    """Quiet hours holding now, ending ``hours_ahead`` hours ahead: the body and the end."""
    local_now = datetime.now(ZoneInfo(ZONE))
    end = (local_now + timedelta(hours=hours_ahead)).replace(second=0, microsecond=0)
    body = {
        "quiet_hours_start": (local_now - timedelta(hours=1)).strftime("%H:%M"),
        "quiet_hours_end": end.strftime("%H:%M"),
    }
    return body, end.astimezone(UTC)


def _held(pipeline: Pipeline) -> dict[str, tuple[datetime, dict[str, Any]]]:
    rows = pipeline.sql("select channel, release_at, payload from held_delivery")
    return {channel: (at, decode(bytes(payload))) for channel, at, payload in rows}


def _put_user(pipeline: Pipeline, user: str, **fields: Any) -> None:
    body = {**pipeline.user_contact(user), **fields}
    body = {k: body[k] for k in ("email", "phone", "display_name", "locale", "timezone")}
    response = pipeline.api.put(f"/v1/users/{user}", json=body)
    assert response.status_code == 200, response.text


def test_a_change_moves_releases_early_to_the_new_address_or_drops(pipeline: Pipeline) -> None:
    code = f"reminder.changes.{pipeline.run}"
    _put_type(pipeline, code, ["inapp", "email", "sms"])
    quinn = pipeline.user("quinn", timezone=ZONE)
    old_email = pipeline.user_contact(quinn)["email"]
    phone = pipeline.user_contact(quinn)["phone"]
    quiet, release_at = _window(3)
    response = pipeline.api.put(f"/v1/users/{quinn}/preferences", json=quiet)
    assert response.status_code == 200, response.text

    first = pipeline.publish(code, [quinn], what="Held one")
    wait_for(lambda: len(_held(pipeline)) == 2, 60, "the email and SMS held")
    assert {at for at, _ in _held(pipeline).values()} == {release_at}

    # The window moves but still holds now: the release time follows, and the status says so.
    moved, moved_at = _window(2)
    assert pipeline.api.put(f"/v1/users/{quinn}/preferences", json=moved).status_code == 200
    wait_for(
        lambda: {at for at, _ in _held(pipeline).values()} == {moved_at},
        30,
        "the release time moved",
    )
    # A pending status naming the new release time (the stored row keeps the first pending:
    # inapp_store lets the earliest of equal statuses stand).
    email_id = delivery_id(notification_id(first, quinn), "email")

    def moved_status() -> list[dict[str, Any]]:
        records = [decode(m.value() or b"") for m in read_all(pipeline.kafka, statuses)]
        return [
            s
            for s in records
            if s["delivery_id"] == email_id
            and f"released at {moved_at:%Y-%m-%dT%H:%M:%SZ}" in (s["error_message"] or "")
        ]

    statuses = pipeline.catalogue.delivery_status.name
    assert wait_for(moved_status, 30, "a status naming the new release time")[0]["status"] == (
        "pending"
    )

    # A new address while held: the held request is brought up to date.
    new_email = f"new-{old_email}"
    _put_user(pipeline, quinn, email=new_email)
    wait_for(lambda: _held(pipeline)["email"][1]["destination"] == new_email, 30, "the new address")
    assert pipeline.emails_to(new_email) == [] and pipeline.sms_to(phone) == []

    # Quiet hours removed: released at once (hours before the window's end), to the new address.
    assert pipeline.api.put(f"/v1/users/{quinn}/preferences", json={}).status_code == 200
    wait_for(
        lambda: (
            _status_is(pipeline, first, quinn, "email", "sent")
            and _status_is(pipeline, first, quinn, "sms", "sent")
        ),
        60,
        "the held email and SMS released early",
    )
    assert [m["subject"] for m in pipeline.emails_to(new_email)] == ["Held one"]
    assert pipeline.emails_to(old_email) == []
    assert len(pipeline.sms_to(phone)) == 1
    assert _held(pipeline) == {}

    # Held again, then the user opts out of SMS: the SMS is dropped, the email stays held.
    assert pipeline.api.put(f"/v1/users/{quinn}/preferences", json=quiet).status_code == 200
    second = pipeline.publish(code, [quinn], what="Held two")
    wait_for(lambda: len(_held(pipeline)) == 2, 60, "the second email and SMS held")
    no_sms = {**quiet, "sms_enabled": False}
    assert pipeline.api.put(f"/v1/users/{quinn}/preferences", json=no_sms).status_code == 200
    wait_for(lambda: set(_held(pipeline)) == {"email"}, 30, "the SMS dropped")
    # The row appears when inapp_store has read the status: absent until then.
    wait_for(
        lambda: _status_is(pipeline, second, quinn, "sms", "skipped"),
        30,
        "the dropped SMS's status",
    )
    status = _delivery(pipeline, second, quinn, "sms")
    assert status[2] == "SMS disabled by the user's preferences"
    assert _delivery(pipeline, second, quinn, "email")[:2] == ("pending", "quiet_hours.held")
    held_email = _held(pipeline)["email"][1]
    assert held_email["delivery_id"] == delivery_id(notification_id(second, quinn), "email")
    assert len(pipeline.sms_to(phone)) == 1
    assert [m["subject"] for m in pipeline.emails_to(new_email)] == ["Held one"]
