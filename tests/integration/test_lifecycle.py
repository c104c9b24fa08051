"""The user data lifecycle against the real stack: erasure (``DELETE /v1/users/{id}``), export
(``GET /v1/users/{id}/export``) and retention (herald.retention)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Message

from herald import seed
from herald.db import make_engine, search_path_options
from herald.identity import delivery_id, derived_event_id, notification_id
from herald.retention import RetentionSettings, apply
from herald.settings import DatabaseSettings, KafkaSettings
from herald.topics import admin_client
from herald.userdata import delivery_ids, erase_rows, export_chunks, remaining_rows
from tests.integration.kafka_util import (
    committed_to_end,
    downstream_caught_up,
    poll_safely,
    read_all,
)
from tests.integration.pipeline import Pipeline, wait_for

pytestmark = pytest.mark.integration


def _sql(database: DatabaseSettings, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(
        database.libpq_url, options=search_path_options(database.database_schema)
    ) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def _remaining(database: DatabaseSettings, user_id: str) -> dict[str, int]:
    engine = make_engine(database)
    try:
        with engine.connect() as connection:
            return remaining_rows(connection, user_id)
    finally:
        engine.dispose()


def _user_ids(
    database: DatabaseSettings, user_id: str, event_ids: list[str]
) -> tuple[set[str], set[str]]:
    """The notification ids and delivery ids of ``user_id``: those the events ``event_ids``
    give them (derived, every channel) and those stored now (taken before an erasure: after
    it, nothing in the database leads from the user to them any more)."""
    nids = {notification_id(event, user_id) for event in event_ids}
    nids |= {
        str(row[0])
        for row in _sql(
            database,
            "SELECT id FROM notification WHERE user_id = %s"
            " UNION SELECT notification_id FROM notification_delivery WHERE user_id = %s"
            " UNION SELECT notification_id FROM held_delivery WHERE user_id = %s",
            user_id,
            user_id,
            user_id,
        )
    }
    dids = set(delivery_ids(sorted(nids)))
    dids |= {
        str(row[0])
        for row in _sql(
            database,
            "SELECT id FROM notification_delivery WHERE user_id = %s"
            " UNION SELECT delivery_id FROM held_delivery WHERE user_id = %s",
            user_id,
            user_id,
        )
    }
    return nids, dids


#: Per table: the rows about a user, found by the user id and by the ids taken before the
#: erasure (%(u)s the user id, %(n)s notification ids, %(d)s delivery ids).
_LEFTOVER_SQL = {
    "user_account": "id = %(u)s",
    "notification_preference": "user_id = %(u)s",
    "user_event_preference": "user_id = %(u)s",
    "channel_endpoint": "user_id = %(u)s",
    "known_device": "user_id = %(u)s",
    "notification": "user_id = %(u)s OR id = ANY(%(n)s::uuid[])",
    "notification_delivery": (
        "user_id = %(u)s OR id = ANY(%(d)s::uuid[]) OR notification_id = ANY(%(n)s::uuid[])"
    ),
    "held_delivery": (
        "user_id = %(u)s OR delivery_id = ANY(%(d)s::uuid[])"
        " OR notification_id = ANY(%(n)s::uuid[])"
    ),
    "delivery_attempt": "delivery_id = ANY(%(d)s::uuid[])",
    "send_journal": "delivery_id = ANY(%(d)s::uuid[])",
}


def _leftover(
    database: DatabaseSettings, user_id: str, nids: set[str], dids: set[str]
) -> dict[str, int]:
    """Rows about ``user_id`` per table (tables with none left out), found without going
    through the user's notifications (unlike herald.userdata.remaining_rows, which cannot see
    an attempt or journal row once the notifications and deliveries are gone)."""
    params = {"u": user_id, "n": sorted(nids), "d": sorted(dids)}
    counts = {}
    with psycopg.connect(
        database.libpq_url, options=search_path_options(database.database_schema)
    ) as conn:
        for table, where in _LEFTOVER_SQL.items():
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", params).fetchone()
            if row and row[0]:
                counts[table] = row[0]
    return counts


def _live_records(kafka: KafkaSettings, topic: str, user_id: str) -> list[Message]:
    """The records of ``topic`` that are live (the last of their key, not a tombstone) and
    mention ``user_id`` in their key or value: what a compacted topic still tells."""
    last: dict[bytes | str | None, Message] = {}
    for message in read_all(kafka, topic):
        last[message.key()] = message
    needle = user_id.encode()
    return [
        m
        for m in last.values()
        if m.value() is not None and (needle in (m.key() or b"") or needle in (m.value() or b""))
    ]


def _compacted_topics(kafka: KafkaSettings, pipeline: Pipeline) -> list[str]:
    """The users and preferences topics and every changelog of the router's tables."""
    names = admin_client(kafka).list_topics(timeout=10).topics
    changelogs = sorted(
        n for n in names if n.startswith(kafka.topic_prefix) and n.endswith("-changelog")
    )
    return [pipeline.catalogue.users.name, pipeline.catalogue.preferences.name, *changelogs]


