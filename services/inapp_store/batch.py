"""What one consumed batch means for the store: rows to write and records to produce.

:func:`plan_batch` is pure (no broker, no database): it decodes each message with its topic's
value schema, validates it, and turns it into rows (:class:`~services.inapp_store.store.BatchRows`)
plus the records to produce once the rows are committed:

- ``herald.notifications.v1`` → an inbox row.
- ``herald.deliveries.inapp.v1`` → the inbox row (if the notification has not arrived yet),
  the in-app delivery ``delivered`` with its attempt row, and the same ``delivered`` status
  event for ``herald.delivery-status.v1``, so every delivery's outcome is on the status topic.
- ``herald.delivery-status.v1`` → the delivery row (status precedence applied) and an attempt
  row; except this service's own ``delivered`` events (header ``x-written-by: inapp_store``),
  whose rows it wrote with the delivery: skipped without being decoded.

An undecodable or invalid record (or an in-app delivery whose ``x-*`` headers cannot be read:
``headers.invalid``) goes to its topic's DLQ when the catalogue gives it one
(the in-app deliveries topic); the notifications and status topics have none, so such a record
is reported (logged and counted by the service) and skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import Message

from herald.errors import ProcessingError
from herald.headers import H_WRITTEN_BY, HEADERS_INVALID, header_problems
from herald.observability import published_at
from herald.sender import attempt_of
from herald.serde import SerdeError, decode
from herald.status import status_event, status_outgoing
from herald.streaming import Outgoing, failure_record
from schemas import Catalogue, TopicSpec, UnknownTopicError
from services.inapp_store.store import (
    BatchRows,
    InvalidRecord,
    check_delivery_request,
    inbox_row_from_request,
    notification_row,
    status_rows,
)

#: The channel whose deliveries this service completes itself.
INAPP = "inapp"


@dataclass(frozen=True)
class InvalidMessage:
    """A consumed record that was not stored, and why."""

    topic: str
    partition: int
    offset: int
    error: ProcessingError
    #: Where it was sent instead (the topic's DLQ), or None when it was skipped.
    sent_to: str | None


@dataclass
class BatchPlan:
    """A batch's rows, the records to produce after they are committed, and what was refused."""

    rows: BatchRows = field(default_factory=BatchRows)
    outgoing: list[Outgoing] = field(default_factory=list)
    invalid: list[InvalidMessage] = field(default_factory=list)
    #: In-app deliveries this batch completes.
    delivered: int = 0
    #: When the events of those deliveries were published (``x-published-at``, where known).
    published: list[float] = field(default_factory=list)
    #: This service's own status events read back (their rows were written with them).
    echoes: int = 0
    #: Consecutive invalid records at the end of the batch (including those carried in).
    invalid_streak: int = 0
    #: The longest run of consecutive invalid records seen (including those carried in).
    longest_invalid_run: int = 0


def truncate_to_millis(moment: datetime) -> datetime:
    """``moment`` at Avro ``timestamp-millis`` precision.

    The in-app ``delivered`` event is written to PostgreSQL and to the status topic; when it
    comes back from the topic it must carry exactly the time already stored, or the status
    precedence's time tie-break would see two different events.
    """
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _decode(message: Message, spec: TopicSpec) -> dict[str, Any]:
    value = message.value()
    try:
        # Reading with the topic's own schema also refuses a record of another type that
        # landed on the wrong topic (IncompatibleSchemaError).
        return decode(value if value is not None else b"", spec.value_schema)
    except SerdeError as exc:
        raise InvalidRecord(str(exc), error_class=f"serde.{type(exc).__name__}") from exc


def _check_headers(message: Message) -> None:
    """An in-app delivery's ``x-attempt`` goes into its status: unreadable ``x-*`` headers make
    the record poison (the other two topics' records carry none that this service reads)."""
    problems = header_problems(message.headers())
    if problems:
        raise InvalidRecord("unreadable header " + "; ".join(problems), error_class=HEADERS_INVALID)


def plan_batch(
    messages: Sequence[Message],
    catalogue: Catalogue,
    *,
    now: datetime,
    invalid_streak: int = 0,
) -> BatchPlan:
    """Turn consumed messages into rows and records to produce; see the module docstring.

    ``now`` (timezone-aware) is when the batch's in-app deliveries count as delivered.
    ``invalid_streak`` carries the count of consecutive invalid records from earlier batches.
    """
    delivered_at = truncate_to_millis(now)
    plan = BatchPlan(invalid_streak=invalid_streak, longest_invalid_run=invalid_streak)
    notifications = catalogue.notifications.name
    inapp = catalogue.for_channel(INAPP)
    statuses = catalogue.delivery_status.name
    for message in messages:
        topic = message.topic() or ""
        try:
            if topic == notifications:
                plan.rows.add_notification(
                    notification_row(_decode(message, catalogue.notifications))
                )
            elif topic == statuses:
                if _is_echo(message):
                    plan.echoes += 1
                    continue
                plan.rows.add_status(*status_rows(_decode(message, catalogue.delivery_status)))
            elif topic == inapp.name:
                _check_headers(message)
                request = _decode(message, inapp)
                plan.outgoing.append(
                    _deliver_inapp(plan.rows, request, catalogue, attempt_of(message), delivered_at)
                )
                plan.delivered += 1
                when = published_at(message.headers())
                if when is not None:
                    plan.published.append(when)
            else:
                raise InvalidRecord(
                    f"inapp_store does not read topic {topic!r}", error_class="record.unknown_topic"
                )
        except ProcessingError as error:
            _refuse(plan, message, error, catalogue)
            plan.invalid_streak += 1
            plan.longest_invalid_run = max(plan.longest_invalid_run, plan.invalid_streak)
        else:
            plan.invalid_streak = 0
    return plan


def _deliver_inapp(
    rows: BatchRows,
    request: Mapping[str, Any],
    catalogue: Catalogue,
    attempt: int,
    delivered_at: datetime,
) -> Outgoing:
    """An in-app delivery is done once its inbox row exists: add that row (if the notification
    has not supplied it), the ``delivered`` state, and return the status record to produce."""
    check_delivery_request(request, INAPP)
    event = status_event(request, "delivered", attempt=attempt, now=delivered_at)
    delivery, attempt_row = status_rows(event)
    rows.add_notification(inbox_row_from_request(request), from_request=True)
    rows.add_status(delivery, attempt_row)
    outgoing = status_outgoing(catalogue, event)
    outgoing.headers.append(ECHO_HEADER)
    return outgoing


#: Marks the status events this service writes (and reads back) itself.
ECHO_HEADER: tuple[str, bytes] = (H_WRITTEN_BY, b"inapp_store")


def _is_echo(message: Message) -> bool:
    headers = message.headers()  # a list of (name, bytes) from confluent-kafka
    return isinstance(headers, list) and ECHO_HEADER in headers


def _refuse(
    plan: BatchPlan, message: Message, error: ProcessingError, catalogue: Catalogue
) -> None:
    topic = message.topic() or ""
    try:
        spec: TopicSpec | None = catalogue.by_name(topic)
    except UnknownTopicError:
        spec = None
    sent_to = None
    if spec is not None and spec.dlq:
        tiers = spec.retry_topics()
        record = failure_record(
            message,
            error,
            retry_topics=[tier.topic for tier in tiers],
            retry_delays_ms=[tier.delay_ms for tier in tiers],
            dlq_topic=spec.dlq_name,
        )
        plan.outgoing.append(record)
        sent_to = record.topic
    plan.invalid.append(
        InvalidMessage(topic, message.partition() or 0, message.offset() or 0, error, sent_to)
    )
