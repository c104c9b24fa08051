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

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

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


#: A producer delivery report: the error (None when acknowledged) and the message.
DeliveryCallback = Callable[[KafkaError | None, Message], None]


def enqueue(producer: Producer, record: Outgoing, on_delivery: DeliveryCallback) -> bool:
    """Hand ``record`` to the producer's local queue; False when the queue is full (the caller
    lets it drain, e.g. ``producer.poll(0.05)``, and tries again)."""
    try:
        producer.produce(
            record.topic,
            key=record.key,
            value=record.value,
            headers=record.headers,
            on_delivery=on_delivery,
        )
    except BufferError:
        return False
    return True


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

    On a retry tier ``x-attempt`` is the number of the next attempt; on the DLQ it is the
    number of attempts made. The original topic/partition/offset and the first failure time
    survive every hop, so an operator sees the record's whole story.
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
        headers[H_ATTEMPT] = str(attempt)
        headers.pop(H_NOT_BEFORE, None)
        topic = dlq_topic
    return Outgoing(topic, message.key(), message.value(), [(k, v) for k, v in headers.items()])


@dataclass
class Handled:
    """What a handler did with a batch when it did not handle all of it.

    ``held`` are records the handler did not touch (e.g. its provider is failing and it is
    backing off): for each partition, the loop rewinds to the first held record and pauses
    the partition until ``hold_until`` (epoch seconds), so they are consumed again then.
    Within a partition the held records must come after every handled one.
    """

    outgoing: list[Outgoing]
    held: list[Message] = field(default_factory=list)
    hold_until: float = 0.0


#: A batch handler returns the records to produce, or :class:`Handled` to hold some back.
BatchHandler = Callable[[list[Message]], "list[Outgoing] | Handled"]
#: When a record may be processed (epoch seconds), or None for "now".
NotBefore = Callable[[Message], float | None]


def header_not_before(message: Message) -> float | None:
    """The record's ``x-not-before`` (epoch seconds), or None when absent or unreadable."""
    value = headers_dict(message).get(H_NOT_BEFORE)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        # A mangled header must not park a partition forever; process the record now.
        log.warning("ignoring unreadable %s header %r", H_NOT_BEFORE, value)
        return None


@dataclass(frozen=True)
class Deferral:
    """A partition to rewind to ``offset`` and pause until ``not_before`` (epoch seconds)."""

    topic: str
    partition: int
    offset: int
    not_before: float


def split_due(
    messages: Sequence[Message], not_before: NotBefore, now: float
) -> tuple[list[Message], list[Deferral]]:
    """Split a batch into the records due now and one deferral per partition that must wait.

    The first record of a partition that is not yet due stops that partition: it and every
    later record of the partition wait (a retry tier is in not-before order, and order within
    a partition is kept).
    """
    due: list[Message] = []
    deferred: dict[tuple[str, int], Deferral] = {}
    for message in messages:
        key = (message.topic() or "", message.partition() or 0)
        if key in deferred:
            continue
        when = not_before(message)
        if when is not None and when > now:
            deferred[key] = Deferral(key[0], key[1], message.offset() or 0, when)
        else:
            due.append(message)
    return due, list(deferred.values())


def hold(messages: Sequence[Message], until: float) -> list[Deferral]:
    """One deferral per partition, at its first (lowest-offset) record in ``messages``."""
    first: dict[tuple[str, int], Deferral] = {}
    for message in messages:
        key = (message.topic() or "", message.partition() or 0)
        offset = message.offset() or 0
        if key not in first or offset < first[key].offset:
            first[key] = Deferral(key[0], key[1], offset, until)
    return list(first.values())


def commit_offsets(
    processed: Sequence[Message], deferrals: Sequence[Deferral] = ()
) -> list[TopicPartition]:
    """The offsets to commit after a batch: past each processed record, but never past a
    deferred one (it is consumed again when its partition resumes)."""
    positions: dict[tuple[str, int], int] = {}
    for message in processed:
        key = (message.topic() or "", message.partition() or 0)
        positions[key] = max(positions.get(key, 0), (message.offset() or 0) + 1)
    for deferral in deferrals:
        positions[(deferral.topic, deferral.partition)] = deferral.offset
    return [
        TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()
    ]


