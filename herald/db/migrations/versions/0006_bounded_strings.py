"""Bounded strings as database constraints: ids and codes of at most 255 characters.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

The ingest API (422) and the router (``record.invalid_id``) already refuse an id longer than
``herald.identity.MAX_ID_LENGTH``; inapp_store refuses one written straight to its topics.
These CHECK constraints make PostgreSQL say the same to any other writer, so that no id longer
than a btree index entry can hold is ever stored (a 3,000-character user id in
``notification`` used to make the inbox index refuse every retry of a batch).

The limit is written here by value (255), not imported: a migration is frozen as it was
applied; a later change of ``MAX_ID_LENGTH`` needs a migration of its own. The models declare
the same constraints (``herald.db.models``, ``*_length``).

Adding a CHECK constraint scans the table under an ACCESS EXCLUSIVE lock; each table is
altered in one statement, so it is scanned once. Rows written by Herald obey already (their ids
were bounded before they were stored); a row that does not makes the upgrade fail, naming the
constraint: find it with ``SELECT ... WHERE char_length(user_id) > 255``. On a very large
``notification`` table, an operator may instead add the constraints ``NOT VALID`` and run
``VALIDATE CONSTRAINT`` in a later transaction (which takes a weaker lock), then stamp this
revision.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: herald.identity.MAX_ID_LENGTH when this migration was written.
MAX_ID_LENGTH = 255

#: table -> the id and code columns bounded to MAX_ID_LENGTH characters. delivery_attempt and
#: send_journal hold uuids (and the channel, checked against the known channels) only.
BOUNDED: dict[str, tuple[str, ...]] = {
    "event_type": ("code",),
    "user_account": ("id",),
    "notification_preference": ("user_id",),
    "user_event_preference": ("user_id", "event_type_code"),
    "notification": ("user_id", "event_type"),
    "notification_delivery": ("user_id",),
    "known_device": ("user_id", "device_id"),
    "held_delivery": ("user_id",),
}


def _name(table: str, column: str) -> str:
    # The models' naming convention: ck_<table>_<constraint name>, the name being <column>_length.
    return f"ck_{table}_{column}_length"


def upgrade() -> None:
    """Add ``CHECK (char_length(<column>) <= 255)`` on every id and code column."""
    for table, columns in BOUNDED.items():
        clauses = ", ".join(
            f"ADD CONSTRAINT {_name(table, column)} "
            f"CHECK (char_length({column}) <= {MAX_ID_LENGTH})"
            for column in columns
        )
        op.execute(f"ALTER TABLE {table} {clauses}")


def downgrade() -> None:
    """Drop the length constraints."""
    for table, columns in BOUNDED.items():
        clauses = ", ".join(f"DROP CONSTRAINT {_name(table, column)}" for column in columns)
        op.execute(f"ALTER TABLE {table} {clauses}")
