"""Helpers for tests of the channel senders: delivery requests, publishing, status read-back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from herald.identity import delivery_id, notification_id
from herald.serde import decode, encode
from herald.settings import KafkaSettings
from herald.streaming import headers_dict, producer_config
from schemas import Catalogue
from tests.integration.kafka_util import read_all

T = TypeVar("T")

_TRANSIENT = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
}


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def delivery_request(
    channel: str, destination: str, *, user_id: str | None = None, **changes: Any
) -> dict[str, Any]:
    """A ``herald.DeliveryRequest`` with fresh, consistent ids (as the router makes them)."""
    event_id = str(uuid.uuid4())
    user_id = user_id or f"u-{uuid.uuid4().hex[:8]}"
    notification = notification_id(event_id, user_id)
    # Millisecond precision, as timestamp-millis keeps it, so a read-back compares equal.
    now = datetime.now(UTC)
    return {
        "delivery_id": delivery_id(notification, channel),
        "notification_id": notification,
        "event_id": event_id,
        "user_id": user_id,
        "event_type": "test.sender",
        "channel": channel,
        "destination": destination,
        "subject": "",
        "body_text": "",
        "body_html": None,
        "locale": "en",
        "created_at": now.replace(microsecond=now.microsecond // 1000 * 1000),
        **changes,
    }


def publish(kafka: KafkaSettings, topic: str, requests: Iterable[dict[str, Any]]) -> None:
    """Produce the requests to ``topic`` in order, keyed by user (as the router does)."""
    producer = Producer(producer_config(kafka))
    for request in requests:
        producer.produce(
            topic, key=request["user_id"], value=encode("herald.DeliveryRequest", request)
        )
    assert producer.flush(30) == 0


def statuses(kafka: KafkaSettings, catalogue: Catalogue) -> list[dict[str, Any]]:
    """Every delivery status event published so far, decoded."""
    return [
        decode(message.value() or b"")
        for message in read_all(kafka, catalogue.delivery_status.name)
    ]


def statuses_by_delivery(
    kafka: KafkaSettings, catalogue: Catalogue
) -> dict[str, list[dict[str, Any]]]:
    """Status events grouped by delivery id, in the order each delivery reported them."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for event in sorted(statuses(kafka, catalogue), key=lambda e: (e["attempt"], e["occurred_at"])):
        grouped.setdefault(event["delivery_id"], []).append(event)
    return grouped


def wait_for_statuses(
    kafka: KafkaSettings,
    catalogue: Catalogue,
    expected: dict[str, str],
    timeout: float = 60.0,
) -> dict[str, list[dict[str, Any]]]:
    """Wait until every delivery in ``expected`` reported its final status (id → status)."""

    def reached() -> dict[str, list[dict[str, Any]]] | None:
        try:
            grouped = statuses_by_delivery(kafka, catalogue)
        except KafkaException as exc:
            # Fresh topics on a busy shared broker may briefly lack a leader; poll again.
            if not exc.args[0].retriable() and exc.args[0].code() not in _TRANSIENT:
                raise
            return None
        done = all(
            any(event["status"] == status for event in grouped.get(delivery, []))
            for delivery, status in expected.items()
        )
        return grouped if done else None

    return wait_for(reached, timeout, f"statuses {expected}", interval=0.5)


def dead_letters(kafka: KafkaSettings, topic: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """The records of a dead-letter (or retry) topic: (decoded request, headers)."""
    out = []
    for message in read_all(kafka, topic):
        out.append((_request_of(message), headers_dict(message)))
    return out


def _request_of(message: Message) -> dict[str, Any]:
    return decode(message.value() or b"", "herald.DeliveryRequest")


def herald_dlq(kafka: KafkaSettings, *args: str) -> subprocess.CompletedProcess[str]:
    """``herald dlq <args>`` as an operator runs it, bound to this test's topics."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "herald.cli.main", "dlq", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
