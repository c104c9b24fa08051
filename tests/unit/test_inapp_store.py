"""inapp_store without a broker or a database: row building, status precedence, in-batch
dedupe, batch planning (decode, validate, DLQ), and the adapter's retry and invalid limits."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg.errors
import pytest
from confluent_kafka import Message

from herald import identity
from herald.db.models import DELIVERY_STATUSES
from herald.headers import H_WRITTEN_BY
from herald.metrics import HEALTH
from herald.serde import decode, encode
from herald.settings import Settings
from herald.streaming import H_ERROR_CLASS, H_ORIGINAL_TOPIC
from schemas import CATALOGUE
from services.inapp_store import service as service_module
from services.inapp_store.batch import plan_batch, truncate_to_millis
from services.inapp_store.service import (
    DatabaseUnavailableError,
    InappStore,
    TooManyInvalidRecordsError,
    is_data_error,
)
from services.inapp_store.settings import InappStoreSettings
from services.inapp_store.store import (
    NON_SUCCESS_CEILING,
    STATUS_ORDER,
    STATUS_RANK,
    SUCCESS_STATUSES,
    BatchRows,
    DeliveryRow,
    InvalidRecord,
    TableCounts,
    inbox_row_from_request,
    notification_row,
    status_rows,
)

CATALOGUE_T = CATALOGUE.with_prefix("unit.")
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def notification(user: str = "user-1", event: str = "evt-1", **changes: Any) -> dict[str, Any]:
    record = {
        "notification_id": identity.notification_id(event, user),
        "event_id": event,
        "user_id": user,
        "event_type": "comment.created",
        "title": "New comment",
        "message": "Ada commented on your post.",
        "channels": ["inapp", "email"],
        "metadata": {"post": "p-1"},
        "created_at": T0,
    }
    record.update(changes)
    return record


def request(user: str = "user-1", event: str = "evt-1", channel: str = "inapp", **changes: Any):
    notification_id = identity.notification_id(event, user)
    record = {
        "delivery_id": identity.delivery_id(notification_id, channel),
        "notification_id": notification_id,
        "event_id": event,
        "user_id": user,
        "event_type": "comment.created",
        "channel": channel,
        "destination": user,
        "subject": "New comment",
        "body_text": "Ada commented on your post.",
        "body_html": None,
        "locale": "en",
        "created_at": T0,
    }
    record.update(changes)
    return record


def status(
    state: str,
    attempt: int = 1,
    at: datetime = T0,
    *,
    user: str = "user-1",
    event: str = "evt-1",
    channel: str = "email",
    **changes: Any,
) -> dict[str, Any]:
    notification_id = identity.notification_id(event, user)
    record = {
        "delivery_id": identity.delivery_id(notification_id, channel),
        "notification_id": notification_id,
        "user_id": user,
        "channel": channel,
        "status": state,
        "attempt": attempt,
        "error_class": None,
        "error_message": None,
        "provider_message_id": None,
        "occurred_at": at,
    }
    record.update(changes)
    return record


def row(state: str, attempt: int = 1, at: datetime = T0) -> DeliveryRow:
    return status_rows(status(state, attempt, at))[0]


def message(topic: str, value: bytes | None, offset: int = 0, **headers: str) -> Message:
    return Message(
        topic=topic,
        partition=0,
        offset=offset,
        key=b"k",
        value=value,
        headers=[(name.replace("_", "-"), v.encode()) for name, v in headers.items()],
    )


def notification_message(record: dict[str, Any], offset: int = 0) -> Message:
    return message(CATALOGUE_T.notifications.name, encode("herald.Notification", record), offset)


def status_message(record: dict[str, Any], offset: int = 0) -> Message:
    value = encode("herald.DeliveryStatus", record)
    return message(CATALOGUE_T.delivery_status.name, value, offset)


def inapp_message(record: dict[str, Any], offset: int = 0, **headers: str) -> Message:
    value = encode("herald.DeliveryRequest", record)
    return message(CATALOGUE_T.for_channel("inapp").name, value, offset, **headers)


# --- status precedence -----------------------------------------------------------------------


def test_status_order_covers_exactly_the_database_statuses() -> None:
    assert sorted(STATUS_ORDER) == sorted(DELIVERY_STATUSES)
    assert all(STATUS_RANK[s] > NON_SUCCESS_CEILING for s in SUCCESS_STATUSES)
    assert all(STATUS_RANK[s] <= NON_SUCCESS_CEILING for s in set(STATUS_ORDER) - SUCCESS_STATUSES)


LATER = T0 + timedelta(seconds=5)


@pytest.mark.parametrize(
    ("new", "old", "outranks"),
    [
        # The forward path of one attempt.
        (("sent", 1), ("pending", 1), True),
        (("delivered", 1), ("sent", 1), True),
        (("retrying", 1), ("pending", 1), True),
        (("failed", 1), ("retrying", 1), True),
        # A late pending never overwrites what happened since.
        (("pending", 1), ("sent", 1), False),
        (("pending", 1), ("delivered", 1), False),
        (("pending", 1), ("failed", 1), False),
        (("pending", 1), ("retrying", 2), False),
        (("sent", 1), ("delivered", 1), False),
        # skipped/failed/dead are final for their attempt; dead above failed (deterministic).
        (("retrying", 1), ("failed", 1), False),
        (("retrying", 1), ("skipped", 1), False),
        (("dead", 3), ("failed", 3), True),
        (("failed", 3), ("dead", 3), False),
        # A later attempt supersedes: a retry after a failure, a DLQ replay after failed/dead.
        (("retrying", 2), ("retrying", 1), True),
        (("retrying", 2), ("failed", 1), True),
        (("pending", 4), ("dead", 3), True),
        (("sent", 4), ("dead", 3), True),
        (("failed", 1), ("retrying", 2), False),
        # Success is never undone, whatever the attempts; delivered beats sent.
        (("failed", 3), ("sent", 1), False),
        (("retrying", 2), ("delivered", 1), False),
        (("sent", 1), ("dead", 3), True),
        (("sent", 2), ("sent", 1), True),
        (("sent", 2), ("delivered", 1), False),
        (("delivered", 1), ("sent", 2), True),
    ],
)
def test_precedence_decisions(new: tuple[str, int], old: tuple[str, int], outranks: bool) -> None:
    # Times are equal or later for `new`, so only (status, attempt) decide.
    assert row(*new, at=LATER).outranks(row(*old)) is outranks


def test_same_status_and_attempt_keeps_the_earliest_event() -> None:
    first, replay = row("sent", 1, T0), row("sent", 1, LATER)
    assert not replay.outranks(first)
    assert first.outranks(replay)
    assert not first.outranks(row("sent", 1, T0))  # an exact duplicate changes nothing


def test_the_winner_does_not_depend_on_arrival_order() -> None:
    events = [
        row("pending", 1, T0),
        row("retrying", 1, T0 + timedelta(seconds=1)),
        row("dead", 3, T0 + timedelta(seconds=9)),
        row("sent", 4, T0 + timedelta(seconds=20)),
        row("sent", 4, T0 + timedelta(seconds=21)),  # a re-report of the same send
        row("failed", 5, T0 + timedelta(seconds=30)),
    ]
    winners = set()
    for order in itertools.permutations(events):
        rows = BatchRows()
        for event in order:
            rows.add_status(event, status_rows(status(event.status, event.attempt))[1])
        [winner] = rows.delivery_rows()
        winners.add(winner)
    assert winners == {events[3]}


# --- row building ----------------------------------------------------------------------------


def test_notification_row() -> None:
    record = notification(event="not-a-uuid", title="Hi\x00there", metadata={"k\x00": "v"})
    inbox = notification_row(record)
    assert inbox.id == record["notification_id"]
    # Event ids need not be UUIDs: they are mapped the way identity.notification_id maps them.
    assert inbox.event_id == str(identity.event_uuid("not-a-uuid"))
    assert inbox.title == "Hi\ufffdthere"  # PostgreSQL text cannot hold NUL
    assert json.loads(inbox.metadata) == {"k\ufffd": "v"}
    assert inbox.created_at == T0


def test_inbox_row_from_request_uses_the_request_fields() -> None:
    inbox = inbox_row_from_request(request(subject="Title", body_text="Body"))
    assert (inbox.title, inbox.message, inbox.metadata) == ("Title", "Body", "{}")
    assert inbox.id == identity.notification_id("evt-1", "user-1")


def test_status_rows() -> None:
    event = status("sent", 3, provider_message_id="<abc@herald>")
    delivery, attempt = status_rows(event)
    assert delivery.id == event["delivery_id"]
    assert (delivery.retry_count, delivery.delivered_at, delivery.attempt) == (2, T0, 3)
    assert delivery.provider_message_id == "<abc@herald>"
    assert (attempt.delivery_id, attempt.attempt, attempt.status) == (delivery.id, 3, "sent")
    failed, _ = status_rows(status("failed", 1, error_class="smtp.5xx", error_message="no"))
    assert (failed.delivered_at, failed.error_class, failed.error_message) == (
        None,
        "smtp.5xx",
        "no",
    )
    # Attempt 0 would make retry_count negative (a CHECK violation): read as attempt 1.
    assert status_rows(status("pending", 0))[0].retry_count == 0


@pytest.mark.parametrize(
    ("changes", "error_class"),
    [
        ({"notification_id": "nope"}, "record.invalid_uuid"),
        ({"delivery_id": "nope"}, "record.invalid_uuid"),
        ({"channel": "pigeon"}, "record.unknown_channel"),
        ({"delivery_id": str(uuid.uuid4())}, "record.identity_mismatch"),
    ],
)
def test_invalid_status_events_are_refused(changes: dict[str, Any], error_class: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        status_rows(status("sent", **changes))
    assert caught.value.error_class == error_class


# --- in-batch dedupe -------------------------------------------------------------------------


def test_one_row_per_key_in_a_batch() -> None:
    rows = BatchRows()
    for event in [status("pending"), status("sent", at=LATER), status("pending"), status("sent")]:
        rows.add_status(*status_rows(event))
    [delivery] = rows.delivery_rows()
    assert (delivery.status, delivery.occurred_at) == ("sent", T0)  # the earliest sent
    assert [(a.attempt, a.status) for a in rows.attempt_rows()] == [(1, "pending"), (1, "sent")]


def test_a_notification_record_wins_over_a_row_implied_by_a_request() -> None:
    for notification_first in (True, False):
        rows = BatchRows()
        real = notification_row(notification(title="From the router"))
        implied = inbox_row_from_request(request(subject="From the request"))
        if notification_first:
            rows.add_notification(real)
            rows.add_notification(implied, from_request=True)
        else:
            rows.add_notification(implied, from_request=True)
            rows.add_notification(real)
        assert rows.notification_rows() == [real]
    rows = BatchRows()
    rows.add_notification(real)
    rows.add_notification(notification_row(notification(title="A duplicate, edited")))
    assert rows.notification_rows() == [real]  # first one stays, like ON CONFLICT DO NOTHING


def test_rows_are_sorted_by_key() -> None:
    rows = BatchRows()
    for n in range(20):
        rows.add_notification(notification_row(notification(user=f"user-{n}")))
        rows.add_status(*status_rows(status("sent", user=f"user-{n}")))
    ids = [r.id for r in rows.notification_rows()]
    keys = [(r.notification_id, r.channel) for r in rows.delivery_rows()]
    assert ids == sorted(ids) and keys == sorted(keys)


# --- batch planning --------------------------------------------------------------------------


def test_plan_a_batch_of_every_topic() -> None:
    now = datetime(2024, 5, 2, 8, 0, 0, 123456, tzinfo=UTC)
    messages = [
        notification_message(notification(user="u1")),
        inapp_message(request(user="u1"), offset=1),
        inapp_message(request(user="u2"), offset=2, x_attempt="3"),  # no notification yet
        status_message(status("sent", user="u1"), offset=3),
    ]
    plan = plan_batch(messages, CATALOGUE_T, now=now)
    assert plan.invalid == [] and plan.delivered == 2 and plan.invalid_streak == 0
    inbox = {r.user_id: r for r in plan.rows.notification_rows()}
    assert json.loads(inbox["u1"].metadata) == {"post": "p-1"}  # the notification's row
    assert inbox["u2"].metadata == "{}"  # implied by the request
    deliveries = {(r.user_id, r.channel): r for r in plan.rows.delivery_rows()}
    assert deliveries["u1", "email"].status == "sent"
    inapp = deliveries["u2", "inapp"]
    assert (inapp.status, inapp.attempt, inapp.occurred_at) == (
        "delivered",
        3,
        truncate_to_millis(now),
    )
    # Every in-app delivery's outcome goes to the status topic, keyed by notification.
    assert {o.topic for o in plan.outgoing} == {CATALOGUE_T.delivery_status.name}
    events = [decode(o.value or b"") for o in plan.outgoing]
    assert {(e["user_id"], e["status"], e["channel"]) for e in events} == {
        ("u1", "delivered", "inapp"),
        ("u2", "delivered", "inapp"),
    }
    assert [o.key for o in plan.outgoing] == [e["notification_id"] for e in events]


def test_the_echoed_delivered_status_changes_nothing() -> None:
    # The delivered event comes back from the status topic; it must equal the stored row.
    plan = plan_batch([inapp_message(request())], CATALOGUE_T, now=datetime.now(UTC))
    [stored] = plan.rows.delivery_rows()
    echo, _ = status_rows(decode(plan.outgoing[0].value or b""))
    assert echo == stored
    assert not echo.outranks(stored)


def test_its_own_echo_is_skipped_without_decoding_and_other_statuses_are_not() -> None:
    plan = plan_batch([inapp_message(request())], CATALOGUE_T, now=datetime.now(UTC))
    [outgoing] = plan.outgoing
    assert (H_WRITTEN_BY, b"inapp_store") in outgoing.headers
    status_topic = CATALOGUE_T.delivery_status.name
    echo = message(status_topic, outgoing.value, offset=5, x_written_by="inapp_store")
    garbage_echo = message(status_topic, b"never decoded", offset=6, x_written_by="inapp_store")
    other = message(status_topic, outgoing.value, offset=7, x_written_by="email_sender")
    plan = plan_batch([echo, garbage_echo, other], CATALOGUE_T, now=datetime.now(UTC))
    assert plan.echoes == 2 and plan.invalid == []
    assert len(plan.rows.delivery_rows()) == 1  # only the one another service wrote


def test_undecodable_records_go_to_the_dlq_or_are_skipped() -> None:
    inapp_topic = CATALOGUE_T.for_channel("inapp")
    messages = [
        message(CATALOGUE_T.notifications.name, b"garbage", offset=7),
        message(inapp_topic.name, b"\xc3\x01garbage!", offset=8),
        message(CATALOGUE_T.delivery_status.name, None, offset=9),
        # A valid record of the wrong type for its topic.
        message(CATALOGUE_T.delivery_status.name, encode("herald.Notification", notification())),
        inapp_message(request(channel="email")),
    ]
    plan = plan_batch(messages, CATALOGUE_T, now=T0)
    assert len(plan.rows) == 0 and plan.delivered == 0
    assert [(i.offset, i.error.error_class, i.sent_to) for i in plan.invalid[:3]] == [
        (7, "serde.NotAvroError", CATALOGUE_T.notifications.dlq_name),
        (8, "serde.UnknownSchemaError", inapp_topic.dlq_name),
        (9, "serde.NotAvroError", CATALOGUE_T.delivery_status.dlq_name),
    ]
    assert plan.invalid[3].error.error_class == "serde.IncompatibleSchemaError"
    assert plan.invalid[4].error.error_class == "record.wrong_channel"
    assert plan.invalid_streak == plan.longest_invalid_run == 5
    dead = plan.outgoing
    assert [o.topic for o in dead] == [
        CATALOGUE_T.notifications.dlq_name,
        inapp_topic.dlq_name,
        CATALOGUE_T.delivery_status.dlq_name,
        CATALOGUE_T.delivery_status.dlq_name,
        inapp_topic.dlq_name,
    ]
    first = dict(dead[1].headers)
    assert first[H_ERROR_CLASS] == "serde.UnknownSchemaError"
    assert first[H_ORIGINAL_TOPIC] == inapp_topic.name
    assert dead[1].value == b"\xc3\x01garbage!"  # the original bytes, for a later replay


def test_over_long_ids_and_metadata_are_refused_before_the_database() -> None:
    """A 3,000-character user id written straight to a topic used to reach PostgreSQL, whose
    inbox index refuses it (or, compressed, stores it); it is refused as a record instead."""
    long_user = "u" * 3000
    inapp_topic = CATALOGUE_T.for_channel("inapp")
    messages = [
        inapp_message(request(user=long_user), offset=1),
        inapp_message(request(user="user-2"), offset=2),
        notification_message(notification(user=long_user), offset=3),
        notification_message(notification(event_type="t" * 256), offset=4),
        status_message(status("sent", user=long_user), offset=5),
        notification_message(notification(metadata={"k": "v" * 1025}), offset=6),
    ]
    plan = plan_batch(messages, CATALOGUE_T, now=T0)
    assert [(i.offset, i.error.error_class) for i in plan.invalid] == [
        (1, "record.invalid_id"),
        (3, "record.invalid_id"),
        (4, "record.invalid_id"),
        (5, "record.invalid_id"),
        (6, "record.too_long"),
    ]
    assert plan.invalid[0].sent_to == inapp_topic.dlq_name
    assert "user_id 'uuuu" in plan.invalid[0].error.message
    assert "has 3000 characters" in plan.invalid[0].error.message
    assert plan.delivered == 1
    assert [r.user_id for r in plan.rows.notification_rows()] == ["user-2"]


def test_invalid_streak_spans_batches_and_resets_on_a_valid_record() -> None:
    garbage = message(CATALOGUE_T.notifications.name, b"x")
    good = notification_message(notification())
    plan = plan_batch([garbage, garbage, good, garbage], CATALOGUE_T, now=T0, invalid_streak=4)
    assert (plan.longest_invalid_run, plan.invalid_streak) == (6, 1)


# --- the adapter: database retries and the invalid limit --------------------------------------


class FakeConnection:
    def transaction(self) -> Any:
        from contextlib import nullcontext

        return nullcontext()


class FlakyDatabase:
    """Loses the connection ``failures`` times, then works."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.connects = 0
        self.closes = 0

    def connection(self) -> FakeConnection:
        self.connects += 1
        if self.connects <= self.failures:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return FakeConnection()

    def close(self) -> None:
        self.closes += 1


