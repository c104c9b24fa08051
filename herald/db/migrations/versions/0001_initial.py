"""Initial schema: event types, users, preferences, notifications, deliveries, devices.

Revision ID: 0001
Revises:
Create Date: 2025-11-25

Hand-written to match herald/db/models.py (tests/integration/test_migrations.py compares the
migrated database with the models). Tables name no schema: env.py sets ``search_path`` to the
target schema for the migration transaction.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Literal SQL, not imported from models.py: a migration must keep meaning what it meant when
# it was written, whatever the models say later.
_CHANNELS = "'email', 'sms', 'inapp'"
_STATUSES = "'pending', 'skipped', 'sent', 'delivered', 'retrying', 'failed', 'dead'"
CHANNEL_CHECK_SQL = f"channel IN ({_CHANNELS})"
STATUS_CHECK_SQL = f"status IN ({_STATUSES})"
PHONE_CHECK_SQL = r"phone ~ '^\+[1-9][0-9]{1,14}$'"


def channels_check_sql(column: str) -> str:
    return f"{column} <@ ARRAY[{_CHANNELS}]::text[]"


# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool = False, default_now: bool = True) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.text("now()") if default_now else None,
    )


def _flag(name: str, default: bool) -> sa.Column:
    return sa.Column(
        name, sa.Boolean(), nullable=False, server_default=sa.text("true" if default else "false")
    )


def upgrade() -> None:
    """Create every Herald table with its keys, checks and indexes."""
    op.create_table(
        "event_type",
        sa.Column("id", sa.UUID(), nullable=False, server_default=sa.text("gen_random_uuid()")),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        _flag("default_enabled", True),
        _flag("is_active", True),
        _flag("mandatory", False),
        _flag("urgent", False),
        sa.Column(
            "channels",
            postgresql.ARRAY(sa.Text()),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
        sa.Column(
            "templates",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_type")),
        sa.UniqueConstraint("code", name=op.f("uq_event_type_code")),
        sa.CheckConstraint(
            channels_check_sql("channels"), name=op.f("ck_event_type_channels_known")
        ),
    )

    op.create_table(
        "user_account",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("phone", sa.Text(), nullable=True),
        sa.Column("locale", sa.Text(), nullable=False, server_default=sa.text("'en'")),
        sa.Column("timezone", sa.Text(), nullable=False, server_default=sa.text("'UTC'")),
        sa.Column("display_name", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_account")),
        sa.CheckConstraint(PHONE_CHECK_SQL, name=op.f("ck_user_account_phone_e164")),
    )

    op.create_table(
        "notification_preference",
        sa.Column("user_id", sa.Text(), nullable=False),
        _flag("inapp_enabled", True),
        _flag("email_enabled", True),
        _flag("sms_enabled", True),
        sa.Column("quiet_hours_start", sa.Time(), nullable=True),
        sa.Column("quiet_hours_end", sa.Time(), nullable=True),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_notification_preference")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_account.id"],
            name=op.f("fk_notification_preference_user_id_user_account"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "(quiet_hours_start IS NULL) = (quiet_hours_end IS NULL)",
            name=op.f("ck_notification_preference_quiet_hours_pair"),
        ),
    )

    op.create_table(
        "user_event_preference",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("event_type_code", sa.Text(), nullable=False),
        _flag("enabled", True),
        sa.Column("channels", postgresql.ARRAY(sa.Text()), nullable=True),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint(
            "user_id", "event_type_code", name=op.f("pk_user_event_preference")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_account.id"],
            name=op.f("fk_user_event_preference_user_id_user_account"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_type_code"],
            ["event_type.code"],
            name=op.f("fk_user_event_preference_event_type_code_event_type"),
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        sa.CheckConstraint(
            f"channels IS NULL OR {channels_check_sql('channels')}",
            name=op.f("ck_user_event_preference_channels_known"),
        ),
    )

    # No foreign keys from here on: these rows come from Kafka topics that do not wait for
    # one another (see the comments in models.py).
    op.create_table(
        "notification",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        _flag("is_read", False),
        _timestamp("read_at", nullable=True, default_now=False),
        _timestamp("archived_at", nullable=True, default_now=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification")),
    )
    op.create_index(
        op.f("ix_notification_inbox"),
        "notification",
        ["user_id", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.create_index(
        op.f("ix_notification_unread"),
        "notification",
        ["user_id", sa.text("created_at DESC"), sa.text("id DESC")],
        postgresql_where=sa.text("is_read = false"),
    )
    op.create_index(op.f("ix_notification_event_id"), "notification", ["event_id"])

    op.create_table(
        "notification_delivery",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("notification_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'pending'")),
        _timestamp("attempted_at", nullable=True, default_now=False),
        _timestamp("delivered_at", nullable=True, default_now=False),
        sa.Column("retry_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("error_class", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("provider_message_id", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_delivery")),
        sa.UniqueConstraint(
            "notification_id",
            "channel",
            name=op.f("uq_notification_delivery_notification_id_channel"),
        ),
        sa.CheckConstraint(CHANNEL_CHECK_SQL, name=op.f("ck_notification_delivery_channel_known")),
        sa.CheckConstraint(STATUS_CHECK_SQL, name=op.f("ck_notification_delivery_status_known")),
        sa.CheckConstraint(
            "retry_count >= 0", name=op.f("ck_notification_delivery_retry_count_non_negative")
        ),
    )

    op.create_table(
        "delivery_attempt",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.UUID(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error_class", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        _timestamp("occurred_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempt")),
        sa.UniqueConstraint(
            "delivery_id",
            "attempt",
            "status",
            name=op.f("uq_delivery_attempt_delivery_id_attempt_status"),
        ),
        sa.CheckConstraint(STATUS_CHECK_SQL, name=op.f("ck_delivery_attempt_status_known")),
        sa.CheckConstraint("attempt >= 0", name=op.f("ck_delivery_attempt_attempt_non_negative")),
    )

    op.create_table(
        "known_device",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("device_id", sa.Text(), nullable=False),
        _timestamp("first_seen_at"),
        _timestamp("last_seen_at"),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("ip", postgresql.INET(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "device_id", name=op.f("pk_known_device")),
    )


def downgrade() -> None:
    """Drop every Herald table (indexes and constraints go with their tables)."""
    op.drop_table("known_device")
    op.drop_table("delivery_attempt")
    op.drop_table("notification_delivery")
    op.drop_index(op.f("ix_notification_event_id"), table_name="notification")
    op.drop_index(op.f("ix_notification_unread"), table_name="notification")
    op.drop_index(op.f("ix_notification_inbox"), table_name="notification")
    op.drop_table("notification")
    op.drop_table("user_event_preference")
    op.drop_table("notification_preference")
    op.drop_table("user_account")
    op.drop_table("event_type")
