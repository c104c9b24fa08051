"""Held deliveries: email and SMS held back during a user's quiet hours.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-27

Hand-written to match ``HeldDelivery`` in herald/db/models.py.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``held_delivery`` and its index on ``release_at``."""
    op.create_table(
        "held_delivery",
        sa.Column("delivery_id", sa.UUID(), nullable=False),
        sa.Column("notification_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("release_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_held_delivery")),
        sa.CheckConstraint(
            "channel IN ('email', 'sms')", name=op.f("ck_held_delivery_channel_holdable")
        ),
    )
    op.create_index(op.f("ix_held_delivery_release_at"), "held_delivery", ["release_at"])


def downgrade() -> None:
    """Drop ``held_delivery``. Deliveries still held are lost: release them first."""
    op.drop_index(op.f("ix_held_delivery_release_at"), table_name="held_delivery")
    op.drop_table("held_delivery")
