"""Herald's Alembic migrations against a real PostgreSQL, each test in its own uuid schema."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects.postgresql import insert

from herald.db import migrate
from herald.db.engine import make_engine, quote_identifier, search_path_options, session_factory
from herald.db.models import (
    UNREAD,
    DeliveryAttempt,
    Notification,
    NotificationDelivery,
    metadata,
)
from herald.settings import DatabaseSettings

pytestmark = pytest.mark.integration

HERALD_TABLES = set(metadata.tables)


@pytest.fixture
def schema_settings() -> Iterator[DatabaseSettings]:
    """Settings aimed at a fresh uuid-named schema (not created yet: migrations create it).

    The name keeps the uuid's hyphens, so every statement must quote it correctly.
    """
    schema = f"test-{uuid.uuid4()}"
    settings = DatabaseSettings().model_copy(update={"database_schema": schema})
    try:
        yield settings
    finally:
        with psycopg.connect(settings.libpq_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(schema)} CASCADE")


def _query(settings: DatabaseSettings, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.libpq_url) as conn:
        return list(conn.execute(sql, params or None).fetchall())


def _tables(settings: DatabaseSettings) -> set[str]:
    rows = _query(
        settings,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %(schema)s",
        schema=settings.database_schema,
    )
    return {row[0] for row in rows}


def _other_schemas_tables(settings: DatabaseSettings) -> set[tuple[str, str]]:
    rows = _query(
        settings,
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema <> %(schema)s",
        schema=settings.database_schema,
    )
    return {(row[0], row[1]) for row in rows}


def test_upgrade_from_empty_creates_tables_keys_and_indexes(
    schema_settings: DatabaseSettings,
) -> None:
    schema = schema_settings.database_schema
    elsewhere_before = _other_schemas_tables(schema_settings)
    assert migrate.current(schema_settings) is None

    migrate.upgrade(schema_settings)

    assert migrate.current(schema_settings) == migrate.head()
    assert migrate.is_current(schema_settings)
    assert _tables(schema_settings) == HERALD_TABLES | {"alembic_version"}
    # Nothing was created outside the target schema.
    assert _other_schemas_tables(schema_settings) == elsewhere_before

    indexes = dict(
        _query(
            schema_settings,
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %(schema)s",
            schema=schema,
        )
    )
    assert indexes["ix_notification_inbox"].endswith(
        "USING btree (user_id, created_at DESC, id DESC)"
    )
    assert indexes["ix_notification_unread"].endswith(
        "USING btree (user_id, created_at DESC, id DESC) WHERE (is_read = false)"
    )
    assert "ix_notification_event_id" in indexes

    constraints = set(
        _query(
            schema_settings,
            "SELECT table_name, constraint_name, constraint_type "
            "FROM information_schema.table_constraints "
            "WHERE table_schema = %(schema)s AND constraint_type IN ('UNIQUE', 'PRIMARY KEY')",
            schema=schema,
        )
    )
    assert {
        ("event_type", "uq_event_type_code", "UNIQUE"),
        (
            "notification_delivery",
            "uq_notification_delivery_notification_id_channel",
            "UNIQUE",
        ),
        ("delivery_attempt", "uq_delivery_attempt_delivery_id_attempt_status", "UNIQUE"),
        ("user_event_preference", "pk_user_event_preference", "PRIMARY KEY"),
        ("known_device", "pk_known_device", "PRIMARY KEY"),
        ("notification", "pk_notification", "PRIMARY KEY"),
    } <= constraints

    # A second upgrade is a no-op.
    migrate.upgrade(schema_settings)
    assert migrate.current(schema_settings) == migrate.head()


def test_migrated_database_matches_the_models(schema_settings: DatabaseSettings) -> None:
    migrate.upgrade(schema_settings)
    engine = make_engine(schema_settings)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    # The version table is Alembic's, not the models'.
                    "include_name": lambda name, kind, parent: name != "alembic_version",
                },
            )
            diffs = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert diffs == []


def test_delivery_upserts_and_attempt_replays_are_idempotent(
    schema_settings: DatabaseSettings,
) -> None:
    migrate.upgrade(schema_settings)
    notification_id, delivery_id = uuid.uuid4(), uuid.uuid4()
    engine = make_engine(schema_settings)
    try:
        with engine.begin() as conn:
            for status, retries in (("pending", 0), ("retrying", 1), ("sent", 1)):
                statement = insert(NotificationDelivery).values(
                    id=delivery_id,
                    notification_id=notification_id,
                    user_id="u-1",
                    channel="email",
                    status=status,
                    retry_count=retries,
                )
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["notification_id", "channel"],
                        set_={
                            "status": statement.excluded.status,
                            "retry_count": statement.excluded.retry_count,
                            "updated_at": sa.func.now(),
                        },
                    )
                )
            for _replay in range(2):
                conn.execute(
                    insert(DeliveryAttempt)
                    .values(delivery_id=delivery_id, attempt=1, status="sent")
                    .on_conflict_do_nothing(
                        constraint="uq_delivery_attempt_delivery_id_attempt_status"
                    )
                )
            rows = conn.execute(
                sa.select(NotificationDelivery.status, NotificationDelivery.retry_count)
            ).all()
            attempts = conn.execute(sa.select(sa.func.count()).select_from(DeliveryAttempt))
            assert [tuple(r) for r in rows] == [("sent", 1)]
            assert attempts.scalar_one() == 1

            # Unknown statuses are refused by the database, not only by the code.
            with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(sa.update(NotificationDelivery).values(status="lost-in-the-mail"))
    finally:
        engine.dispose()

    # A plain psycopg connection (COPY, pipeline mode) finds the same tables by search_path.
    with psycopg.connect(
        schema_settings.libpq_url, options=search_path_options(schema_settings.database_schema)
    ) as conn:
        conn.execute(
            "INSERT INTO notification_delivery (id, notification_id, user_id, channel) "
            "VALUES (%s, %s, 'u-1', 'email') "
            "ON CONFLICT (notification_id, channel) DO UPDATE SET updated_at = now()",
            (uuid.uuid4(), notification_id),
        )
        count = conn.execute("SELECT count(*) FROM notification_delivery").fetchone()
        assert count == (1,)


def test_unread_inbox_query_uses_the_partial_index(schema_settings: DatabaseSettings) -> None:
    migrate.upgrade(schema_settings)
    engine = make_engine(schema_settings)
    try:
        with session_factory(engine).begin() as session:
            session.add_all(
                Notification(
                    id=uuid.uuid4(),
                    event_id=uuid.uuid4(),
                    user_id="u-1",
                    event_type="comment.created",
                    title=f"title {n}",
                    message="message",
                    meta={"n": n},
                    is_read=n % 2 == 0,
                )
                for n in range(4)
            )
        with engine.connect() as conn:
            # Force index use on a tiny table: the question is whether the planner may use it.
            conn.execute(sa.text("SET enable_seqscan = off"))
            conn.execute(sa.text("SET enable_bitmapscan = off"))
            query = (
                sa.select(Notification.id, Notification.meta)
                .where(Notification.user_id == "u-1", UNREAD)
                .order_by(Notification.created_at.desc(), Notification.id.desc())
                .limit(20)
            )
            assert len(conn.execute(query).all()) == 2
            compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
            plan = "\n".join(row[0] for row in conn.execute(sa.text(f"EXPLAIN {compiled}")))
            assert "ix_notification_unread" in plan, plan
    finally:
        engine.dispose()


def test_concurrent_upgrades_of_one_schema_all_succeed(
    schema_settings: DatabaseSettings,
) -> None:
    # Services starting together each migrate; the advisory lock in env.py serialises them.
    # Separate processes, like real services (Alembic's context is process-global).
    env = {
        **os.environ,
        "DATABASE_URL": schema_settings.database_url,
        "DATABASE_SCHEMA": schema_settings.database_schema,
    }
    code = "from herald.db.migrate import upgrade; upgrade()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    assert migrate.current(schema_settings) == migrate.head()


def test_downgrade_to_base_drops_every_herald_table(schema_settings: DatabaseSettings) -> None:
    migrate.upgrade(schema_settings)
    migrate.downgrade(schema_settings)

    assert migrate.current(schema_settings) is None
    assert _tables(schema_settings) == {"alembic_version"}
    leftovers = _query(
        schema_settings,
        "SELECT indexname FROM pg_indexes WHERE schemaname = %(schema)s "
        "AND tablename <> 'alembic_version'",
        schema=schema_settings.database_schema,
    )
    assert leftovers == []

    # And back up again: downgrade left nothing behind that blocks a fresh upgrade.
    migrate.upgrade(schema_settings)
    assert _tables(schema_settings) == HERALD_TABLES | {"alembic_version"}


def test_engine_connections_plan_every_statement_for_its_parameters(
    schema_settings: DatabaseSettings,
) -> None:
    """A statement run often on an empty table would otherwise keep a generic plan (a full
    scan) for the connection's life, however large the table grows (issue 10)."""
    migrate.upgrade(schema_settings)
    lookup = "SELECT state FROM send_journal WHERE delivery_id = ANY(%(ids)s)"
    ids = [uuid.uuid4() for _ in range(10)]

    def plans(conn: psycopg.Connection[Any]) -> tuple[int, int]:
        row = conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE 'SELECT state FROM send_journal%%'"
        ).fetchone()
        assert row is not None, "psycopg did not prepare the statement"
        return int(row[0]), int(row[1])

    # Without the option (a bare psycopg connection), PostgreSQL settles on a generic plan.
    options = search_path_options(schema_settings.database_schema)
    with psycopg.connect(schema_settings.libpq_url, options=options) as bare:
        for _ in range(20):  # prepared from the 6th; plans compared from its 6th run on
            bare.execute(lookup, {"ids": ids}).fetchall()
        assert plans(bare)[0] > 0
    engine = make_engine(schema_settings)
    try:
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            for _ in range(20):
                driver.execute(lookup, {"ids": ids}).fetchall()
            generic, custom = plans(driver)
            assert generic == 0 and custom >= 10, (generic, custom)
    finally:
        engine.dispose()
