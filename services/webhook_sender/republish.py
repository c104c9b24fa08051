"""After a 410 disabled an endpoint: the user's record goes out again, without it.

The router learns a user's endpoints from the user record on ``herald.users.v1``
(``herald.User.endpoints``), which the admin API publishes after every endpoint change. An
endpoint the sender disabled after a 410 is still on that record, so the router would go on
routing to it and the sender on reporting those deliveries ``skipped``
(``endpoint.disabled``). :class:`UserRepublisher` publishes the user's record as PostgreSQL
now has it (enabled endpoints only), under the same advisory lock as the admin API's writes
(:func:`herald.userrecords.record_lock`), so the two cannot publish out of order.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from herald.producer import AckedProducer
from herald.settings import KafkaSettings
from herald.streaming import producer_config
from herald.userrecords import current_user_outgoing, record_lock
from schemas import Catalogue

log = logging.getLogger(__name__)


class UserRepublisher:
    """Publishes a user's current record (see the module docstring); the producer is made on
    first use, so a sender that never meets a 410 opens no extra Kafka connection."""

    def __init__(self, engine: Engine, kafka: KafkaSettings, topics: Catalogue) -> None:
        self.engine = engine
        self.kafka = kafka
        self.topics = topics
        self._producer: AckedProducer | None = None
        self._lock = threading.Lock()  # 410s are rare: one publish at a time

    def __call__(self, user_id: str) -> bool:
        """Publish ``user_id``'s record; whether it was acknowledged. A failure is logged, not
        raised: the delivery's outcome (the 410) stands, and the endpoint stays disabled in
        PostgreSQL; the router keeps routing to it (deliveries ``skipped``) until the user's
        record is published again (the next change of the user or their endpoints)."""
        try:
            with self._lock, Session(self.engine) as session, record_lock(session, "user", user_id):
                record = current_user_outgoing(session, self.topics, user_id)
                if record is None:
                    return False  # erased meanwhile: nothing to publish
                refused = self._producer_().deliver([record])
                if refused:
                    raise RuntimeError(refused[0].error)
            return True
        except Exception:
            log.warning(
                "could not publish the user after disabling an endpoint; the router routes to "
                "it (deliveries skipped) until the user's next change",
                exc_info=True,
                extra={"user_id": user_id},
            )
            return False

    def _producer_(self) -> AckedProducer:
        if self._producer is None:
            self._producer = AckedProducer(producer_config(self.kafka))
        return self._producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(5.0)
