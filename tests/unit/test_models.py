"""Herald's table definitions, engine options and migration scripts, checked without a database."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Index, Table, UniqueConstraint, event
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex

from herald.db import migrate
from herald.db.engine import make_engine, quote_identifier, search_path_options
from herald.db.models import (
    CHANNELS,
    DELIVERY_STATUSES,
    UNREAD,
    Notification,
    metadata,
)
from herald.identity import MAX_ID_LENGTH
from herald.settings import DatabaseSettings

TABLES = {
    "event_type",
    "user_account",
    "notification_preference",
    "user_event_preference",
    "notification",
    "notification_delivery",
    "delivery_attempt",
    "known_device",
    "held_delivery",
    "send_journal",
    "idempotency_key",
    "channel_endpoint",
}


def _table(name: str) -> Table:
    return metadata.tables[name]


def _unique_columns(table: Table) -> dict[str, tuple[str, ...]]:
    return {
        str(c.name): tuple(col.name for col in c.columns)
        for c in table.constraints
        if isinstance(c, UniqueConstraint)
    }


def _indexes(table: Table) -> dict[str, Index]:
    return {str(i.name): i for i in table.indexes}


def _ddl(index: Index) -> str:
    return str(CreateIndex(index).compile(dialect=postgresql.dialect()))


def test_metadata_has_every_table_and_names_no_schema() -> None:
    assert set(metadata.tables) == TABLES
    # The schema comes from search_path at run time, never from the models.
    assert all(table.schema is None for table in metadata.tables.values())


def test_identity_keys_are_unique() -> None:
    assert _unique_columns(_table("event_type")) == {"uq_event_type_code": ("code",)}
    assert _unique_columns(_table("notification_delivery")) == {
        "uq_notification_delivery_notification_id_channel": ("notification_id", "channel")
    }
    assert _unique_columns(_table("delivery_attempt")) == {
        "uq_delivery_attempt_delivery_id_attempt_status": ("delivery_id", "attempt", "status")
    }
    # Pairs that are the whole identity of a row are its primary key (an upsert target too).
    pk = {name: tuple(c.name for c in _table(name).primary_key) for name in TABLES}
    assert pk["user_event_preference"] == ("user_id", "event_type_code")
    assert pk["known_device"] == ("user_id", "device_id")
    assert pk["notification"] == ("id",)
    assert pk["notification_delivery"] == ("id",)
    assert pk["user_account"] == ("id",)
    assert pk["notification_preference"] == ("user_id",)


def test_notification_column_metadata_is_reachable_as_meta() -> None:
    column = Notification.__table__.c["metadata"]
    assert isinstance(column.type, postgresql.JSONB)
    assert Notification.meta.property.columns[0] is column


def test_inbox_index_orders_newest_first() -> None:
    index = _indexes(_table("notification"))["ix_notification_inbox"]
    assert _ddl(index).endswith("ON notification (user_id, created_at DESC, id DESC)")
    assert index.dialect_options["postgresql"]["where"] is None


def test_unread_index_is_partial_on_unread_rows() -> None:
    index = _indexes(_table("notification"))["ix_notification_unread"]
    ddl = _ddl(index)
    assert ddl.startswith("CREATE INDEX ix_notification_unread ON notification")
    assert "(user_id, created_at DESC, id DESC)" in ddl
    assert ddl.endswith("WHERE is_read = false")
    # Queries must use the same condition or PostgreSQL cannot use the partial index.
    assert index.dialect_options["postgresql"]["where"] is UNREAD


def test_delivery_rows_have_no_foreign_key_to_notifications() -> None:
    # Status events can arrive before the notification they belong to.
    for name in ("notification", "notification_delivery", "delivery_attempt", "known_device"):
        assert not [c for c in _table(name).constraints if isinstance(c, ForeignKeyConstraint)]


def test_preferences_belong_to_users() -> None:
    fks = {
        str(c.name): c.referred_table.name
        for c in _table("user_event_preference").constraints
        if isinstance(c, ForeignKeyConstraint)
    }
    assert fks == {
        "fk_user_event_preference_user_id_user_account": "user_account",
        "fk_user_event_preference_event_type_code_event_type": "event_type",
    }


def test_status_and_channel_checks_list_every_value() -> None:
    checks = {
        str(c.name): str(c.sqltext)
        for c in _table("notification_delivery").constraints
        if isinstance(c, CheckConstraint)
    }
    status = checks["ck_notification_delivery_status_known"]
    channel = checks["ck_notification_delivery_channel_known"]
    assert all(f"'{s}'" in status for s in DELIVERY_STATUSES)
    assert all(f"'{c}'" in channel for c in CHANNELS)
    assert set(CHANNELS) == {"email", "sms", "inapp", "webhook", "slack"}  # topics.toml's


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ("public", '-c search_path="public"'),
        ("t_0a1b", '-c search_path="t_0a1b"'),
        ("test-3f9c", '-c search_path="test-3f9c"'),
        ('we"ird name', '-c search_path="we""ird\\ name"'),
    ],
)
def test_search_path_option_quotes_the_schema(schema: str, expected: str) -> None:
    assert search_path_options(schema) == expected
    assert quote_identifier(schema).startswith('"')


class _Captured(Exception):
    """Stops a connection attempt once its parameters are known."""


def test_make_engine_sets_search_path_and_keeps_caller_options() -> None:
    settings = DatabaseSettings(
        database_url="postgresql://herald@127.0.0.1:1/herald", database_schema="s1"
    )
    engine = make_engine(settings, connect_args={"options": "-c statement_timeout=5000"})
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def _capture(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        seen.update(cparams)
        raise _Captured

    try:
        assert engine.dialect.driver == "psycopg"
        with pytest.raises(_Captured):
            engine.connect()
        assert seen["options"] == (
            '-c search_path="s1" -c plan_cache_mode=force_custom_plan -c statement_timeout=5000'
        )
        assert seen["dbname"] == "herald"
    finally:
        engine.dispose()


def test_migrations_are_found_from_any_directory(tmp_path: Path) -> None:
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        # The newest revision is the one with the highest number (revision ids are 0001, ...).
        newest = max(path.name[:4] for path in migrate.MIGRATIONS_DIR.glob("versions/0*.py"))
        assert migrate.head() == newest
    finally:
        os.chdir(cwd)


def test_offline_migration_sql_creates_schema_tables_and_partial_index() -> None:
    """``alembic upgrade --sql`` runs env.py and every migration without a database."""
    settings = DatabaseSettings(
        database_url="postgresql://herald@127.0.0.1:1/herald", database_schema="offline-check"
    )
    config = migrate.alembic_config(settings)
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    assert 'CREATE SCHEMA IF NOT EXISTS "offline-check"' in sql
    assert 'CREATE TABLE "offline-check".alembic_version' in sql
    for table in TABLES:
        assert f"CREATE TABLE {table} (" in sql
    assert (
        "CREATE INDEX ix_notification_unread ON notification "
        "(user_id, created_at DESC, id DESC) WHERE is_read = false"
    ) in sql

    buffer.seek(0)
    buffer.truncate()
    command.downgrade(config, f"{migrate.head()}:base", sql=True)
    sql = buffer.getvalue()
    for table in TABLES:
        assert f"DROP TABLE {table};" in sql


def test_id_length_checks_of_the_models_are_the_migrations() -> None:
    """Every ``char_length(<id>) <= MAX_ID_LENGTH`` check of the models is added by a migration
    under the same name and condition (Alembic's comparison does not look at CHECKs)."""
    checks = {
        str(c.name): str(c.sqltext)
        for table in metadata.tables.values()
        for c in table.constraints
        if isinstance(c, CheckConstraint) and str(c.sqltext).endswith(f") <= {MAX_ID_LENGTH}")
    }
    assert {"ck_user_account_id_length", "ck_notification_user_id_length"} <= checks.keys()
    assert len(checks) == 12
    settings = DatabaseSettings(
        database_url="postgresql://herald@127.0.0.1:1/herald", database_schema="offline-check"
    )
    config = migrate.alembic_config(settings)
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    for name, condition in checks.items():
        assert f"ADD CONSTRAINT {name} CHECK ({condition})" in sql