# --- erasure and export, end to end -------------------------------------------------------

#: The router's tables keyed by user id that hold ada in the test below.
_ADA_TABLES = ("users", "preferences", "known_devices")


def test_export_lists_what_the_user_got_and_delete_erases_them_everywhere(
    pipeline: Pipeline, kafka_settings: KafkaSettings
) -> None:
    p = pipeline
    for code in (seed.USER_REGISTERED, seed.USER_LOGIN, seed.LOGIN_ALERT):
        put = p.api.put(f"/v1/event-types/{code}", json=seed.DEFAULT_EVENT_TYPES[code])
        assert put.status_code in (200, 201), put.text
    ada, bob = p.user("ada"), p.user("bob")
    address = p.user_contact(ada)["email"]
    # A preference override and a Slack endpoint, so that every table has a row of ada's.
    prefs = p.api.put(
        f"/v1/users/{ada}/preferences",
        json={"event_overrides": {seed.USER_LOGIN: {"enabled": True, "channels": ["inapp"]}}},
    )
    assert prefs.status_code == 200, prefs.text
    _sql(
        p.db,
        "INSERT INTO channel_endpoint (user_id, kind, url) VALUES (%s, 'slack', %s)",
        ada,
        "https://hooks.slack.example/T000/B000/XXX",
    )
    welcome = p.publish(seed.USER_REGISTERED, [ada, bob])
    p.await_deliveries(welcome, [ada, bob], 2)
    device = {"device_id": f"laptop-{p.run}", "user_agent": "Firefox", "ip": "203.0.113.7"}
    login = p.publish(seed.USER_LOGIN, [ada], **device)
    alert = derived_event_id(login, seed.LOGIN_ALERT)
    p.await_deliveries(alert, [ada], 2)
    p.await_deliveries(login, [ada], 1)

    # Export: exactly what ada has, nothing of bob's, no secrets.
    response = p.api.get(f"/v1/users/{ada}/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert bob not in response.text
    export = response.json()
    assert export["user"]["email"] == address
    assert export["preferences"]["event_overrides"][seed.USER_LOGIN]["channels"] == ["inapp"]
    assert [e["kind"] for e in export["endpoints"]] == ["slack"]
    assert "secret" not in export["endpoints"][0]
    stored = {
        str(row[0]): row[1]
        for row in _sql(p.db, "SELECT id, title FROM notification WHERE user_id = %s", ada)
    }
    exported = {n["id"]: n for n in export["notifications"]}
    assert {nid: n["title"] for nid, n in exported.items()} == stored
    assert set(exported) == {
        notification_id(welcome, ada),
        notification_id(login, ada),
        notification_id(alert, ada),
    }
    # What ada received by email is what the export says was sent by email.
    emailed = sorted(
        re.findall(r"X-Herald-Delivery-Id: (\S+)", m["raw"])[0] for m in p.emails_to(address)
    )
    sent = sorted(
        d["delivery_id"]
        for n in export["notifications"]
        for d in n["deliveries"]
        if d["channel"] == "email" and d["status"] == "sent"
    )
    assert emailed == sent and len(sent) == 2, (emailed, sent)
    for n in export["notifications"]:
        for d in n["deliveries"]:
            assert d["delivery_id"] == delivery_id(n["id"], d["channel"])
            assert d["attempts"], d  # the attempt history comes with each delivery
    # The login itself (in-app only, by ada's choice) and its skipped email.
    login_deliveries = exported[notification_id(login, ada)]["deliveries"]
    assert {d["channel"]: d["status"] for d in login_deliveries}["inapp"] == "delivered"
    inbox = p.read_api.get(f"/v1/users/{ada}/notifications") if p.read_api else None
    assert inbox is not None and inbox.status_code == 200

    # Erase ada: there is something to erase in every table and every compacted topic.
    assert _remaining(p.db, ada).keys() == {
        "user_account",
        "notification_preference",
        "user_event_preference",
        "channel_endpoint",
        "notification",
        "notification_delivery",
        "delivery_attempt",
        "send_journal",
    }
    tables = [f"{p.kafka.topic_prefix}herald-router-{name}-changelog" for name in _ADA_TABLES]
    holding = [p.catalogue.users.name, p.catalogue.preferences.name, *tables]
    assert set(holding) <= set(_compacted_topics(kafka_settings, p))
    wait_for(
        lambda: all(_live_records(kafka_settings, t, ada) for t in holding),
        30,
        "every compacted topic of users to hold ada",
    )
    # Ada's ids, taken now: after the erasure nothing leads from her to her attempts and
    # journal rows but these (they carry no user id). The check sees every table of hers.
    nids, dids = _user_ids(p.db, ada, [welcome, login, alert])
    assert _leftover(p.db, ada, nids, dids) == _remaining(p.db, ada)
    bob_before = _remaining(p.db, bob)
    started = time.monotonic()
    response = p.api.delete(f"/v1/users/{ada}")
    erase_s = time.monotonic() - started
    assert response.status_code == 204, response.text
    assert _leftover(p.db, ada, nids, dids) == {}
    assert _remaining(p.db, bob) == bob_before
    # The compacted topics hold tombstones for ada: users and preferences at once, the
    # router's table changelogs (users, preferences, known devices) once it read them.
    for topic in (p.catalogue.users.name, p.catalogue.preferences.name):
        assert _live_records(kafka_settings, topic, ada) == [], topic

    def changelogs_clean() -> list[str]:
        return [
            topic
            for topic in _compacted_topics(kafka_settings, p)
            if _live_records(kafka_settings, topic, ada)
        ]

    wait_for(lambda: not changelogs_clean(), 30, "the router's changelogs to drop ada")
    # The read API and the admin API answer 404.
    assert p.read_api is not None
    nid = notification_id(welcome, ada)
    assert p.read_api.get(f"/v1/users/{ada}/notifications/{nid}").status_code == 404
    assert p.read_api.get(f"/v1/users/{ada}/preferences").status_code == 404
    assert p.api.get(f"/v1/users/{ada}").status_code == 404
    assert p.api.get(f"/v1/users/{ada}/export").status_code == 404

    # An event for ada published after the erasure is dropped: bob gets his, ada nothing.
    late = p.publish(seed.USER_REGISTERED, [ada, bob])
    p.await_deliveries(late, [bob], 2)
    # Everything the late event made has had its effects: the router committed it (and the
    # recipients records it wrote), then the senders and the in-app store all they got.
    router = f"{p.kafka.topic_prefix}herald-router"
    routed = [p.catalogue.events.name, p.catalogue.recipients.name]
    wait_for(
        poll_safely(
            lambda: (
                committed_to_end(p.kafka, router, routed)
                and downstream_caught_up(p.kafka, p.catalogue, ("email", "sms"))
            )
        ),
        60,
        "the late event to be routed and consumed",
    )
    assert p.deliveries(late, [ada]) == {}
    late_nids, late_dids = _user_ids(p.db, ada, [late])
    nids, dids = nids | late_nids, dids | late_dids
    assert _leftover(p.db, ada, nids, dids) == {}
    assert len(p.emails_to(address)) == len(emailed)
    dead = read_all(kafka_settings, p.catalogue.events.dlq_name)
    assert not [m for m in dead if late.encode() in (m.value() or b"")]

    # Idempotent: a second erasure is 204 and changes nothing.
    assert p.api.delete(f"/v1/users/{ada}").status_code == 204
    assert _leftover(p.db, ada, nids, dids) == {}
    print(f"erasure of a user with 3 notifications: {erase_s * 1000:.0f} ms")


# --- export, streamed -----------------------------------------------------------------------


def _bulk_user(database: DatabaseSettings, user_id: str, notifications: int) -> None:
    """``notifications`` notifications for ``user_id``, each with an email delivery and two
    attempts, made in SQL (the ids are random, not derived: only the shape matters here)."""
    _sql(database, "INSERT INTO user_account (id) VALUES (%s)", user_id)
    _sql(
        database,
        """
        INSERT INTO notification (id, event_id, user_id, event_type, title, message, created_at)
        SELECT gen_random_uuid(), gen_random_uuid(), %s, 'comment.created',
               'Comment ' || g, repeat('x', 200), now() - g * interval '1 second'
        FROM generate_series(1, %s) g
        """,
        user_id,
        notifications,
    )
    _sql(
        database,
        """
        INSERT INTO notification_delivery (id, notification_id, user_id, channel, status)
        SELECT gen_random_uuid(), id, user_id, 'email', 'sent' FROM notification
        WHERE user_id = %s
        """,
        user_id,
    )
    _sql(
        database,
        """
        INSERT INTO delivery_attempt (delivery_id, attempt, status)
        SELECT d.id, 1, s FROM notification_delivery d, unnest(ARRAY['pending', 'sent']) s
        WHERE d.user_id = %s
        """,
        user_id,
    )


def test_export_of_100000_notifications_streams_in_bounded_memory(
    db_settings: DatabaseSettings,
) -> None:
    user_id = "bulk-user"
    _bulk_user(db_settings, user_id, 100_000)
    engine = make_engine(db_settings)
    size = count = 0
    started = time.monotonic()
    tracemalloc.start()
    try:
        with engine.connect() as connection, connection.begin():
            for chunk in export_chunks(connection, user_id, {"user_id": user_id}):
                size += len(chunk)
                count += chunk.count('"event_type":"comment.created"')
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        engine.dispose()
    seconds = time.monotonic() - started
    print(
        f"export of 100,000 notifications: {size / 1e6:.0f} MB in {seconds:.1f} s,"
        f" peak traced memory {peak / 1e6:.1f} MB"
    )
    assert count == 100_000
    # The document is far larger than what was ever held at once.
    assert size > 60e6
    assert peak < 20e6


def test_erasure_of_a_user_with_100000_notifications(db_settings: DatabaseSettings) -> None:
    """erase_rows on a user with 100,000 notifications (one delivery, two attempts each), as
    DELETE /v1/users/{id} runs it: one transaction; timed (printed)."""
    _bulk_user(db_settings, "bulk-user", 100_000)
    _bulk_user(db_settings, "other-user", 10)
    _sql(db_settings, "ANALYZE")
    engine = make_engine(db_settings)
    try:
        started = time.monotonic()
        with engine.begin() as connection:
            counts = erase_rows(connection, "bulk-user")
        seconds = time.monotonic() - started
    finally:
        engine.dispose()
    print(f"erasure of a user with 100,000 notifications: {seconds:.1f} s, {counts}")
    assert counts == {
        "delivery_attempt": 200_000,
        "notification_delivery": 100_000,
        "notification": 100_000,
        "user_account": 1,
    }
    # The schema is this test's own: whatever is left is other-user's (counted by table, as
    # nothing leads from bulk-user to an attempt once its deliveries are gone).
    for table, left in (
        ("delivery_attempt", 20),
        ("notification_delivery", 10),
        ("notification", 10),
    ):
        assert _sql(db_settings, f"SELECT count(*) FROM {table}") == [(left,)], table
    assert _remaining(db_settings, "bulk-user") == {}
    assert _remaining(db_settings, "other-user")["delivery_attempt"] == 20


# --- retention ------------------------------------------------------------------------------

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@pytest.fixture
def aged(db_settings: DatabaseSettings) -> Iterator[dict[str, set[str]]]:
    """Rows on either side of the default limits (180 days, 30 days), and what must stay."""
    keep: dict[str, set[str]] = {"notification": set(), "notification_delivery": set()}
    keep.update(delivery_attempt=set(), send_journal=set())
    # Notifications and their deliveries: 180 days is the limit (older goes).
    for i, age in enumerate([400, 181, 180.01, 180.01, 179.99, 100, 1] * 3):
        nid = str(uuid.uuid4())
        _sql(
            db_settings,
            "INSERT INTO notification (id, event_id, user_id, event_type, title, message,"
            " created_at) VALUES (%s, gen_random_uuid(), %s, 't', 't', 'm', %s)",
            nid,
            f"u{i}",
            _days_ago(age),
        )
        did = delivery_id(nid, "email")
        _sql(
            db_settings,
            "INSERT INTO notification_delivery (id, notification_id, user_id, channel, status,"
            " created_at, updated_at) VALUES (%s, %s, %s, 'email', 'sent', %s, %s)",
            did,
            nid,
            f"u{i}",
            _days_ago(age),
            _days_ago(age),
        )
        if age < 180:
            keep["notification"].add(nid)
            keep["notification_delivery"].add(did)
    # Attempts: 30 days after the delivery's final status.
    cases = [
        # (delivery status, its last update, attempt age, kept?)
        ("sent", 40, 40, False),
        ("failed", 31, 35, False),
        ("dead", 29, 40, True),  # final, but only since 29 days
        ("retrying", 40, 40, True),  # not final
        ("delivered", 40, 29, True),  # the attempt itself is recent
        (None, None, 31, False),  # its delivery is gone
        (None, None, 29, True),
    ]
    for status, updated, attempt_age, kept in cases:
        did = str(uuid.uuid4())
        if status is not None:
            _sql(
                db_settings,
                "INSERT INTO notification_delivery (id, notification_id, user_id, channel,"
                " status, created_at, updated_at) VALUES (%s, gen_random_uuid(), 'x', 'sms', %s,"
                " %s, %s)",
                did,
                status,
                _days_ago(50),
                _days_ago(updated or 0),
            )
            keep["notification_delivery"].add(did)
        for attempt in range(1, 4):
            (row,) = _sql(
                db_settings,
                "INSERT INTO delivery_attempt (delivery_id, attempt, status, occurred_at)"
                " VALUES (%s, %s, 'retrying', %s) RETURNING id",
                did,
                attempt,
                _days_ago(attempt_age),
            )
            if kept:
                keep["delivery_attempt"].add(str(row[0]))
    # The journal: 30 days after its last update.
    for age in (90, 30.5, 29.5, 0):
        did = str(uuid.uuid4())
        _sql(
            db_settings,
            "INSERT INTO send_journal (delivery_id, channel, state, attempt, updated_at)"
            " VALUES (%s, 'sms', 'sent', 1, %s)",
            did,
            _days_ago(age),
        )
        if age < 30:
            keep["send_journal"].add(did)
    yield keep


def _ids(database: DatabaseSettings, table: str) -> set[str]:
    key = "delivery_id" if table == "send_journal" else "id"
    return {str(row[0]) for row in _sql(database, f"SELECT {key} FROM {table}")}


def test_retention_deletes_exactly_what_is_older_than_the_limits_in_batches(
    db_settings: DatabaseSettings, aged: dict[str, set[str]]
) -> None:
    engine = make_engine(db_settings)
    settings = RetentionSettings(batch_size=4)
    before = {table: _ids(db_settings, table) for table in aged}
    try:
        dry = apply(engine, settings, NOW, dry_run=True)
        assert {table: _ids(db_settings, table) for table in aged} == before
        report = apply(engine, settings, NOW)
    finally:
        engine.dispose()
    for table, kept in aged.items():
        assert _ids(db_settings, table) == kept, table
    by_rule = {o.rule: o for o in report.outcomes}
    # 12 notifications past 180 days (and their 12 deliveries), 9 attempts, 2 journal rows.
    assert {rule: o.rows for rule, o in by_rule.items()} == {
        "deliveries": 12,
        "notifications": 12,
        "attempts": 9,
        "journal": 2,
    }
    # In batches of 4: 12 rows are 3 full batches (a fourth, empty one ends the loop; not
    # counted), 9 rows 3 batches.
    assert {rule: o.batches for rule, o in by_rule.items()} == {
        "deliveries": 3,
        "notifications": 3,
        "attempts": 3,
        "journal": 1,
    }
    assert {o.rule: o.rows for o in dry.outcomes} == {o.rule: o.rows for o in report.outcomes}
    # Repeating deletes nothing more.
    engine = make_engine(db_settings)
    try:
        assert apply(engine, settings, NOW).rows == 0
    finally:
        engine.dispose()


def test_retention_limit_zero_keeps_for_ever(
    db_settings: DatabaseSettings, aged: dict[str, set[str]]
) -> None:
    engine = make_engine(db_settings)
    try:
        report = apply(engine, RetentionSettings(notifications_days=0, journal_days=0), NOW)
    finally:
        engine.dispose()
    assert {o.rule: o.rows for o in report.outcomes} == {
        "deliveries": 0,
        "notifications": 0,
        "attempts": 9,
        "journal": 0,
    }
    assert len(_ids(db_settings, "notification")) == 21


def test_retention_cli_dry_run_and_run(db_settings: DatabaseSettings) -> None:
    _sql(
        db_settings,
        "INSERT INTO send_journal (delivery_id, channel, state, attempt, updated_at)"
        " VALUES (gen_random_uuid(), 'email', 'sent', 1, now() - interval '31 days'),"
        " (gen_random_uuid(), 'email', 'sent', 1, now())",
    )
    env = {
        **os.environ,
        "DATABASE_URL": db_settings.database_url,
        "DATABASE_SCHEMA": db_settings.database_schema,
    }

    def herald(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "herald.cli.main", "retention", "run", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = herald("--dry-run")
    assert "journal: would delete 1 send_journal rows" in out, out
    assert len(_ids(db_settings, "send_journal")) == 2
    out = herald()
    assert "journal: deleted 1 send_journal rows" in out, out
    assert len(_ids(db_settings, "send_journal")) == 1


def test_retention_delete_speed(db_settings: DatabaseSettings) -> None:
    """How fast batches of 5,000 delete old attempts while new ones stay (printed)."""
    rows = 200_000
    _sql(
        db_settings,
        "INSERT INTO delivery_attempt (delivery_id, attempt, status, occurred_at)"
        " SELECT gen_random_uuid(), 1, 'sent', now() - interval '60 days' - g * interval '1 s'"
        " FROM generate_series(1, %s) g",
        rows,
    )
    _sql(
        db_settings,
        "INSERT INTO delivery_attempt (delivery_id, attempt, status)"
        " SELECT gen_random_uuid(), 1, 'sent' FROM generate_series(1, 10000)",
    )
    _sql(db_settings, "ANALYZE delivery_attempt")
    engine = make_engine(db_settings)
    try:
        report = apply(engine, RetentionSettings(), datetime.now(UTC))
    finally:
        engine.dispose()
    attempts = next(o for o in report.outcomes if o.rule == "attempts")
    print(
        f"retention: {attempts.rows} attempts in {attempts.batches} batches,"
        f" {attempts.seconds:.2f} s, {attempts.rows_per_s:,.0f} rows/s,"
        f" {attempts.seconds / attempts.batches * 1000:.0f} ms per batch"
    )
    assert attempts.rows == rows
    assert attempts.batches == rows // 5000
    assert _sql(db_settings, "SELECT count(*) FROM delivery_attempt") == [(10_000,)]


def test_export_json_is_valid_for_an_empty_user(db_settings: DatabaseSettings) -> None:
    engine = make_engine(db_settings)
    try:
        with engine.connect() as connection:
            document = "".join(export_chunks(connection, "nobody", {"user_id": "nobody"}))
    finally:
        engine.dispose()
    assert json.loads(document) == {
        "user_id": "nobody",
        "endpoints": [],
        "known_devices": [],
        "held_deliveries": [],
        "notifications": [],
        "deliveries_without_notification": [],
    }
