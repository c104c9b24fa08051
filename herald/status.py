"""Delivery status events: every service reports each attempt's outcome the same way."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from herald.errors import ProcessingError
from herald.serde import encode
from herald.streaming import Outgoing
from schemas import Catalogue

STATUS_SCHEMA = "herald.DeliveryStatus"
#: Delivery states after which nothing more happens to a delivery.
FINAL_STATUSES: Final = ("sent", "delivered", "skipped", "failed", "dead")


def status_event(
    delivery: Mapping[str, Any],
    status: str,
    *,
    attempt: int = 1,
    error: ProcessingError | None = None,
    error_class: str | None = None,
    error_message: str | None = None,
    provider_message_id: str | None = None,
    provider: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A ``herald.DeliveryStatus`` record for one delivery (a DeliveryRequest-shaped mapping)."""
    return {
        "delivery_id": delivery["delivery_id"],
        "notification_id": delivery["notification_id"],
        "user_id": delivery["user_id"],
        "channel": delivery["channel"],
        "status": status,
        "attempt": attempt,
        "error_class": error.error_class if error is not None else error_class,
        "error_message": error.message[:1000] if error is not None else error_message,
        "provider_message_id": provider_message_id,
        "provider": provider,
        "occurred_at": now or datetime.now(UTC),
    }


def status_outgoing(catalogue: Catalogue, event: Mapping[str, Any]) -> Outgoing:
    """The status event as a record for ``herald.delivery-status.v1`` (keyed by notification)."""
    return Outgoing(
        catalogue.delivery_status.name,
        event["notification_id"],
        encode(STATUS_SCHEMA, dict(event)),
    )
