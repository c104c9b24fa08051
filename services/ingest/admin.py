"""What every admin write does: lock the record, commit it to PostgreSQL, publish it to its
compacted topic, and answer 503 (with what to do) when Kafka fails after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from herald.streaming import Outgoing
from herald.webapi import Problem
from services.ingest.publisher import Publisher, PublishError

log = logging.getLogger(__name__)

# First key of every advisory lock this service takes (the second is the record's key hash),
# so they cannot collide with advisory locks other code may take.
_LOCK_CLASS = 0x48524C44  # "HRLD"


@contextmanager
def record_lock(session: Session, kind: str, key: str) -> Iterator[None]:
    """Serialise writers of one record across its database commit *and* its Kafka publish.

    Every admin write commits to PostgreSQL, then publishes the record to a compacted topic,
    whose last record per key is what the router believes. Two concurrent writes of one key
    could commit in one order and publish in the other, leaving Kafka on the older version
    for good; holding a PostgreSQL advisory lock (any process, any replica) from before the
    write until after the publish keeps both orders the same.
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


def publish_or_503(
    publisher: Publisher, records: Sequence[Outgoing], *, saved: str, retry: str
) -> None:
    """Publish after a committed write; a Kafka failure becomes a 503 that says what to do."""
    try:
        publisher.publish(records)
    except PublishError as exc:
        raise Problem(
            503,
            "Kafka unavailable",
            f"{saved} in PostgreSQL but could not be published to Kafka ({exc}); {retry}",
            kind="kafka-unavailable",
            headers={"Retry-After": "5"},
        ) from exc
