"""inapp_store as a real process on the real stack: records produced to Kafka, rows polled
from this test's own PostgreSQL schema, statuses read back from the test's own topics."""

from __future__ import annotations

import itertools
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from herald import identity
from herald.db import search_path_options
from herald.devstack.process import free_port
from herald.serde import encode
from herald.settings import DatabaseSettings, KafkaSettings
from herald.streaming import H_ERROR_CLASS, H_ORIGINAL_TOPIC, headers_dict, producer_config
from schemas import Catalogue
from services.inapp_store.service import application_name
from services.inapp_store.settings import SERVICE
from services.inapp_store.store import STATUS_ORDER, DeliveryRow, outranks_sql
from tests.integration.delivery_util import delivery_request, statuses, wait_for
from tests.integration.kafka_util import committed_to_end, read_all
from tests.integration.services import ServiceProcess, service_env

pytestmark = pytest.mark.integration

MODULE = "services.inapp_store"
_TRANSIENT = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
}


def millis(moment: datetime) -> datetime:
    """``moment`` at the precision timestamp-millis keeps, so read-backs compare equal."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def start(
    run_service: Callable[..., ServiceProcess],
    kafka: KafkaSettings,
    database: DatabaseSettings,
    **extra: str,
) -> ServiceProcess:
    env = service_env(kafka, database, INAPP_STORE_METRICS_PORT="0", **extra)
    return run_service(MODULE, env)


def query(
    database: DatabaseSettings, sql: str, params: Iterable[Any] = ()
) -> list[tuple[Any, ...]]:
    with psycopg.connect(
        database.libpq_url, options=search_path_options(database.database_schema)
    ) as conn:
        return conn.execute(sql, tuple(params)).fetchall()


def count(database: DatabaseSettings, table: str) -> int:
    return int(query(database, f"SELECT count(*) FROM {table}")[0][0])


def snapshot(database: DatabaseSettings) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three tables the store writes (updated_at included)."""
    return {
        "notification": query(database, "SELECT * FROM notification ORDER BY id"),
        "notification_delivery": query(database, "SELECT * FROM notification_delivery ORDER BY id"),
        "delivery_attempt": query(
            database,
            "SELECT delivery_id, attempt, status, error_class, error_message, occurred_at "
            "FROM delivery_attempt ORDER BY delivery_id, attempt, status",
        ),
    }


def notification(user_id: str | None = None, **changes: Any) -> dict[str, Any]:
    """A ``herald.Notification`` with fresh, consistent ids."""
    event_id = str(uuid.uuid4())
    user_id = user_id or f"u-{uuid.uuid4().hex[:8]}"
    return {
        "notification_id": identity.notification_id(event_id, user_id),
        "event_id": event_id,
        "user_id": user_id,
        "event_type": "test.inapp",
        "title": f"Hello {user_id}",
        "message": f"A message for {user_id}",
        "channels": ["inapp", "email"],
        "metadata": {"source": "test", "user": user_id},
        "created_at": millis(datetime.now(UTC)),
        **changes,
    }


def inapp_request(note: dict[str, Any]) -> dict[str, Any]:
    """The in-app delivery request of a notification (same ids, as the router makes them)."""
    return delivery_request(
        "inapp",
        note["user_id"],
        user_id=note["user_id"],
        event_id=note["event_id"],
        notification_id=note["notification_id"],
        delivery_id=identity.delivery_id(note["notification_id"], "inapp"),
        event_type=note["event_type"],
        subject=note["title"],
        body_text=note["message"],
    )


def status(
    note: dict[str, Any], channel: str, state: str, attempt: int = 1, **changes: Any
) -> dict[str, Any]:
    """A ``herald.DeliveryStatus`` for a notification's delivery on ``channel``."""
    return {
        "delivery_id": identity.delivery_id(note["notification_id"], channel),
        "notification_id": note["notification_id"],
        "user_id": note["user_id"],
        "channel": channel,
        "status": state,
        "attempt": attempt,
        "error_class": None,
        "error_message": None,
        "provider_message_id": None,
        "occurred_at": millis(datetime.now(UTC)),
        **changes,
    }


