"""Known devices and new-device alerts, as pure functions (no broker, no table, no clock).

The router keeps, per user, the devices the user has signed in from: a ``known_devices`` table
keyed by user id (co-partitioned with the recipients topic, like the users table), whose value
is this module's JSON encoding of ``device_id → {user_agent, ip, first_seen, last_seen}``.

The rule: a ``user.login`` event whose context names a ``device_id`` not in the user's table
raises a ``security.login_alert`` for that user and adds the device; a known device only
refreshes its last-seen time. The very first login of a user is therefore alerted too (a
sign-in from a device never seen before is exactly what the alert is about). A login without a
``device_id`` teaches nothing and raises nothing.

The alert is a derived event: id ``uuid5(login event id, "security.login_alert")`` (so a
re-delivered login raises the same alert, which the pipeline deduplicates), the device in its
context; the router routes it through the normal path (routing.route).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from herald.identity import derived_event_id
from herald.seed import LOGIN_ALERT, USER_LOGIN
from herald.serde import Record

#: Device fields a login's context may carry, copied into the alert's context.
DEVICE_FIELDS: Final = ("device_id", "user_agent", "ip")
#: Devices kept per user; past it, the least recently seen is forgotten (and would alert again).
MAX_DEVICES: Final = 50

KnownDevices = dict[str, dict[str, Any]]


def is_login(event: Mapping[str, Any]) -> bool:
    """Whether an event is a sign-in the router learns devices from."""
    return bool(event.get("event_type") == USER_LOGIN)


def decode_devices(raw: bytes | None) -> KnownDevices:
    """A table value as ``device_id → details``; nothing stored means no device known."""
    return dict(json.loads(raw)) if raw else {}


def encode_devices(devices: Mapping[str, Mapping[str, Any]]) -> bytes:
    """The table value for a user's devices (compact, key-sorted JSON)."""
    return json.dumps(devices, sort_keys=True, separators=(",", ":")).encode()


def observe_login(
    known: Mapping[str, Mapping[str, Any]], event: Mapping[str, Any], now: datetime
) -> tuple[KnownDevices, bool]:
    """A login seen against the user's known devices: the devices after it, and whether the
    device is new (an alert is due). ``known`` is not modified."""
    context = event.get("context") or {}
    device_id = context.get("device_id")
    devices: KnownDevices = {key: dict(value) for key, value in known.items()}
    if not device_id:
        return devices, False
    seen = now.astimezone(UTC).isoformat()
    entry = devices.get(device_id)
    is_new = entry is None
    if entry is None:
        entry = devices[device_id] = {"first_seen": seen}
    entry.update(
        last_seen=seen,
        user_agent=context.get("user_agent") or entry.get("user_agent") or "",
        ip=context.get("ip") or entry.get("ip") or "",
    )
    if len(devices) > MAX_DEVICES:
        oldest = sorted(devices, key=lambda d: str(devices[d]["last_seen"]))
        for gone in oldest[: len(devices) - MAX_DEVICES]:
            del devices[gone]
    return devices, is_new


def login_alert(recipient_event: Mapping[str, Any]) -> Record:
    """The ``herald.RecipientEvent`` of the alert a new-device login raises, for the same
    user: a ``security.login_alert`` event with the device in its context."""
    login = recipient_event["event"]
    context = login.get("context") or {}
    alert_context = {key: str(context.get(key) or "unknown") for key in DEVICE_FIELDS}
    alert_context["login_event_id"] = login["event_id"]
    return {
        "user_id": recipient_event["user_id"],
        "event": {
            "event_id": derived_event_id(login["event_id"], LOGIN_ALERT),
            "event_type": LOGIN_ALERT,
            "occurred_at": login["occurred_at"],
            "producer": "herald-router",
            "actor_id": None,
            "recipients": [recipient_event["user_id"]],
            "context": alert_context,
            "metadata": dict(login.get("metadata") or {}),
        },
    }
