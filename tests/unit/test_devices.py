"""Known devices: which logins raise a new-device alert, and the alert they raise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from herald.identity import derived_event_id
from herald.serde import decode, encode
from services.router.devices import (
    MAX_DEVICES,
    decode_devices,
    encode_devices,
    is_login,
    login_alert,
    observe_login,
)

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def login(device: str | None, **context: str) -> dict:
    if device is not None:
        context["device_id"] = device
    return {
        "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "event_type": "user.login",
        "occurred_at": NOW,
        "producer": "web",
        "actor_id": None,
        "recipients": ["ann"],
        "context": context,
        "metadata": {"trace": "t1"},
    }


def test_an_unknown_device_is_new_and_learnt_and_a_known_one_is_not() -> None:
    devices, new = observe_login({}, login("laptop", user_agent="Firefox", ip="203.0.113.7"), NOW)
    assert new
    assert devices["laptop"]["user_agent"] == "Firefox"
    later = NOW + timedelta(hours=1)
    again, new = observe_login(devices, login("laptop", ip="198.51.100.1"), later)
    assert not new
    assert again["laptop"]["first_seen"] == NOW.isoformat()
    assert again["laptop"]["last_seen"] == later.isoformat()
    assert again["laptop"]["ip"] == "198.51.100.1" and again["laptop"]["user_agent"] == "Firefox"
    assert devices["laptop"]["last_seen"] == NOW.isoformat()  # the input is not modified
    more, new = observe_login(again, login("phone"), later)
    assert new and set(more) == {"laptop", "phone"}


def test_a_login_without_a_device_teaches_nothing() -> None:
    devices, new = observe_login({}, login(None, user_agent="curl"), NOW)
    assert devices == {} and not new


def test_the_table_value_round_trips_and_stays_bounded() -> None:
    devices: dict = {}
    for n in range(MAX_DEVICES + 3):
        devices, _ = observe_login(devices, login(f"d{n}"), NOW + timedelta(seconds=n))
    assert len(devices) == MAX_DEVICES
    assert "d0" not in devices and f"d{MAX_DEVICES + 2}" in devices
    assert decode_devices(encode_devices(devices)) == devices
    assert decode_devices(None) == {}


def test_the_alert_is_a_derived_event_for_the_same_user() -> None:
    event = login("laptop", user_agent="Firefox", ip="203.0.113.7")
    assert is_login(event) and not is_login({**event, "event_type": "comment.created"})
    alert = login_alert({"user_id": "ann", "event": event})
    assert alert["user_id"] == "ann"
    assert alert["event"]["event_id"] == derived_event_id(event["event_id"], "security.login_alert")
    assert alert["event"]["event_type"] == "security.login_alert"
    assert alert["event"]["recipients"] == ["ann"]
    assert alert["event"]["context"] == {
        "device_id": "laptop",
        "user_agent": "Firefox",
        "ip": "203.0.113.7",
        "login_event_id": event["event_id"],
    }
    assert decode(encode("herald.RecipientEvent", alert)) == alert
    # A re-delivered login raises the same alert (deduplicated downstream).
    assert login_alert({"user_id": "ann", "event": event}) == alert
