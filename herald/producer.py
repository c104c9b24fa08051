"""One acknowledged producer for every Herald process (routers, senders, stores, the CLI).

A record counts as produced only when the broker acknowledged it (its delivery report came back
without an error). Everything that depends on that — committing the offset of the record that
made it, telling an operator a dead letter was replayed, answering 202 — waits for the report.

- ``BufferError`` (librdkafka's local queue is full) is backpressure: serve delivery reports
  and try again; never a crash.
- A record larger than the producer's ``message.max.bytes`` can never be produced: it is
  reported as :class:`RecordTooLarge` (error class ``record.too_large``), a permanent error the
  caller routes to a dead-letter topic.
- Two faces: :meth:`AckedProducer.send` with a per-record callback (pipelined: the router
  acknowledges each input record when all its outputs are acked), and :meth:`deliver`, which
  produces a list and waits for every report (the CLI, the batch loop).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from herald.errors import PermanentError
from herald.streaming import Outgoing

log = logging.getLogger(__name__)

#: Called once per record with its delivery error (None when the broker acknowledged it).
OnDone = Callable[[Outgoing, KafkaError | None], None]

TOO_LARGE = "record.too_large"


class RecordTooLarge(PermanentError):
    """The record is larger than the producer (or the broker) accepts: it never will be."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_class=TOO_LARGE)


@dataclass(frozen=True)
class Refused:
    """A record the broker did not acknowledge, and why."""

    record: Outgoing
    error: str
    error_class: str

    @property
    def permanent(self) -> bool:
        return self.error_class == TOO_LARGE


_TOO_LARGE_CODES = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}


def _size(record: Outgoing) -> int:
    key = record.key.encode() if isinstance(record.key, str) else (record.key or b"")
    size = len(key) + len(record.value or b"")
    for name, value in record.headers:
        size += len(name) + len(value.encode() if isinstance(value, str) else (value or b""))
    return size


class AckedProducer:
    """A confluent-kafka producer whose every record is accounted for by a delivery report."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = dict(config)
        # librdkafka's own default (1,000,000) when not configured; checked before produce()
        # so an oversize record is refused with its size, not after a round trip.
        self.max_bytes = int(self.config.get("message.max.bytes", 1_000_000))
        self._producer = Producer(self.config)

    @property
    def raw(self) -> Producer:
        """The underlying confluent-kafka producer (for metadata calls and tests)."""
        return self._producer

    @staticmethod
    def size(record: Outgoing) -> int:
        """The bytes of ``record``'s key, value and headers (what ``message.max.bytes`` bounds,
        less a little framing)."""
        return _size(record)

    def fits(self, record: Outgoing) -> bool:
        """Whether ``record`` is small enough to be produced at all."""
        return _size(record) <= self.max_bytes

    def send(self, record: Outgoing, on_done: OnDone, *, wait_until: float | None = None) -> None:
        """Queue ``record``; ``on_done`` is called from :meth:`poll` (or a flush) with its report.

        Waits (serving reports) while the local queue is full — until ``wait_until``
        (``time.monotonic()``) if given, then raises ``BufferError``. Raises
        :class:`RecordTooLarge` for a record that can never be produced. ``on_done`` is not
        called when ``send`` raises.
        """
        if not self.fits(record):
            raise RecordTooLarge(
                f"record of {_size(record)} bytes for {record.topic} exceeds "
                f"message.max.bytes={self.max_bytes}"
            )

        def report(error: KafkaError | None, _message: Message) -> None:
            on_done(record, error)

        while True:
            try:
                self._producer.produce(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    headers=record.headers,
                    on_delivery=report,
                )
                return
            except BufferError:
                if wait_until is not None and time.monotonic() > wait_until:
                    raise
                self._producer.poll(0.05)  # the local queue is full: backpressure
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() in _TOO_LARGE_CODES:
                    raise RecordTooLarge(f"{record.topic}: {error.str()}") from None
                raise

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery reports (calling the ``on_done`` of each); return how many."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` for every queued record's report; return how many remain."""
        return int(self._producer.flush(timeout))

    def in_flight(self) -> int:
        """Records queued or sent whose report has not been served yet."""
        return len(self._producer)

    def deliver(self, records: Sequence[Outgoing]) -> list[Refused]:
        """Produce ``records`` and wait for every one's delivery report.

        librdkafka reports every record within ``message.timeout.ms`` (delivered, refused or
        timed out), so this returns, and what it returns is the truth: the records the broker
        did not acknowledge — refused, too large, or timed out — for the caller to report or
        keep (a dead letter whose replay was refused stays on the DLQ).
        """
        refused: list[Refused] = []
        waiting = [0]

        def done(record: Outgoing, error: KafkaError | None) -> None:
            waiting[0] -= 1
            if error is not None:
                code = TOO_LARGE if error.code() in _TOO_LARGE_CODES else "kafka.produce"
                refused.append(Refused(record, error.str(), code))

        for record in records:
            try:
                self.send(record, done)
                waiting[0] += 1
            except RecordTooLarge as exc:
                refused.append(Refused(record, exc.message, TOO_LARGE))
        while waiting[0] > 0:
            self._producer.flush(1.0)
        return refused

    def close(self, timeout: float = 30.0) -> int:
        """Flush what is queued; return how many records were left unreported."""
        remaining = self.flush(timeout)
        if remaining:
            log.error("producer closed with records not acknowledged", extra={"count": remaining})
        return remaining
