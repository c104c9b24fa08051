"""Indexes for the user data lifecycle: erasure, export and retention.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

- ``ix_notification_delivery_user_id``: erasure and export find a user's deliveries, including
  ``skipped`` ones whose notification was never made (no ``notification`` row to join from).
- ``ix_notification_created_at`` and ``ix_notification_delivery_created_at``: retention deletes
  notifications and their deliveries older than ``RETENTION_NOTIFICATIONS_DAYS``, oldest first.
- ``ix_delivery_attempt_occurred_at``: retention deletes attempts older than
  ``RETENTION_ATTEMPTS_DAYS``.
- ``ix_send_journal_updated_at``: retention deletes journal rows older than
  ``RETENTION_JOURNAL_DAYS``.
- ``ix_held_delivery_user_id``: a change of a user's record or preferences reviews that user's
  held deliveries (quiet hours follow changes); erasure deletes them.

``CREATE INDEX`` blocks writes to its table while it builds. On a large live database, build
them first with ``CREATE INDEX CONCURRENTLY IF NOT EXISTS <name> ON <table> (<column>)``;
this migration then finds them and skips them (``IF NOT EXISTS``).
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (index, table, column), as herald/db/models.py names them.
INDEXES = (
    ("ix_notification_delivery_user_id", "notification_delivery", "user_id"),
    ("ix_notification_created_at", "notification", "created_at"),
    ("ix_notification_delivery_created_at", "notification_delivery", "created_at"),
    ("ix_delivery_attempt_occurred_at", "delivery_attempt", "occurred_at"),
    ("ix_send_journal_updated_at", "send_journal", "updated_at"),
    ("ix_held_delivery_user_id", "held_delivery", "user_id"),
)


def upgrade() -> None:
    """Create the six indexes (kept if they exist already)."""
    for name, table, column in INDEXES:
        op.create_index(name, table, [column], if_not_exists=True)


def downgrade() -> None:
    """Drop them; erasure, export and retention then scan their tables."""
    for name, table, _column in INDEXES:
        op.drop_index(name, table_name=table, if_exists=True)
