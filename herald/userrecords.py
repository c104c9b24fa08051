"""A user's record on the compacted ``herald.users.v1``, built from PostgreSQL, and the lock
that keeps that topic's last record per user the same as the database.

Whoever changes what a user record carries (the admin API's user and endpoint writes, the
webhook sender disabling an endpoint after a 410) commits to PostgreSQL and then publishes the
record, under :func:`record_lock`, so two writers cannot publish in the opposite order of their
commits and leave the router on an older version for good.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from herald.db.models import ChannelEndpoint, UserAccount
from herald.serde import encode
from herald.streaming import Outgoing
from schemas import Catalogue

log = logging.getLogger(__name__)

SCHEMA = "herald.User"
USER = cast(Table, UserAccount.__table__)
ENDPOINT = cast(Table, ChannelEndpoint.__table__)

# First key of every advisory lock Herald takes (the second is the record's key hash), so
# they cannot collide with advisory locks other code may take.
_LOCK_CLASS = 0x48524C44  # "HRLD"


@contextmanager
def record_lock(session: Session, kind: str, key: str) -> Iterator[None]:
    """Serialise writers of one record across its database commit *and* its Kafka publish.

    Every write commits to PostgreSQL, then publishes the record to a compacted topic, whose
    last record per key is what the router believes. Two concurrent writes of one key could
    commit in one order and publish in the other, leaving Kafka on the older version for
    good; holding a PostgreSQL advisory lock (any process, any replica) from before the write
    until after the publish keeps both orders the same.
    """
    lock_key = func.hashtext(f"{kind}:{key}")
    session.execute(select(func.pg_advisory_lock(_LOCK_CLASS, lock_key)))
    # A session-level lock outlives this transaction; end it so the caller starts afresh.
    session.commit()
    try:
        yield
    finally:
        try:
            session.rollback()
            session.execute(select(func.pg_advisory_unlock(_LOCK_CLASS, lock_key)))
            session.commit()
        except Exception:
            # A lock left on a pooled connection would block this key until it is reused;
            # dropping the connection releases it.
            log.exception("could not release advisory lock; dropping the connection")
            session.connection().invalidate()


def user_record(
    row: Mapping[Any, Any], endpoints: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``herald.User`` record of a stored ``user_account`` row and the user's enabled
    endpoints (:func:`enabled_endpoints`)."""
    return {
        "user_id": row["id"],
        "email": row["email"],
        "phone": row["phone"],
        "locale": row["locale"],
        "timezone": row["timezone"],
        "display_name": row["display_name"],
        "endpoints": dict(endpoints or {}),
        "updated_at": row["updated_at"],
    }


def enabled_endpoints(session: Session, user_id: str) -> dict[str, str]:
    """The user's enabled endpoints as the user record carries them: kind -> URL."""
    rows = session.execute(
        select(ENDPOINT.c.kind, ENDPOINT.c.url)
        .where(ENDPOINT.c.user_id == user_id, ENDPOINT.c.enabled)
        .order_by(ENDPOINT.c.kind)
    )
    return {kind: url for kind, url in rows}


def user_outgoing(
    topics: Catalogue, row: Mapping[Any, Any], endpoints: Mapping[str, str]
) -> Outgoing:
    """The user's record for the compacted ``herald.users.v1``, keyed by user id. Read
    ``endpoints`` in the transaction that wrote ``row``, under the user's record lock."""
    return Outgoing(topics.users.name, row["id"], encode(SCHEMA, user_record(row, endpoints)))


def current_user_outgoing(session: Session, topics: Catalogue, user_id: str) -> Outgoing | None:
    """The user's record as PostgreSQL has it now (None for a user that is not there, e.g.
    erased); call it under :func:`record_lock` and publish before releasing the lock."""
    with session.begin():
        row = session.execute(select(USER).where(USER.c.id == user_id)).mappings().first()
        if row is None:
            return None
        return user_outgoing(topics, row, enabled_endpoints(session, user_id))
