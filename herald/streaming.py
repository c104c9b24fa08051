"""The Kafka adapter every confluent-kafka service shares: client configs, failure headers,
and a batch loop (consume a batch → process it → produce its output → commit).

Processing stays in pure functions; this module owns batching, commits, and routing a failed
record to its retry tier or dead-letter topic with the headers of the design (section 5).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from herald.errors import ProcessingError, RetryableError
from herald.metrics import BATCH_SIZE, PROCESSING_SECONDS, RECORDS_IN, RECORDS_OUT
from herald.settings import KafkaSettings

log = logging.getLogger(__name__)

H_ATTEMPT = "x-attempt"
H_NOT_BEFORE = "x-not-before"
H_ORIGINAL_TOPIC = "x-original-topic"
H_ORIGINAL_PARTITION = "x-original-partition"
H_ORIGINAL_OFFSET = "x-original-offset"
H_ERROR_CLASS = "x-error-class"
H_ERROR_MESSAGE = "x-error-message"
H_FIRST_FAILED_AT = "x-first-failed-at"
H_REPLAY_COUNT = "x-replay-count"


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Producer settings: idempotent, batched with a short linger, Java-compatible keying.

    ``murmur2_random`` is the partitioner of the Java client, aiokafka and Faust; librdkafka's
    default (CRC32) would put the same user id on a different partition than the router's
    tables expect, breaking co-partitioning.
    """
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "partitioner": "murmur2_random",
        **overrides,
    }


def consumer_config(kafka: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Consumer settings: manual commits after the batch's effects are durable."""
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": max(kafka.session_timeout_ms // 4, 500),
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": False,
        **overrides,
    }


def headers_dict(message: Message) -> dict[str, str]:
    """A record's headers as text (the last value wins for a repeated name)."""
    out: dict[str, str] = {}
    raw = message.headers() or []
    for name, value in raw.items() if isinstance(raw, dict) else raw:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[name] = value or ""
    return out


@dataclass
class Outgoing:
    """A record to produce once the batch is processed."""

    topic: str
    key: str | bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]] = field(default_factory=list)


def failure_record(
    message: Message,
    error: ProcessingError,
    *,
    retry_topics: Sequence[str],
    retry_delays_ms: Sequence[int],
    dlq_topic: str,
    max_attempts: int | None = None,
    now: float | None = None,
) -> Outgoing:
    """Where a failed record goes: the next retry tier (retryable) or the DLQ, with headers.

    ``x-attempt`` counts deliveries tried so far; the original topic/partition/offset and the
    first failure time survive every hop, so an operator sees the record's whole story.
    """
    now = time.time() if now is None else now
    old = headers_dict(message)
    attempt = int(old.get(H_ATTEMPT, "1"))
    limit = max_attempts if max_attempts is not None else len(retry_topics) + 1
    headers = {
        **old,
        H_ATTEMPT: str(attempt + 1),
        H_ORIGINAL_TOPIC: old.get(H_ORIGINAL_TOPIC, message.topic() or ""),
        H_ORIGINAL_PARTITION: old.get(H_ORIGINAL_PARTITION, str(message.partition())),
        H_ORIGINAL_OFFSET: old.get(H_ORIGINAL_OFFSET, str(message.offset())),
        H_ERROR_CLASS: error.error_class,
        H_ERROR_MESSAGE: error.message[:1000],
        H_FIRST_FAILED_AT: old.get(H_FIRST_FAILED_AT, f"{now:.3f}"),
    }
    tier = attempt - 1  # attempt 1 failed -> retry-1, attempt 2 failed -> retry-2, ...
    if isinstance(error, RetryableError) and attempt < limit and tier < len(retry_topics):
        headers[H_NOT_BEFORE] = f"{now + retry_delays_ms[tier] / 1000:.3f}"
        topic = retry_topics[tier]
    else:
        headers.pop(H_NOT_BEFORE, None)
        topic = dlq_topic
    return Outgoing(topic, message.key(), message.value(), [(k, v) for k, v in headers.items()])


BatchHandler = Callable[[list[Message]], list[Outgoing]]


class BatchLoop:
    """Consume in batches; hand each to ``handler``; produce its output; then commit.

    The handler makes its own effects durable (a database commit, an SMTP send) before it
    returns; the loop then waits for every produced record to be acknowledged before it
    commits the batch's offsets, so a crash anywhere replays the batch instead of losing it.
    """

    def __init__(
        self,
        *,
        service: str,
        kafka: KafkaSettings,
        topics: Sequence[str],
        handler: BatchHandler,
        group_id: str | None = None,
        batch_size: int = 500,
        poll_timeout: float = 0.1,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.service = service
        self.topics = list(topics)
        self.handler = handler
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.consumer = Consumer(
            consumer_config(kafka, group_id or service, **(consumer_overrides or {}))
        )
        self.producer = Producer(producer_config(kafka))
        self.stop_event = threading.Event()

    def stop(self) -> None:
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT finish the current batch, commit, and exit the loop."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())

    def run(self) -> None:
        self.consumer.subscribe(self.topics)
        try:
            while not self.stop_event.is_set():
                self.run_once()
        finally:
            self.producer.flush(30)
            self.consumer.close()

    def run_once(self) -> int:
        """Process one batch; return how many records it held."""
        messages = self.consumer.consume(self.batch_size, self.poll_timeout)
        if not messages:
            self.producer.poll(0)
            return 0
        started = time.perf_counter()
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", extra={"error": str(error)})
                continue
            records.append(message)
            RECORDS_IN.labels(self.service, message.topic()).inc()
        BATCH_SIZE.labels(self.service).observe(len(records))
        outgoing = self.handler(records) if records else []
        self.publish(outgoing)
        if records:
            self.consumer.commit(asynchronous=False)
        PROCESSING_SECONDS.labels(self.service).observe(time.perf_counter() - started)
        return len(records)

    def publish(self, outgoing: list[Outgoing]) -> None:
        """Produce every record and wait until the broker has acknowledged all of them."""
        failures: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err)

        for record in outgoing:
            while True:
                try:
                    self.producer.produce(
                        record.topic,
                        key=record.key,
                        value=record.value,
                        headers=record.headers,
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)  # local queue full: let it drain
            RECORDS_OUT.labels(self.service, record.topic).inc()
        if outgoing:
            remaining = self.producer.flush(30)
            if remaining or failures:
                # Not acknowledged: do not commit; the batch is processed again after restart.
                raise KafkaException(failures[0] if failures else "produce flush timed out")