class Publisher:
    """Produces records to this test's topics, keyed as the design says."""

    def __init__(self, kafka: KafkaSettings, topics: Catalogue) -> None:
        self.topics = topics
        self.producer = Producer(producer_config(kafka))
        self.sent: list[tuple[str, str, bytes]] = []

    def raw(self, topic: str, key: str, value: bytes) -> None:
        self.producer.produce(topic, key=key, value=value)
        self.sent.append((topic, key, value))

    def notification(self, record: dict[str, Any]) -> None:
        value = encode("herald.Notification", record)
        self.raw(self.topics.notifications.name, record["user_id"], value)

    def request(self, record: dict[str, Any]) -> None:
        value = encode("herald.DeliveryRequest", record)
        self.raw(self.topics.for_channel("inapp").name, record["user_id"], value)

    def status(self, record: dict[str, Any]) -> None:
        value = encode("herald.DeliveryStatus", record)
        self.raw(self.topics.delivery_status.name, record["notification_id"], value)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def input_topics(topics: Catalogue) -> list[str]:
    return [
        topics.notifications.name,
        topics.for_channel("inapp").name,
        topics.delivery_status.name,
    ]


def consumed_everything(kafka: KafkaSettings, topics: Catalogue) -> bool:
    """Whether the store's group has committed every record now on its three topics."""
    return committed_to_end(kafka, kafka.topic_prefix + SERVICE, input_topics(topics))


def wait_until_consumed(kafka: KafkaSettings, topics: Catalogue, timeout: float = 60) -> None:
    """Wait until the store has committed every record on its topics."""

    def done() -> bool:
        try:
            return consumed_everything(kafka, topics)
        except KafkaException as exc:
            # Fresh topics on the shared broker may briefly lack a leader: ask again.
            error = exc.args[0]
            if error.retriable() or error.code() in _TRANSIENT:
                return False
            raise

    wait_for(done, timeout, "the store to consume everything")


def delivery(database: DatabaseSettings, note: dict[str, Any], channel: str) -> dict[str, Any]:
    rows = query(
        database,
        "SELECT status, retry_count, attempted_at, delivered_at, error_class, error_message, "
        "provider_message_id, id FROM notification_delivery "
        "WHERE notification_id = %s AND channel = %s",
        (note["notification_id"], channel),
    )
    if not rows:
        return {}
    names = "status retry_count attempted_at delivered_at error_class error_message provider id"
    return dict(zip(names.split(), rows[0], strict=True))


def history(
    database: DatabaseSettings, note: dict[str, Any], channel: str
) -> list[tuple[int, str]]:
    rows = query(
        database,
        "SELECT attempt, status FROM delivery_attempt WHERE delivery_id = %s "
        "ORDER BY attempt, occurred_at, status",
        (identity.delivery_id(note["notification_id"], channel),),
    )
    return [(attempt, state) for attempt, state in rows]


def dead_letters(kafka: KafkaSettings, topic: str) -> list[tuple[bytes, dict[str, str]]]:
    """The raw records of a dead-letter topic, with their headers."""
    return [(m.value() or b"", headers_dict(m)) for m in read_all(kafka, topic)]


def rows_metadata(database: DatabaseSettings, note: dict[str, Any]) -> Any:
    rows = query(
        database, "SELECT metadata FROM notification WHERE id = %s", (note["notification_id"],)
    )
    return rows[0][0] if rows else None


def metric(text: str, name: str, labels: str) -> float:
    """One sample's value from a Prometheus text exposition."""
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    assert found, f"{name}{{{labels}}} not exposed"
    return float(found.group(1))


# --- tests -----------------------------------------------------------------------------------


