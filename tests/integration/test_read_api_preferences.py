"""A user's own preferences over the read API, on the real stack (every service a process,
real Kafka and PostgreSQL, the SMTP sink): with a session token the user reads and replaces
their preferences; the change is stored, published to the compacted preferences topic like an
admin change, and applies to the next event; mandatory types are locked; another user's
preferences stay closed."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from herald.auth import LOCAL_USER_TOKEN_SECRET, user_token
from herald.serde import decode
from herald.settings import KafkaSettings
from schemas import Catalogue
from tests.integration.kafka_util import read_all
from tests.integration.pipeline import Pipeline, wait_for

pytestmark = pytest.mark.integration


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


def _read_api(pipeline: Pipeline) -> httpx.Client:
    assert pipeline.read_api is not None
    return pipeline.read_api


def _session(pipeline: Pipeline, user_id: str) -> str:
    """A session token for ``user_id``, exchanged for the user's own token (no API key)."""
    with httpx.Client(base_url=str(_read_api(pipeline).base_url), timeout=15) as anonymous:
        response = anonymous.post(
            f"/v1/users/{user_id}/session",
            headers={"X-User-Token": user_token(user_id, LOCAL_USER_TOKEN_SECRET)},
        )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def _published(kafka: KafkaSettings, topics: Catalogue, user_id: str) -> list[dict[str, Any]]:
    out = []
    for message in read_all(kafka, topics.preferences.name):
        key = message.key()
        value = message.value()
        if key is not None and key.decode() == user_id and value is not None:
            out.append(decode(value))
    return out


