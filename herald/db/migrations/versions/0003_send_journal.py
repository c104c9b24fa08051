"""The senders' send journal: claimed before a provider is called, confirmed after.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Hand-written to match ``SendJournal`` in herald/db/models.py.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``send_journal``."""
    op.create_table(
        "send_journal",
        sa.Column("delivery_id", sa.UUID(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("provider_message_id", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_send_journal")),
        sa.CheckConstraint(
            "state IN ('sending', 'sent')", name=op.f("ck_send_journal_state_known")
        ),
        sa.CheckConstraint("attempt >= 1", name=op.f("ck_send_journal_attempt_positive")),
    )


def downgrade() -> None:
    """Drop ``send_journal``; senders then forget which sends a crash left unconfirmed."""
    op.drop_table("send_journal")
