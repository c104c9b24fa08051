"""Webhook and Slack channels, their endpoints, and the provider of each attempt.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

- The known channels grow from email, sms, inapp to those plus webhook and slack (the CHECK
  constraints on ``event_type.channels``, ``user_event_preference.channels`` and
  ``notification_delivery.channel``).
- ``channel_endpoint``: one HTTP endpoint per (user, kind) — the URL a webhook or Slack
  delivery is POSTed to, and for webhooks the signing secret (``whsec_`` + base64). A sender
  disables an endpoint that answered 410 (``enabled`` false, with the reason and time).
- ``notification_preference`` gets ``webhook_enabled`` and ``slack_enabled`` (default on).
- ``event_type.digest`` (JSONB, null): the digest window of an event type.
- ``delivery_attempt.provider`` and ``notification_delivery.provider``: which of the channel's
  providers made the attempt (provider failover), null when none was called.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Literal SQL as it was when written (see 0001).
_NEW = "'inapp', 'email', 'sms', 'webhook', 'slack'"
_OLD_0001 = "'email', 'sms', 'inapp'"
#: Longest endpoint URL (browsers' and most servers' practical limit).
MAX_URL_LENGTH = 2048


def _channel_checks(channels: str) -> None:
    op.execute(
        "ALTER TABLE event_type DROP CONSTRAINT ck_event_type_channels_known, "
        "ADD CONSTRAINT ck_event_type_channels_known "
        f"CHECK (channels <@ ARRAY[{channels}]::text[])"
    )
    op.execute(
        "ALTER TABLE user_event_preference "
        "DROP CONSTRAINT ck_user_event_preference_channels_known, "
        "ADD CONSTRAINT ck_user_event_preference_channels_known "
        f"CHECK (channels IS NULL OR channels <@ ARRAY[{channels}]::text[])"
    )
    op.execute(
        "ALTER TABLE notification_delivery "
        "DROP CONSTRAINT ck_notification_delivery_channel_known, "
        "ADD CONSTRAINT ck_notification_delivery_channel_known "
        f"CHECK (channel IN ({channels}))"
    )


def upgrade() -> None:
    _channel_checks(_NEW)
    op.create_table(
        "channel_endpoint",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "kind IN ('webhook', 'slack')", name=op.f("ck_channel_endpoint_kind_known")
        ),
        sa.CheckConstraint(
            f"char_length(url) <= {MAX_URL_LENGTH}", name=op.f("ck_channel_endpoint_url_length")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_account.id"],
            name=op.f("fk_channel_endpoint_user_id_user_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "kind", name=op.f("pk_channel_endpoint")),
    )
    # As 0006 adds them (the models' length_check), so both say the same.
    op.execute(
        "ALTER TABLE channel_endpoint ADD CONSTRAINT ck_channel_endpoint_user_id_length "
        "CHECK (char_length(user_id) <= 255)"
    )
    for column in ("webhook_enabled", "slack_enabled"):
        op.add_column(
            "notification_preference",
            sa.Column(column, sa.Boolean(), server_default=sa.text("true"), nullable=False),
        )
    op.add_column(
        "event_type",
        sa.Column("digest", sa.dialects.postgresql.JSONB(), nullable=True),
    )
    op.add_column("delivery_attempt", sa.Column("provider", sa.Text(), nullable=True))
    op.add_column("notification_delivery", sa.Column("provider", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("notification_delivery", "provider")
    op.drop_column("delivery_attempt", "provider")
    op.drop_column("event_type", "digest")
    for column in ("slack_enabled", "webhook_enabled"):
        op.drop_column("notification_preference", column)
    op.drop_table("channel_endpoint")
    # Rows naming the new channels would break the old constraints: they must go first.
    op.execute("DELETE FROM notification_delivery WHERE channel IN ('webhook', 'slack')")
    op.execute(
        "UPDATE event_type SET channels = array_remove(array_remove(channels, 'webhook'), 'slack')"
    )
    op.execute(
        "UPDATE user_event_preference "
        "SET channels = array_remove(array_remove(channels, 'webhook'), 'slack') "
        "WHERE channels IS NOT NULL"
    )
    _channel_checks(_OLD_0001)
