"""The users' endpoints of one kind, read from PostgreSQL at send time.

A DeliveryRequest carries the URL the router knew (``destination``), but the sender sends to
what ``channel_endpoint`` says now: the URL may have changed, the endpoint may have been
deleted or disabled since the delivery was routed, and the secret never travels on Kafka.
:meth:`EndpointStore.prefetch` reads the endpoints of a whole batch in one query, kept for the
whole batch however long it takes; a lookup outside a batch reads its row alone (cached for
``ttl`` seconds).

A database that does not answer is a transient fault, never a reason to exit: a prefetch that
fails is logged and leaves the batch to single reads, and a single read that fails raises
:class:`~herald.errors.RetryableError` (``endpoint.db``) before anything was posted, so the
claim is released and the delivery goes to its retry tier.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.sql import func

from herald.db.models import ChannelEndpoint as Row
from herald.errors import RetryableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    url: str
    secret: str | None
    enabled: bool


class EndpointStore:
    """Endpoints of ``kind`` per user, cached for ``ttl`` seconds; safe across threads."""

    def __init__(
        self,
        engine: Engine,
        kind: str,
        *,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.kind = kind
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, Endpoint | None]] = {}
        #: The current batch's endpoints (the last prefetch), valid until the next one.
        self._batch: dict[str, Endpoint | None] = {}
        self._lock = threading.Lock()

    def _read(self, user_ids: Iterable[str]) -> dict[str, Endpoint | None]:
        ids = sorted(set(user_ids))
        found: dict[str, Endpoint | None] = dict.fromkeys(ids)
        query = select(Row.user_id, Row.url, Row.secret, Row.enabled).where(
            Row.kind == self.kind, Row.user_id.in_(ids)
        )
        with self.engine.connect() as conn:
            for user_id, url, secret, enabled in conn.execute(query):
                found[user_id] = Endpoint(url, secret, enabled)
        return found

    def _store(self, found: dict[str, Endpoint | None]) -> None:
        now = self.clock()
        with self._lock:
            if len(self._cache) > 100_000:
                self._cache = {k: v for k, v in self._cache.items() if now - v[0] <= self.ttl}
            for user_id, endpoint in found.items():
                self._cache[user_id] = (now, endpoint)

    def prefetch(self, user_ids: Iterable[str]) -> None:
        """Read the endpoints of every user in ``user_ids`` (one query) for this batch."""
        ids = set(user_ids)
        found: dict[str, Endpoint | None] = {}
        if ids:
            try:
                found = self._read(ids)
            except (DBAPIError, PoolTimeout):
                log.warning("could not read the batch's endpoints; reading them one by one",
                            exc_info=True)  # fmt: skip
            self._store(found)
        with self._lock:
            self._batch = found

    def get(self, user_id: str) -> Endpoint | None:
        """The user's endpoint of this kind, or None when there is none. RetryableError
        (``endpoint.db``) when the database does not answer."""
        with self._lock:
            if user_id in self._batch:
                return self._batch[user_id]
            cached = self._cache.get(user_id)
        if cached is not None and self.clock() - cached[0] <= self.ttl:
            return cached[1]
        try:
            found = self._read([user_id])
        except (DBAPIError, PoolTimeout) as exc:
            raise RetryableError(
                f"the endpoint could not be read: {type(exc).__name__}", error_class="endpoint.db"
            ) from None
        self._store(found)
        return found[user_id]

    def disable(self, user_id: str, url: str, reason: str) -> bool:
        """Disable the user's endpoint if it still points at ``url`` (one re-registered since
        is left alone); whether a row changed."""
        statement = (
            update(Row)
            .where(
                Row.user_id == user_id,
                Row.kind == self.kind,
                Row.url == url,
                Row.enabled.is_(True),
            )
            .values(
                enabled=False,
                disabled_reason=reason[:500],
                disabled_at=func.now(),
                updated_at=func.now(),
            )
        )
        try:
            with self.engine.begin() as conn:
                changed = conn.execute(statement).rowcount > 0
        except (DBAPIError, PoolTimeout):
            # The 410 is still reported (the delivery fails); the next 410 disables it.
            log.warning("could not disable the endpoint", exc_info=True, extra={"user": user_id})
            return False
        with self._lock:
            cached = self._cache.get(user_id)
            if cached is not None and cached[1] is not None and cached[1].url == url:
                old = cached[1]
                self._cache[user_id] = (cached[0], Endpoint(old.url, old.secret, False))
            current = self._batch.get(user_id)
            if current is not None and current.url == url:
                self._batch[user_id] = Endpoint(current.url, current.secret, False)
        return changed