def test_inbox_rows_and_inapp_deliveries(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    port = free_port()
    service = run_service(
        MODULE, service_env(kafka_settings, db_settings, INAPP_STORE_METRICS_PORT=str(port))
    )
    both, request_only, notification_only = notification(), notification(), notification()
    publisher = Publisher(kafka_settings, topics)
    # The request first, in an earlier batch than its notification (topics are not ordered).
    publisher.request(inapp_request(both))
    publisher.flush()
    wait_for(lambda: rows_metadata(db_settings, both) == {}, 60, "the row implied by a request")
    publisher.notification(both)
    publisher.request(inapp_request(request_only))
    publisher.notification(notification_only)
    publisher.flush()

    ids = {n["notification_id"] for n in (both, request_only, notification_only)}
    wait_for(lambda: count(db_settings, "notification") == 3, 60, "three inbox rows")
    # The notification, arriving after its request, fills in the metadata.
    wait_for(lambda: rows_metadata(db_settings, both) == both["metadata"], 30, "the metadata")
    rows = {
        str(r[0]): r[1:]
        for r in query(
            db_settings,
            "SELECT id, user_id, title, message, metadata, is_read, created_at FROM notification",
        )
    }
    assert set(rows) == ids
    assert rows[notification_only["notification_id"]] == (
        notification_only["user_id"],
        notification_only["title"],
        notification_only["message"],
        notification_only["metadata"],
        False,
        notification_only["created_at"],
    )
    # Written from the request alone (no notification ever came): title and body from it.
    assert rows[request_only["notification_id"]][1:4] == (
        request_only["title"],
        request_only["message"],
        {},
    )

    wait_for(
        lambda: all(delivery(db_settings, n, "inapp") for n in (both, request_only)),
        30,
        "in-app delivery rows",
    )
    for note in (both, request_only):
        row = delivery(db_settings, note, "inapp")
        assert row["status"] == "delivered" and row["retry_count"] == 0
        assert row["delivered_at"] is not None and row["delivered_at"] == row["attempted_at"]
        assert str(row["id"]) == identity.delivery_id(note["notification_id"], "inapp")
        assert history(db_settings, note, "inapp") == [(1, "delivered")]
    assert delivery(db_settings, notification_only, "inapp") == {}

    # Every in-app delivery's outcome is on the status topic, at the time the row says.
    def delivered_events() -> list[dict[str, Any]]:
        events = [e for e in statuses(kafka_settings, topics) if e["status"] == "delivered"]
        return events if len(events) == 2 else []

    events = wait_for(delivered_events, 30, "two delivered status events")
    assert {e["notification_id"] for e in events} == {
        both["notification_id"],
        request_only["notification_id"],
    }
    for event in events:
        note = both if event["notification_id"] == both["notification_id"] else request_only
        assert event["channel"] == "inapp" and event["attempt"] == 1
        assert event["occurred_at"] == delivery(db_settings, note, "inapp")["delivered_at"]

    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    # Three inserts, plus one update if the request's row came first and got the metadata.
    assert metric(metrics, "herald_inapp_store_rows_written_total", 'table="notification"') >= 3
    assert metric(metrics, "herald_inapp_store_rows_written_total", 'table="delivery_attempt"') == 2
    assert "herald_inapp_store_transaction_seconds_count" in metrics

    # SIGTERM: finish the batch, commit, exit cleanly.
    wait_until_consumed(kafka_settings, topics)
    assert service.stop() == 0
    assert consumed_everything(kafka_settings, topics)


def test_status_precedence_and_attempt_history(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    start(run_service, kafka_settings, db_settings)
    sent, revived, replayed, kept = notification(), notification(), notification(), notification()
    publisher = Publisher(kafka_settings, topics)
    # One key per notification: each delivery's events arrive in this order.
    publisher.status(status(sent, "email", "pending"))
    publisher.status(status(sent, "email", "sent", provider_message_id="<m-1@herald>"))
    publisher.status(status(revived, "sms", "pending"))
    publisher.status(status(revived, "sms", "retrying", error_class="sms.503", error_message="x"))
    publisher.status(status(revived, "sms", "retrying", 2, error_class="sms.503"))
    publisher.status(status(revived, "sms", "dead", 3, error_class="sms.503"))
    publisher.status(status(revived, "sms", "sent", 4, provider_message_id="SM1"))  # replayed
    publisher.status(status(replayed, "email", "failed", error_class="smtp.550"))
    publisher.status(status(replayed, "email", "retrying", 2, error_class="smtp.421"))
    publisher.status(status(kept, "email", "sent"))
    publisher.status(status(kept, "email", "failed", 3, error_class="smtp.550"))
    publisher.flush()
    wait_until_consumed(kafka_settings, topics)

    row = delivery(db_settings, sent, "email")
    assert (row["status"], row["provider"], row["retry_count"]) == ("sent", "<m-1@herald>", 0)
    assert row["delivered_at"] is not None
    row = delivery(db_settings, revived, "sms")
    assert (row["status"], row["retry_count"], row["provider"]) == ("sent", 3, "SM1")
    assert row["error_class"] is None  # the winning event's fields, not a mix
    assert history(db_settings, revived, "sms") == [
        (1, "pending"),
        (1, "retrying"),
        (2, "retrying"),
        (3, "dead"),
        (4, "sent"),
    ]
    row = delivery(db_settings, replayed, "email")
    assert (row["status"], row["retry_count"], row["error_class"]) == ("retrying", 1, "smtp.421")
    assert row["delivered_at"] is None
    row = delivery(db_settings, kept, "email")
    assert (row["status"], row["retry_count"]) == ("sent", 0)
    assert history(db_settings, kept, "email") == [(1, "sent"), (3, "failed")]

    # Late events, in a later batch: pending and retrying after sent (recorded in the history,
    # not in the state), and attempt 1's dead after attempt 2's retrying.
    sent_before = delivery(db_settings, sent, "email")
    publisher.status(status(sent, "email", "pending"))
    publisher.status(status(sent, "email", "retrying"))
    publisher.status(status(replayed, "email", "dead", 1))
    publisher.flush()
    wait_until_consumed(kafka_settings, topics)
    assert delivery(db_settings, sent, "email") == sent_before
    assert history(db_settings, sent, "email") == [(1, "pending"), (1, "sent"), (1, "retrying")]
    assert delivery(db_settings, replayed, "email")["status"] == "retrying"


def test_duplicates_change_nothing(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    start(run_service, kafka_settings, db_settings)
    publisher = Publisher(kafka_settings, topics)
    notes = [notification() for _ in range(20)]
    for note in notes:
        publisher.notification(note)
        publisher.request(inapp_request(note))
        publisher.status(status(note, "email", "pending"))
        publisher.status(status(note, "email", "sent"))
    publisher.flush()
    wait_until_consumed(kafka_settings, topics)
    before = snapshot(db_settings)
    assert [len(before[t]) for t in before] == [20, 40, 60]

    # The same bytes again, twice (a producer retry, a replay after a crash).
    for _ in range(2):
        for topic, key, value in list(publisher.sent):
            publisher.raw(topic, key, value)
    publisher.flush()
    wait_until_consumed(kafka_settings, topics)
    assert snapshot(db_settings) == before  # not even updated_at moved


def test_garbage_does_not_stop_the_stream(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    service = start(run_service, kafka_settings, db_settings)
    publisher = Publisher(kafka_settings, topics)
    note = notification()
    inapp_topic = topics.for_channel("inapp")
    for topic in input_topics(topics):
        publisher.raw(topic, note["user_id"], b"not avro at all")
    # Right type, broken ids: refused before it reaches the database.
    publisher.status(status(note, "email", "sent", delivery_id=str(uuid.uuid4())))
    publisher.notification(note)
    publisher.request(inapp_request(note))
    publisher.status(status(note, "email", "sent"))
    publisher.flush()

    wait_for(lambda: delivery(db_settings, note, "email"), 60, "the valid status row")
    wait_for(lambda: delivery(db_settings, note, "inapp"), 30, "the valid in-app delivery")
    assert count(db_settings, "notification") == 1
    assert count(db_settings, "notification_delivery") == 2
    dead = wait_for(lambda: dead_letters(kafka_settings, inapp_topic.dlq_name), 30, "a DLQ")
    assert len(dead) == 1
    value, headers = dead[0]
    assert value == b"not avro at all"
    assert headers[H_ERROR_CLASS] == "serde.NotAvroError"
    assert headers[H_ORIGINAL_TOPIC] == inapp_topic.name
    wait_until_consumed(kafka_settings, topics)
    assert service.running()


def test_a_lost_connection_is_retried_and_an_uncommitted_batch_is_replayed(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    app = application_name(db_settings)
    service = start(run_service, kafka_settings, db_settings)
    publisher = Publisher(kafka_settings, topics)
    first = [notification() for _ in range(5)]
    for note in first:
        publisher.notification(note)
    publisher.flush()
    wait_for(lambda: count(db_settings, "notification") == 5, 60, "the first rows")

    options = search_path_options(db_settings.database_schema)
    with psycopg.connect(db_settings.libpq_url, options=options, autocommit=True) as admin:
        # 1. The server drops the store's connection: it reconnects and carries on.
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        ).fetchall()
        assert killed == [(True,)]
        second = [notification() for _ in range(5)]
        for note in second:
            publisher.notification(note)
        publisher.flush()
        wait_for(lambda: count(db_settings, "notification") == 10, 60, "rows after reconnecting")
        assert service.running()
        wait_until_consumed(kafka_settings, topics)

        # 2. The store dies in the middle of a batch's transaction: nothing of the batch is
        # committed, neither rows nor offsets, and a new process writes it all.
        with psycopg.connect(db_settings.libpq_url, options=options) as locker:
            locker.execute("LOCK TABLE notification IN ACCESS EXCLUSIVE MODE")
            for note in [notification() for _ in range(5)]:
                publisher.notification(note)
            publisher.flush()

            def waiting_on_the_lock() -> bool:
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (app,),
                ).fetchone()
                return row == (1,)

            wait_for(waiting_on_the_lock, 60, "the store's batch to wait on the lock")
            service.stop(sig=signal.SIGKILL)  # no chance to commit anything
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app,),
            )
            assert not consumed_everything(kafka_settings, topics)
            locker.rollback()
    assert count(db_settings, "notification") == 10
    start(run_service, kafka_settings, db_settings)
    wait_for(lambda: count(db_settings, "notification") == 15, 60, "the replayed batch")
    wait_until_consumed(kafka_settings, topics)


def test_sql_precedence_matches_python(db_settings: DatabaseSettings) -> None:
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    states = [
        (state, attempt, at)
        for state in STATUS_ORDER
        for attempt in (1, 2)
        for at in (t0, t0 + timedelta(seconds=1))
    ]
    pairs = list(itertools.product(states, states))
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(pairs))
    params: list[Any] = []
    for n, ((new_s, new_a, new_t), (old_s, old_a, old_t)) in enumerate(pairs):
        params += [n, new_s, new_a - 1, new_t, old_s, old_a - 1, old_t]
    # Two row aliases with the delivery table's column names, as the upsert's WHERE sees them.
    sql = (
        f"SELECT p.n, {outranks_sql('new', 'old')} "
        f"FROM (VALUES {values}) AS p (n, ns, nr, nt, os, orc, ot), "
        "LATERAL (SELECT p.ns::text AS status, p.nr::int AS retry_count, "
        "p.nt::timestamptz AS attempted_at) AS new, "
        "LATERAL (SELECT p.os::text AS status, p.orc::int AS retry_count, "
        "p.ot::timestamptz AS attempted_at) AS old "
        "ORDER BY p.n"
    )
    results = [bool(outranks) for _, outranks in query(db_settings, sql, params)]
    expected = [delivery_row(*new).outranks(delivery_row(*old)) for new, old in pairs]
    assert len(results) == len(pairs) == 28 * 28
    assert results == expected


def delivery_row(state: str, attempt: int, at: datetime) -> DeliveryRow:
    return DeliveryRow(
        id=str(uuid.uuid4()),
        notification_id=str(uuid.uuid4()),
        user_id="u",
        channel="email",
        status=state,
        attempt=attempt,
        occurred_at=at,
    )


def test_throughput_smoke(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    total = 5000
    publisher = Publisher(kafka_settings, topics)
    notes = [notification(f"user-{n % 500}") for n in range(total)]
    for note in notes:
        publisher.notification(note)
        publisher.status(status(note, "email", "sent"))
    publisher.flush()

    started = time.monotonic()
    start(run_service, kafka_settings, db_settings)
    wait_for(
        lambda: (
            count(db_settings, "notification") == total
            and count(db_settings, "notification_delivery") == total
        ),
        120,
        f"{total} notifications and {total} delivery rows",
        interval=0.25,
    )
    elapsed = time.monotonic() - started
    assert count(db_settings, "delivery_attempt") == total
    records = 2 * total
    print(
        f"\ninapp_store: {records} records ({3 * total} rows) in {elapsed:.2f}s "
        f"= {records / elapsed:,.0f} records/s, process start and group join included"
    )
