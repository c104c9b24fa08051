"""Standard Webhooks signing (https://www.standardwebhooks.com/): what a receiver checks.

Every webhook delivery carries three headers:

- ``webhook-id``: the delivery id (the same on every retry and replay, so a receiver can
  drop a delivery it already handled);
- ``webhook-timestamp``: unix seconds when this attempt was signed;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of ``f"{id}.{timestamp}.{body}"``, keyed
  by the base64-decoded part of the endpoint's secret after ``whsec_``. Several signatures
  may be listed, separated by spaces (while a secret is rotated); one matching is enough.

A receiver also rejects a timestamp further than its tolerance (5 minutes) from its own
clock, so a captured request cannot be replayed later. ``examples/webhook_receiver.py`` does
the same with the standard library only, for receivers that do not import Herald.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
#: Random bytes in a generated secret (the specification asks for 24 to 64).
SECRET_BYTES = 32
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
#: How far a receiver accepts a timestamp from its own clock.
DEFAULT_TOLERANCE_S = 300


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of :data:`SECRET_BYTES` random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret; ValueError when it is not one."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of one request."""
    payload = body.encode() if isinstance(body, str) else body
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(
    secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers of a request carrying ``body``."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``headers`` (names in any case) sign ``body`` with ``secret`` and the timestamp
    is within ``tolerance_s`` of ``now``."""
    lower = {name.lower(): value for name, value in headers.items()}
    msg_id = lower.get(HEADER_ID)
    stamp = lower.get(HEADER_TIMESTAMP, "")
    if not msg_id or not stamp.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance_s:
        return False
    expected = sign(secret, msg_id, int(stamp), body)
    return any(
        hmac.compare_digest(expected, candidate)
        for candidate in lower.get(HEADER_SIGNATURE, "").split()
    )
