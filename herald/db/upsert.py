"""One way to write "insert or update, and give me the row": PostgreSQL's ``INSERT ... ON
CONFLICT (key) DO UPDATE`` setting every given column (and ``updated_at``) to the new value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, literal_column
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.sql.expression import Executable


def upsert(
    table: Table, values: Mapping[str, Any] | Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> Executable:
    """``INSERT`` of ``values`` (one row or several with the same columns); a row whose ``keys``
    exist already gets the other given columns and ``updated_at = now()``. Returns every column
    of the rows written."""
    first = values if isinstance(values, Mapping) else values[0]
    statement = insert(table).values(values)
    updates: dict[str, Any] = {name: statement.excluded[name] for name in first if name not in keys}
    return statement.on_conflict_do_update(
        index_elements=[table.c[key] for key in keys],
        set_={**updates, "updated_at": literal_column("now()")},
    ).returning(*table.c)
