"""The ingest API's Kafka producer: one confluent-kafka producer for the whole process, and a
``publish`` that returns only when the broker has acknowledged every record of the call.

A request is answered after its records are durable on Kafka (``acks=all``), never before.
Records of concurrent requests share the producer's batches; each call waits only for its own
acknowledgements, which a background thread collects (``poll``), so one busy request never
holds up another the way a process-wide ``flush`` would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException

from herald.metrics import RECORDS_OUT, labelled
from herald.producer import AckedProducer, RecordTooLarge
from herald.settings import KafkaSettings
from herald.streaming import Outgoing, producer_config

log = logging.getLogger(__name__)


class PublishError(Exception):
    """Kafka did not acknowledge every record in time (broker down, topic missing, ...)."""


class _Acks:
    """Delivery reports of one ``publish`` call."""

    def __init__(self, expected: int) -> None:
        self.remaining = expected
        self.errors: list[KafkaError] = []
        self._lock = threading.Lock()
        self._done = threading.Event()

    def on_delivery(self, _record: Outgoing, err: KafkaError | None) -> None:
        with self._lock:
            if err is not None:
                self.errors.append(err)
            self.remaining -= 1
            if self.remaining <= 0:
                self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


class Publisher:
    """Publishes records and waits for their acknowledgements; thread-safe.

    ``timeout_s`` bounds the wait: it is also librdkafka's ``message.timeout.ms``, so a record
    that cannot be delivered in time is reported failed (and not sent later behind the
    client's back after it was told 503).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        timeout_s: float = 10.0,
        service: str = "ingest",
    ) -> None:
        self.timeout_s = timeout_s
        self.service = service
        self._producer = AckedProducer(
            producer_config(
                kafka,
                **{
                    "message.timeout.ms": int(timeout_s * 1000),
                    "client.id": service,
                    # librdkafka's own log lines go through logging (JSON), not raw stderr.
                    "logger": logging.getLogger("librdkafka"),
                },
            )
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        # Serves delivery callbacks for every request thread.
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def publish(self, records: Sequence[Outgoing]) -> None:
        """Produce ``records`` and return once Kafka acknowledged all of them.

        Raises :class:`PublishError` if any record was refused or not acknowledged within
        ``timeout_s``; some records of the call may then be on Kafka, so callers make records
        idempotent (stable ids, compacted keys) and let clients retry.
        """
        if not records:
            return
        acks = _Acks(len(records))
        deadline = time.monotonic() + self.timeout_s
        for record in records:
            self._produce(record, acks, deadline)
        # librdkafka reports each record by message.timeout.ms at the latest; the margin only
        # covers the report reaching us.
        if not acks.wait(max(deadline - time.monotonic(), 0) + 5.0):
            raise PublishError(
                f"Kafka did not acknowledge {acks.remaining} of {len(records)} records "
                f"within {self.timeout_s:g} s"
            )
        if acks.errors:
            raise PublishError(
                f"Kafka refused {len(acks.errors)} of {len(records)} records: {acks.errors[0]}"
            )
        for record in records:
            labelled(RECORDS_OUT, self.service, record.topic).inc()

    def _produce(self, record: Outgoing, acks: _Acks, deadline: float) -> None:
        try:
            # A full local queue is waited on, but not past the deadline.
            self._producer.send(record, acks.on_delivery, wait_until=deadline)
        except BufferError:
            raise PublishError("Kafka producer queue stayed full; try again") from None
        except (KafkaException, RecordTooLarge) as exc:
            raise PublishError(f"Kafka refused a record for {record.topic}: {exc}") from exc

    def topics(self, timeout: float) -> set[str]:
        """Names of the topics the cluster has (a metadata request: proves Kafka answers)."""
        try:
            metadata = self._producer.raw.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise PublishError(f"Kafka did not answer a metadata request: {exc}") from exc
        return set(metadata.topics)

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is still queued (up to ``timeout``), then stop the poller."""
        remaining = self._producer.flush(timeout)
        self._stop.set()
        self._poller.join(timeout=5)
        if remaining:
            log.warning("producer closed with undelivered records", extra={"count": remaining})
