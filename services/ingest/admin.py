"""What every admin write does: lock the record, commit it to PostgreSQL, publish it to its
compacted topic, and answer 503 (with what to do) when Kafka fails after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from herald.streaming import Outgoing
from herald.webapi import Problem
from services.ingest.publisher import Publisher, PublishError

log = logging.getLogger(__name__)


def publish_or_503(
    publisher: Publisher, records: Sequence[Outgoing], *, saved: str, retry: str
) -> None:
    """Publish after a committed write; a Kafka failure becomes a 503 that says what to do."""
    try:
        publisher.publish(records)
    except PublishError as exc:
        raise kafka_unavailable(
            f"{saved} in PostgreSQL but could not be published to Kafka ({exc}); {retry}"
        ) from exc


def kafka_unavailable(detail: str) -> Problem:
    """The ``503`` of a write whose Kafka publish failed; ``detail`` says what was kept and
    what to repeat."""
    return Problem(
        503, "Kafka unavailable", detail, kind="kafka-unavailable", headers={"Retry-After": "5"}
    )