MakeStore = Callable[..., InappStore]


@pytest.fixture
def make_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeStore]:
    """Stores whose database writes are faked; their Kafka clients are created, never used."""
    monkeypatch.setattr(service_module, "RETRY_INITIAL_SECONDS", 0.01)
    monkeypatch.setattr(
        service_module, "write_rows", lambda conn, rows: {"notification": TableCounts(1, 1)}
    )
    made: list[InappStore] = []

    def make(**config: Any) -> InappStore:
        store = InappStore(Settings(), InappStoreSettings(metrics_port=0, **config), CATALOGUE_T)
        made.append(store)
        return store

    yield make
    for store in made:
        store.loop.consumer.close()


def test_a_lost_connection_is_retried_with_the_same_batch(make_store: MakeStore) -> None:
    store = make_store(db_retry_seconds=5)
    store.db = FlakyDatabase(failures=2)  # type: ignore[assignment]
    out = store.handle([inapp_message(request())])
    assert store.db.connects == 3 and store.db.closes == 2  # type: ignore[attr-defined]
    assert [o.topic for o in out] == [CATALOGUE_T.delivery_status.name]


def test_past_the_retry_budget_it_reports_degraded_and_keeps_trying(
    make_store: MakeStore,
) -> None:
    store = make_store(db_retry_seconds=0)
    flaky = FlakyDatabase(failures=5)
    seen: list[dict[str, str]] = []

    def connection() -> FakeConnection:
        seen.append(HEALTH.problems())
        return FlakyDatabase.connection(flaky)

    flaky.connection = connection  # type: ignore[method-assign]
    store.db = flaky  # type: ignore[assignment]
    out = store.handle([notification_message(notification())])
    assert out == [] and store.db.connects == 6  # type: ignore[attr-defined]
    assert "inapp_store/database" in seen[-1]  # degraded while it waited
    assert "inapp_store/database" not in HEALTH.problems()  # and recovered