def test_a_user_changes_their_own_preferences_and_the_next_event_follows_them(
    pipeline: Pipeline, kafka_settings: KafkaSettings, topics: Catalogue
) -> None:
    comment, alert = f"comment.created.{pipeline.run}", f"security.alert.{pipeline.run}"
    _put_type(pipeline, comment, ["inapp", "email"])
    _put_type(pipeline, alert, ["inapp", "email"], mandatory=True)
    ada, bob = pipeline.user("ada", timezone="Europe/Berlin"), pipeline.user("bob")
    ada_email = pipeline.user_contact(ada)["email"]
    token = _session(pipeline, ada)

    with httpx.Client(
        base_url=str(_read_api(pipeline).base_url), timeout=15, headers={"X-User-Token": token}
    ) as me:
        current = me.get(f"/v1/users/{ada}/preferences")
        assert current.status_code == 200, current.text
        body = current.json()
        assert body["email_enabled"] is True and body["event_overrides"] == {}
        assert body["timezone"] == "Europe/Berlin"
        types = {choice["code"]: choice for choice in body["event_types"]}
        assert types[comment]["locked"] is False and types[comment]["enabled"] is True
        assert types[alert]["locked"] is True
        assert types[alert]["chosen_channels"] == ["inapp", "email"]

        # The same validation as the admin API.
        refusals = [
            ({"event_overrides": {alert: {"enabled": False}}}, "mandatory-event-type"),
            ({"event_overrides": {alert: {"channels": ["inapp"]}}}, "mandatory-event-type"),
            ({"event_overrides": {"no.such": {"enabled": False}}}, "unknown-event-type"),
            ({"quiet_hours_start": "22:00"}, "validation-error"),
            ({"user_id": bob}, "validation-error"),
            ({"email_enabled": "no"}, "validation-error"),
            ({"timezone": "Mars/Olympus"}, "validation-error"),
        ]
        for wrong, kind in refusals:
            refused = me.put(f"/v1/users/{ada}/preferences", json=wrong)
            assert refused.status_code == 422, (wrong, refused.text)
            assert refused.json()["type"] == f"urn:herald:problem:{kind}", refused.text
        assert _published(kafka_settings, topics, ada)[-1]["event_overrides"] == {}

        # Ada's session opens nothing of Bob's.
        for method in ("GET", "PUT"):
            other = me.request(method, f"/v1/users/{bob}/preferences", json={})
            assert other.status_code == 403, other.text
            assert other.json()["type"] == "urn:herald:problem:forbidden"

        # Quiet hours that cannot contain "now" (the mandatory alert below is not urgent).
        later = datetime.now(ZoneInfo("Asia/Tokyo")) + timedelta(hours=6)
        wanted = {
            "timezone": "Asia/Tokyo",
            "quiet_hours_start": later.strftime("%H:%M"),
            "quiet_hours_end": (later + timedelta(minutes=1)).strftime("%H:%M"),
            "event_overrides": {comment: {"channels": ["inapp"]}},
        }
        changed = me.put(f"/v1/users/{ada}/preferences", json=wanted)
        assert changed.status_code == 200, changed.text
        assert changed.json()["event_overrides"] == {
            comment: {"enabled": True, "channels": ["inapp"]}
        }
        assert changed.json()["timezone"] == "Asia/Tokyo"
        chosen = {c["code"]: c for c in changed.json()["event_types"]}[comment]
        assert chosen["chosen_channels"] == ["inapp"] and chosen["enabled"] is True
        assert me.get(f"/v1/users/{ada}/preferences").json() == changed.json()

    # Stored, and published to the compacted topic like an admin change.
    assert pipeline.sql(
        "select event_type_code, channels from user_event_preference where user_id = %s", ada
    ) == [(comment, ["inapp"])]
    latest = _published(kafka_settings, topics, ada)[-1]
    assert latest["event_overrides"] == {comment: {"enabled": True, "channels": ["inapp"]}}
    assert latest["quiet_hours_start"] == wanted["quiet_hours_start"]
    # The time zone belongs to the user: stored there and published on the users topic.
    assert pipeline.user_contact(ada)["timezone"] == "Asia/Tokyo"
    users = [
        decode(value)
        for message in read_all(kafka_settings, topics.users.name)
        if (key := message.key()) is not None
        and key.decode() == ada
        and (value := message.value()) is not None
    ]
    assert users[-1]["timezone"] == "Asia/Tokyo"
    # The admin API sees the same preferences (one implementation).
    admin_view = pipeline.api.get(f"/v1/users/{ada}/preferences")
    assert admin_view.status_code == 200
    assert admin_view.json() == changed.json()

    # The next event follows them: in the inbox, not emailed; the mandatory type still is.
    event_id = pipeline.publish(comment, [ada], what="a comment")
    wait_for(lambda: ada in pipeline.inbox(event_id), 60, "the comment in Ada's inbox")
    wait_for(
        lambda: (pipeline.status(ada, "email") or ("",))[0] == "skipped",
        60,
        "Ada's email skipped",
    )
    alert_id = pipeline.publish(alert, [ada], what="new login")
    wait_for(lambda: len(pipeline.emails_to(ada_email)) == 1, 60, "the alert emailed to Ada")
    assert "new login" in pipeline.emails_to(ada_email)[0]["raw"]
    assert ada in pipeline.inbox(alert_id)
    # Bob's preferences were never touched.
    assert pipeline.api.get(f"/v1/users/{bob}/preferences").json()["event_overrides"] == {}


def test_an_admin_key_may_read_and_change_a_users_preferences_a_reader_key_may_not(
    pipeline: Pipeline,
) -> None:
    ada = pipeline.user("ada")
    # pipeline.read_api sends the local admin key (every scope).
    assert _read_api(pipeline).get(f"/v1/users/{ada}/preferences").status_code == 200
    changed = _read_api(pipeline).put(f"/v1/users/{ada}/preferences", json={"sms_enabled": False})
    assert changed.status_code == 200, changed.text
    assert pipeline.api.get(f"/v1/users/{ada}/preferences").json()["sms_enabled"] is False
    missing = _read_api(pipeline).get("/v1/users/nobody-here/preferences")
    assert missing.status_code == 404
    with httpx.Client(base_url=str(_read_api(pipeline).base_url), timeout=15) as anonymous:
        assert anonymous.get(f"/v1/users/{ada}/preferences").status_code == 401
