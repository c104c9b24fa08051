"""Deterministic identities: what makes every step of the pipeline idempotent.

``notification_id = uuid5(event_id, user_id)`` and ``delivery_id = uuid5(notification_id,
channel)``: a re-sent event yields the same notification and delivery ids, and PostgreSQL's
unique keys on them turn a duplicate into an upsert instead of a second row or a second send.
"""

from __future__ import annotations

import uuid

#: Namespace for event ids that are not UUIDs themselves (producers may use any string).
HERALD_NAMESPACE = uuid.UUID("6f1c2f0e-52a8-4b8e-9d0c-2f6f3c1a9e11")


def event_uuid(event_id: str) -> uuid.UUID:
    """The event id as a UUID: itself when it is one, else a stable uuid5 of the string."""
    try:
        return uuid.UUID(event_id)
    except ValueError:
        return uuid.uuid5(HERALD_NAMESPACE, event_id)


def notification_id(event_id: str, user_id: str) -> str:
    """The id of the notification one event makes for one user."""
    return str(uuid.uuid5(event_uuid(event_id), user_id))


def delivery_id(notification_id: str, channel: str) -> str:
    """The id of one notification's delivery on one channel."""
    return str(uuid.uuid5(uuid.UUID(notification_id), channel))


def derived_event_id(event_id: str, purpose: str) -> str:
    """The id of an event Herald derives from another (e.g. the ``security.login_alert`` a
    ``user.login`` raises): the same source event always derives the same event."""
    return str(uuid.uuid5(event_uuid(event_id), purpose))