def test_data_errors_are_not_lost_connections() -> None:
    limit = psycopg.errors.ProgramLimitExceeded("index row size 3000 exceeds btree maximum")
    assert isinstance(limit, psycopg.OperationalError)  # why the SQLSTATE must decide
    assert is_data_error(limit)
    assert is_data_error(psycopg.errors.StringDataRightTruncation("value too long"))
    assert not is_data_error(psycopg.errors.AdminShutdown("terminating connection"))
    assert not is_data_error(psycopg.OperationalError("server closed the connection"))
    assert not is_data_error(psycopg.errors.DeadlockDetected("deadlock"))


def test_stopping_ends_the_retries(make_store: MakeStore) -> None:
    store = make_store(db_retry_seconds=60)
    store.db = FlakyDatabase(failures=1000)  # type: ignore[assignment]
    store.loop.stop()
    with pytest.raises(DatabaseUnavailableError):
        store.handle([notification_message(notification())])
    assert store.db.connects == 1  # type: ignore[attr-defined]


def test_a_stream_of_garbage_stops_the_service(make_store: MakeStore) -> None:
    store = make_store(max_consecutive_invalid=3)
    garbage = message(CATALOGUE_T.notifications.name, b"x")
    store.handle([garbage, garbage])
    with pytest.raises(TooManyInvalidRecordsError):
        store.handle([garbage])
    unlimited = make_store(max_consecutive_invalid=0)
    parked = unlimited.handle([garbage] * 5)
    assert [o.topic for o in parked] == [CATALOGUE_T.notifications.dlq_name] * 5


def test_ids_are_canonical_so_two_spellings_are_one_row() -> None:
    lower = status("sent")
    upper = status("pending", **{k: lower[k].upper() for k in ("notification_id", "delivery_id")})
    rows = BatchRows()
    rows.add_status(*status_rows(upper))
    rows.add_status(*status_rows(lower))
    [delivery] = rows.delivery_rows()
    assert (delivery.id, delivery.status) == (lower["delivery_id"], "sent")
    assert len(rows.attempt_rows()) == 2
