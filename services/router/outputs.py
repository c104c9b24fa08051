"""The router's output: every record a routed message made, produced through one acknowledged
producer, and the message reported finished only when all of them are on the broker.

The agents iterate their streams with ``noack()``: Faust acknowledges and commits nothing of
the routed topics by itself. :class:`Outputs` reports a message finished to the ledger
(services.router.ledger) once the producer's delivery reports say all its outputs are on the
broker, and the ledger commits a partition's offset only up to its first unfinished record.
Hence no offset is committed before what its record produced is acknowledged by Kafka —
whether the agent is cancelled by a rebalance or a stop, the process is killed, or the broker
refuses records — and the agent never waits for the broker: records are pipelined, bounded by
``max_in_flight`` (backpressure, not stop-and-wait).

A record the broker refused (after librdkafka's own retries, ``message.timeout.ms``) is produced
again with growing pauses until it is acknowledged: its message stays unfinished meanwhile,
``/readyz`` says so, and nothing is lost. An output that can never be produced (larger than
``message.max.bytes``) is replaced by the input record on the events DLQ as
``record.too_large``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from herald.errors import PermanentError
from herald.metrics import ERRORS, Backoff, Health
from herald.observability import H_PUBLISHED_AT, publication_header
from herald.producer import TOO_LARGE, AckedProducer, RecordTooLarge
from herald.streaming import Outgoing
from services.router.ledger import Ledger

log = logging.getLogger(__name__)

#: Makes the DLQ record for a message whose output cannot be produced: (message, error) → record.
DeadLetter = Callable[[Any, PermanentError], Outgoing]


@dataclass(eq=False)
class _Pending:
    """A message (Faust's ``Message``) whose outputs are not all acknowledged yet."""

    message: Any
    waiting: int
    dead_lettered: bool = False


class Outputs:
    """Produce what messages made; report each message finished when its outputs are acked."""

    def __init__(
        self,
        producer: Callable[[], AckedProducer],
        dead_letter: DeadLetter,
        ledger: Ledger,
        *,
        service: str,
        health: Health,
        max_in_flight: int = 20_000,
        on_record_out: Callable[[str], None] = lambda topic: None,
    ) -> None:
        self._make_producer = producer
        self._producer: AckedProducer | None = None
        self._dead_letter = dead_letter
        self.ledger = ledger
        self.service = service
        self.health = health
        self.max_in_flight = max_in_flight
        self._on_record_out = on_record_out
        #: Records handed to the producer whose report has not been served yet.
        self.in_flight = 0
        self._refused: list[tuple[Outgoing, _Pending]] = []
        self._retry_at = 0.0
        self._backoff = Backoff(initial=0.5, maximum=30.0)

    @property
    def producer(self) -> AckedProducer:
        if self._producer is None:
            self._producer = self._make_producer()
        return self._producer

    def fit(self, outgoing: Sequence[Outgoing]) -> bool:
        """Whether the broker can take every one of ``outgoing`` (``message.max.bytes``)."""
        return all(self.producer.fits(record) for record in outgoing)

    async def submit(self, message: Any, outgoing: Sequence[Outgoing]) -> None:
        """Produce ``outgoing`` (what ``message`` made, already reported ``received`` to the
        ledger); the message is finished when all are acked."""
        if not outgoing:
            self.ledger.finished(message.tp, message.offset)
            return
        pending = _Pending(message, len(outgoing))
        # When the event was published, for herald_delivery_latency_seconds downstream.
        stamp = publication_header(message)
        if stamp is not None:
            for record in outgoing:
                if all(name != H_PUBLISHED_AT for name, _ in record.headers):
                    record.headers = [*record.headers, stamp]
        producer = self.producer
        if not self.fit(outgoing):
            largest = max(outgoing, key=producer.size)
            error = RecordTooLarge(
                f"an output of {producer.size(largest)} bytes for {largest.topic} exceeds "
                f"message.max.bytes={producer.max_bytes}"
            )
            outgoing = [self._dead_letter(message, error)]
            pending.waiting = 1
        for record in outgoing:
            self._send(record, pending)
        producer.poll(0)
        while self.in_flight > self.max_in_flight:
            await self.serve_once(0.005)

    async def serve_once(self, pause: float) -> None:
        """Serve delivery reports (which finish messages), produce refused ones again."""
        if self._producer is not None:
            self._producer.poll(0)
        if self._refused and time.monotonic() >= self._retry_at:
            refused, self._refused = self._refused, []
            for record, pending in refused:
                self._send(record, pending)
        await asyncio.sleep(pause)

    async def serve(self) -> None:
        """Serve reports for as long as the process runs (an ``app.task``)."""
        while True:
            await self.serve_once(0.002 if self.in_flight else 0.02)

    def flush(self, timeout: float) -> int:
        """Wait for the reports of what is queued (on stop); return how many are missing."""
        if self._producer is None:
            return 0
        remaining = self._producer.flush(timeout)
        if remaining:
            log.error("router stopped with records not acknowledged", extra={"count": remaining})
        return remaining

    def _send(self, record: Outgoing, pending: _Pending) -> None:
        def done(sent: Outgoing, error: KafkaError | None) -> None:
            self.in_flight -= 1
            if error is None:
                self._acknowledged(pending)
            elif error.code() in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE):
                self._too_large(pending, sent, error.str())
            else:
                self._refuse(sent, pending, error.str())

        self.in_flight += 1
        try:
            self.producer.send(record, done)
        except RecordTooLarge as exc:
            self.in_flight -= 1
            self._too_large(pending, record, exc.message)
            return
        except KafkaException as exc:  # e.g. the producer is shutting down: try again later
            self.in_flight -= 1
            self._refuse(record, pending, str(exc))
            return
        self._on_record_out(record.topic)

    def _acknowledged(self, pending: _Pending) -> None:
        pending.waiting -= 1
        if pending.waiting == 0:
            self.ledger.finished(pending.message.tp, pending.message.offset)
        if not self._refused and self._backoff.current:
            self._backoff.reset()
            self.health.recovered(self.service, "producer")

    def _too_large(self, pending: _Pending, record: Outgoing, detail: str) -> None:
        """An output the broker will never take: the input goes to the DLQ instead (once)."""
        if pending.dead_lettered:
            self._acknowledged(pending)  # its slot is taken by the DLQ record already sent
            return
        pending.dead_lettered = True
        ERRORS.labels(self.service, TOO_LARGE).inc()
        self._send(self._dead_letter(pending.message, RecordTooLarge(detail)), pending)

    def _refuse(self, record: Outgoing, pending: _Pending, detail: str) -> None:
        ERRORS.labels(self.service, "router.produce").inc()
        if not self._refused:
            pause = self._backoff.next()
            log.error(
                "a record was not acknowledged by the broker; producing it again",
                extra={"topic": record.topic, "error": detail, "retry_in_s": pause},
            )
            self._retry_at = time.monotonic() + pause
            self.health.degraded(self.service, "producer", f"the broker refuses records: {detail}")
        self._refused.append((record, pending))