class BatchLoop:
    """Consume in batches; hand each to ``handler``; produce its output; then commit.

    The handler makes its own effects durable (a database commit, an SMTP send) before it
    returns; the loop then waits for every produced record to be acknowledged before it
    commits the batch's offsets, so a crash anywhere replays the batch instead of losing it.

    With ``not_before`` (e.g. :func:`header_not_before` for retry tiers), a record that is not
    due yet is not handed to the handler: its partition is rewound to it and paused until
    then, while every other partition keeps flowing (the consumer itself never sleeps).
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
        not_before: NotBefore | None = None,
    ) -> None:
        self.service = service
        self.not_before = not_before
        #: Paused partitions and when each may resume (epoch seconds).
        self.paused: dict[tuple[str, int], float] = {}
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
        """Consume until :meth:`stop`; then flush the producer and leave the group."""
        self.consumer.subscribe(self.topics, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        try:
            while not self.stop_event.is_set():
                self.run_once()
        finally:
            self.producer.flush(30)
            self.consumer.close()

    def run_once(self) -> int:
        """Process one batch; return how many records it held."""
        self._resume_due()
        messages = self._next_batch()
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
        deferrals: list[Deferral] = []
        if self.not_before is not None:
            records, deferrals = split_due(records, self.not_before, time.time())
            self._defer(deferrals)
        for message in records:
            RECORDS_IN.labels(self.service, message.topic()).inc()
        BATCH_SIZE.labels(self.service).observe(len(records))
        result = self.handler(records) if records else []
        if isinstance(result, Handled):
            outgoing = result.outgoing
            if result.held:
                held = {id(message) for message in result.held}
                records = [message for message in records if id(message) not in held]
                holds = hold(result.held, result.hold_until)
                self._defer(holds)
                deferrals.extend(holds)
        else:
            outgoing = result
        self.publish(outgoing)
        offsets = commit_offsets(records, deferrals)
        if offsets:
            # Explicit offsets: a rewound partition must not commit past its deferred record.
            self.consumer.commit(offsets=offsets, asynchronous=False)
        PROCESSING_SECONDS.labels(self.service).observe(time.perf_counter() - started)
        return len(records)

    def _next_batch(self) -> list[Message]:
        """Up to ``batch_size`` records: wait (at most ``poll_timeout``) for the first, then take
        whatever else is already fetched without waiting. ``consume(n, timeout)`` alone would
        wait out the whole timeout whenever fewer than n records are in flight, adding it to
        the latency of every record at light load; this way a batch is as large as the load
        makes it, and a lone record is handled at once."""
        first = self.consumer.poll(self.poll_timeout)
        if first is None:
            return []
        if self.batch_size == 1:
            return [first]
        return [first, *self.consumer.consume(self.batch_size - 1, 0)]

    def _defer(self, deferrals: Sequence[Deferral]) -> None:
        for deferral in deferrals:
            partition = TopicPartition(deferral.topic, deferral.partition, deferral.offset)
            self.consumer.pause([partition])
            self.consumer.seek(partition)  # also drops what was prefetched past the record
            self.paused[(deferral.topic, deferral.partition)] = deferral.not_before

    def _resume_due(self) -> None:
        if not self.paused:
            return
        now = time.time()
        due = [key for key, when in self.paused.items() if when <= now]
        if due:
            self.consumer.resume([TopicPartition(topic, partition) for topic, partition in due])
            for key in due:
                del self.paused[key]

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Resume before giving a partition up, so it does not come back paused if it is
        # assigned here again; its new owner starts from the committed (deferred) offset.
        mine = [p for p in partitions if (p.topic, p.partition) in self.paused]
        for p in mine:
            del self.paused[(p.topic, p.partition)]
        if mine:
            try:
                consumer.resume(mine)
            except KafkaException as exc:  # lost partitions may be gone already
                log.info("could not resume revoked partitions", extra={"error": str(exc)})

    def publish(self, outgoing: list[Outgoing]) -> None:
        """Produce every record and wait until the broker has acknowledged all of them."""
        failures: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err)

        for record in outgoing:
            while not enqueue(self.producer, record, on_delivery):
                self.producer.poll(0.05)  # local queue full: let it drain
            RECORDS_OUT.labels(self.service, record.topic).inc()
        if outgoing:
            remaining = self.producer.flush(30)
            if remaining or failures:
                # Not acknowledged: do not commit; the batch is processed again after restart.
                raise KafkaException(failures[0] if failures else "produce flush timed out")
