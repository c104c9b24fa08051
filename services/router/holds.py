"""Deliveries held for quiet hours: stored in PostgreSQL, released to their channel topics.

The router's agent stores a held delivery (:meth:`HoldStore.hold`) before it lets Faust commit
the offset of the record that made it, so a held delivery is never lost: a crash in between
routes the record again, and the insert ignores a row that is already there (the delivery id
is the key). The release loop (:meth:`HoldStore.release_due`, on a Faust timer, one worker)
takes the due rows oldest first with ``FOR UPDATE SKIP LOCKED``, produces each payload to its
channel's deliveries topic, waits until Kafka acknowledged every one, and only then deletes
the rows and commits. If anything fails in between, the transaction rolls back and the rows
are released again on the next tick; some may then reach the topic twice. That is harmless:
a sender never sends a delivery id it has already sent (herald.sender checks its journal and
the delivery's status in PostgreSQL), so the user still gets one message.

Both methods block (database and Kafka round trips): the agents call them in a thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.dialects.postgresql import insert

from herald.db.engine import make_engine
from herald.db.models import HeldDelivery
from herald.producer import AckedProducer
from herald.settings import DatabaseSettings, KafkaSettings
from herald.streaming import Outgoing, producer_config
from schemas import Catalogue

log = logging.getLogger(__name__)

HELD = Counter(
    "herald_quiet_hours_held_total", "Deliveries held for the user's quiet hours", ["channel"]
)
RELEASED = Counter(
    "herald_quiet_hours_released_total",
    "Held deliveries produced to their channel topic when quiet hours ended",
    ["channel"],
)

#: How long the release loop waits for Kafka to acknowledge one batch (its rows stay locked
#: meanwhile): librdkafka reports every record within this.
_DELIVERY_TIMEOUT_MS = 30_000


class HoldStore:
    """The ``held_delivery`` table and the producer that releases its rows.

    The engine and the producer are made on first use, so a router that never meets quiet
    hours never opens a database connection for them.
    """

    def __init__(
        self, database: DatabaseSettings, kafka: KafkaSettings, catalogue: Catalogue
    ) -> None:
        self.database = database
        self.kafka = kafka
        self.catalogue = catalogue
        self._engine: Engine | None = None
        self._producer: AckedProducer | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.database, pool_size=2, max_overflow=2)
            return self._engine

    @property
    def producer(self) -> AckedProducer:
        with self._lock:
            if self._producer is None:
                self._producer = AckedProducer(
                    producer_config(self.kafka, **{"message.timeout.ms": _DELIVERY_TIMEOUT_MS})
                )
            return self._producer

    def hold(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store held deliveries (rows of :func:`services.router.routing.held_rows`); a row
        whose delivery id is already held is left as it is."""
        if not rows:
            return
        statement = insert(HeldDelivery).on_conflict_do_nothing(index_elements=["delivery_id"])
        with self.engine.begin() as connection:
            connection.execute(statement, list(rows))
        for row in rows:
            HELD.labels(row["channel"]).inc()

    def release_due(self, limit: int = 500) -> int:
        """Produce up to ``limit`` held deliveries whose ``release_at`` has come (by the
        database's clock, the one clock every router worker shares) to their channel topics,
        then delete them. Returns how many were released. Raises ``RuntimeError`` if Kafka
        did not acknowledge them all (nothing is deleted then)."""
        due = (
            select(
                HeldDelivery.delivery_id,
                HeldDelivery.user_id,
                HeldDelivery.channel,
                HeldDelivery.payload,
            )
            .where(HeldDelivery.release_at <= func.now())
            .order_by(HeldDelivery.release_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self.engine.begin() as connection:
            rows = connection.execute(due).all()
            if not rows:
                return 0
            self._produce(rows)
            ids = [row.delivery_id for row in rows]
            connection.execute(delete(HeldDelivery).where(HeldDelivery.delivery_id.in_(ids)))
        for row in rows:
            RELEASED.labels(row.channel).inc()
        return len(rows)

    def _produce(self, rows: Sequence[Any]) -> None:
        records = [
            Outgoing(
                self.catalogue.for_channel(row.channel).name,
                row.user_id.encode(),
                bytes(row.payload),
            )
            for row in rows
        ]
        refused = self.producer.deliver(records)
        if refused:
            raise RuntimeError(
                f"{len(refused)} of {len(rows)} held deliveries not acknowledged by"
                f" Kafka: {refused[0].error}"
            )
