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
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from herald.db.engine import make_engine
from herald.db.models import HeldDelivery
from herald.metrics import ERRORS
from herald.producer import AckedProducer
from herald.serde import Record, decode, encode
from herald.settings import DatabaseSettings, KafkaSettings
from herald.status import status_outgoing
from herald.streaming import Outgoing, producer_config
from schemas import Catalogue
from services.router.app import SERVICE

log = logging.getLogger(__name__)

HELD = Counter(
    "herald_quiet_hours_held_total", "Deliveries held for the user's quiet hours", ["channel"]
)
RELEASED = Counter(
    "herald_quiet_hours_released_total",
    "Held deliveries produced to their channel topic when quiet hours ended",
    ["channel"],
)
REVIEWED = Counter(
    "herald_quiet_hours_reviewed_total",
    "Held deliveries decided again after the user's records changed, by outcome (released "
    "early, dropped as opted out, moved to a new release time, kept as held because the row "
    "could not be read (unreadable); services.router.hold_review)",
    ["action"],
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

    def review(self, user_id: str, decide: Callable[[Record, datetime], Any]) -> dict[str, int]:
        """Decide each of ``user_id``'s held deliveries again with ``decide(delivery,
        release_at)`` (a :class:`services.router.hold_review.Decision`): produce the released
        requests and the new statuses, wait until Kafka acknowledged them, then delete the
        released and dropped rows and store the moved and updated ones, in one transaction
        holding the rows' locks. Returns how many rows took each action. Raises
        ``RuntimeError`` if Kafka did not acknowledge everything (nothing changes then)."""
        mine = (
            select(HeldDelivery.delivery_id, HeldDelivery.release_at, HeldDelivery.payload)
            .where(HeldDelivery.user_id == user_id)
            .with_for_update()
        )
        counts: Tally[str] = Tally()
        with self.engine.begin() as connection:
            rows = connection.execute(mine).all()
            if not rows:
                return {}
            records: list[Outgoing] = []
            gone, changed = [], []
            for row in rows:
                payload = bytes(row.payload)
                try:
                    decision = decide(decode(payload, "herald.DeliveryRequest"), row.release_at)
                    delivery = encode("herald.DeliveryRequest", decision.delivery)
                except Exception as exc:
                    # A row this worker cannot read or decide (a payload written by a newer
                    # schema it does not know, a corrupt row): kept as it is, released as held
                    # when its time comes (the sender dead-letters it if it cannot read it
                    # either). Retrying would stall the user's table feeder for good.
                    counts["unreadable"] += 1
                    ERRORS.labels(SERVICE, "quiet_hours.unreadable_row").inc()
                    log.error(
                        "held delivery could not be reviewed; kept as it was held",
                        extra={"delivery_id": str(row.delivery_id), "user_id": user_id,
                               "error": f"{type(exc).__name__}: {exc}"},
                    )  # fmt: skip
                    continue
                counts[decision.action] += 1
                if decision.status is not None:
                    records.append(status_outgoing(self.catalogue, decision.status))
                if decision.action == "release":
                    records.append(self._outgoing(user_id, decision.delivery["channel"], delivery))
                if decision.action in ("release", "drop"):
                    gone.append(row.delivery_id)
                elif delivery != payload or decision.release_at != row.release_at:
                    changed.append((row.delivery_id, decision.release_at, delivery))
            refused = self.producer.deliver(records) if records else []
            if refused:
                raise RuntimeError(
                    f"{len(refused)} of {len(records)} records of a held-delivery review not "
                    f"acknowledged by Kafka: {refused[0].error}"
                )
            if gone:
                connection.execute(delete(HeldDelivery).where(HeldDelivery.delivery_id.in_(gone)))
            for delivery_id, release_at, payload in changed:
                connection.execute(
                    update(HeldDelivery)
                    .where(HeldDelivery.delivery_id == delivery_id)
                    .values(release_at=release_at, payload=payload)
                )
        for action, count in counts.items():
            REVIEWED.labels(action).inc(count)
        return dict(counts)

    def _outgoing(self, user_id: str, channel: str, payload: bytes) -> Outgoing:
        return Outgoing(self.catalogue.for_channel(channel).name, user_id.encode(), payload)

    def _produce(self, rows: Sequence[Any]) -> None:
        records = [self._outgoing(row.user_id, row.channel, bytes(row.payload)) for row in rows]
        refused = self.producer.deliver(records)
        if refused:
            raise RuntimeError(
                f"{len(refused)} of {len(rows)} held deliveries not acknowledged by"
                f" Kafka: {refused[0].error}"
            )
