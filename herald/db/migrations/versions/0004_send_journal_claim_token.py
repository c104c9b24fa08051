"""send_journal.claim_token: who holds a claim, so claims are compare-and-set.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

A claim is taken only if nobody holds one (or, taking over an unconfirmed claim, only if it
is still the one the sender read), and a sender releases only its own claim. The token also
tells a sender whose claim statement lost its connection whether the claim went through.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``send_journal.claim_token`` (NULL on claims made before it existed)."""
    op.add_column("send_journal", sa.Column("claim_token", sa.UUID(), nullable=True))


def downgrade() -> None:
    """Drop ``send_journal.claim_token``."""
    op.drop_column("send_journal", "claim_token")
