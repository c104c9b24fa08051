"""Deterministic identities: what makes every step of the pipeline idempotent.

``notification_id = uuid5(event_id, user_id)`` and ``delivery_id = uuid5(notification_id,
channel)``: a re-sent event yields the same notification and delivery ids, and PostgreSQL's
unique keys on them turn a duplicate into an upsert instead of a second row or a second send.

Ids are bounded: :data:`MAX_ID_LENGTH` characters for every id Herald is given (user ids, event
ids, event type codes, idempotency keys), enforced by the ingest API (422), by the router for
records written straight to Kafka (``record.invalid_id`` on the events DLQ), by inapp_store and
the senders for records written straight to their topics, and by PostgreSQL's CHECK
constraints (migration 0006), so that no id reaches PostgreSQL that its btree indexes cannot
hold. The other strings of an event (context, metadata) are bounded in :mod:`herald.bounds`.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Final

#: Longest id accepted anywhere. A PostgreSQL btree index entry must fit in about a third of
#: an 8 KB page (2,704 bytes); a longer ``user_id`` made inapp_store's every insert of its
#: batch fail, forever. 255 characters are at most 1,020 bytes of UTF-8: the indexes holding
#: a user id (with a timestamp and a uuid beside it) stay far below the limit.
MAX_ID_LENGTH: Final = 255
#: Most recipients one event may name: the ingest API's default and the router's hard limit
#: (an event naming more goes to the events DLQ as ``record.too_many_recipients``).
MAX_RECIPIENTS: Final = 10_000

#: Namespace for event ids that are not UUIDs themselves (producers may use any string).
HERALD_NAMESPACE = uuid.UUID("6f1c2f0e-52a8-4b8e-9d0c-2f6f3c1a9e11")


_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def event_uuid(event_id: str) -> uuid.UUID:
    """The event id as a UUID: itself when it is one, else a stable uuid5 of the string."""
    try:
        return uuid.UUID(event_id)
    except ValueError:
        return uuid.uuid5(HERALD_NAMESPACE, event_id)


def _uuid5(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(UUID(bytes=namespace), name))`` without the UUID objects: the router
    makes several ids per recipient, and this is a quarter of the cost."""
    digest = bytearray(hashlib.sha1(namespace + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _canonical_bytes(value: str) -> bytes | None:
    """The 16 bytes of ``value`` when it is a UUID in the canonical lower-case form Herald
    writes (what ``uuid.UUID(value).bytes`` gives, without the object); else None."""
    return bytes.fromhex(value.replace("-", "")) if _CANONICAL.fullmatch(value) else None


def notification_id(event_id: str, user_id: str) -> str:
    """The id of the notification one event makes for one user."""
    namespace = _canonical_bytes(event_id) or event_uuid(event_id).bytes
    return _uuid5(namespace, user_id)


def delivery_id(notification_id: str, channel: str) -> str:
    """The id of one notification's delivery on one channel."""
    namespace = _canonical_bytes(notification_id) or uuid.UUID(notification_id).bytes
    return _uuid5(namespace, channel)


def derived_event_id(event_id: str, purpose: str) -> str:
    """The id of an event Herald derives from another (e.g. the ``security.login_alert`` a
    ``user.login`` raises): the same source event always derives the same event."""
    return str(uuid.uuid5(event_uuid(event_id), purpose))


def check_id_length(value: str, what: str) -> str:
    """``value`` if it is 1 to :data:`MAX_ID_LENGTH` characters long; else ``ValueError``
    naming ``what`` it is (``user id``, ``event id``...) and showing only its start."""
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        shown = value if len(value) <= 40 else f"{value[:40]}…"
        raise ValueError(
            f"{what} {shown!r} has {len(value)} characters; ids have 1 to {MAX_ID_LENGTH}"
        )
    return value
