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
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Counter

from herald.dlqlimit import GUARD_TRIPPED, GUARD_TRIPS, DlqLimitSettings
from herald.errors import PermanentError, ProcessingError, RetryableError

# The H_* header names are imported from here by many modules, so they are kept importable.
from herald.headers import (
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FIRST_FAILED_AT,
    H_NOT_BEFORE,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
    H_REPLAY_COUNT,
    HEADERS_INVALID,
    garbled_name,
    headers_text,
    read_headers,
    write_headers,
)
from herald.metrics import (
    BATCH_SIZE,
    ERRORS,
    HEALTH,
    PROCESSING_SECONDS,
    RECORDS_IN,
    RECORDS_OUT,
    Backoff,
    labelled,
)
from herald.settings import KafkaSettings

if TYPE_CHECKING:
    from herald.producer import AckedProducer

log = logging.getLogger(__name__)

COMMITS_REFUSED = Counter(
    "herald_commits_refused_total",
    "Offset commits the group refused or could not reach (rebalance, broker down); the "
    "offsets are committed later or the records are consumed again",
    ["service", "error"],
)
PRODUCE_RETRIES = Counter(
    "herald_produce_retries_total",
    "Batches whose output Kafka did not acknowledge, produced again after a pause",
    ["service"],
)
RETRIES = Counter(
    "herald_retries_total",
    "Failed records passed to a retry tier (tier 1, 2, 3: <topic>.retry-<tier>)",
    ["service", "tier"],
)
DEAD_LETTERS = Counter(
    "herald_dead_letters_total",
    "Records parked on a dead-letter topic",
    ["service", "topic"],
)


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
        "linger.ms": kafka.linger_ms,
        "compression.type": kafka.compression_type,
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
        # A fetch waits for 64 KiB or 25 ms, whichever comes first, instead of returning each
        # record as it arrives: fewer, fuller fetches for the broker to serve (issue 10: the
        # broker's CPU per 100,000-event in-app run fell from 9.5 to 7.1 s and from 8.1 to
        # 7.5 s in back-to-back runs), at most 25 ms more per hop when traffic is light.
        "fetch.min.bytes": 65536,
        "fetch.wait.max.ms": 25,
        **overrides,
    }


def headers_dict(message: Message) -> dict[str, str]:
    """A record's headers as text (the last value wins for a repeated name): for display and
    tests; decisions read typed values through :func:`herald.headers.read_headers`."""
    return headers_text(message.headers())


@dataclass
class Outgoing:
    """A record to produce once the batch is processed."""

    topic: str
    key: str | bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]] = field(default_factory=list)
    #: For a retry or dead-letter record (:func:`failure_record`): the consumed record it
    #: stands for, and its dead-letter topic. The batch loop uses them to count records going
    #: to the DLQ (the flood guard) and to park a copy that is too large to produce.
    origin: Message | None = field(default=None, repr=False, compare=False)
    dlq_topic: str | None = None

    @property
    def dead_letter(self) -> bool:
        """A record on its way to a dead-letter topic."""
        return self.dlq_topic is not None and self.topic == self.dlq_topic


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

    Never raises on the record's headers: a record whose ``x-*`` headers cannot be read is
    poison on its own and goes to the DLQ as ``headers.invalid`` (the message names each
    unreadable header and value, then the error it met, if any); its unreadable values are kept
    under ``x-garbled-*`` and the typed headers written anew (see :mod:`herald.headers`).
    """
    now = time.time() if now is None else now
    old = read_headers(message.headers())
    if old.problems:
        reason = old.problem_message()
        if error.error_class != HEADERS_INVALID:
            reason += f" (and it failed with {error.error_class}: {error.message})"
        error = PermanentError(reason, error_class=HEADERS_INVALID)
    attempt = old.attempt or 1
    limit = max_attempts if max_attempts is not None else len(retry_topics) + 1
    updates: dict[str, str | bytes | int | float | None] = {
        H_ATTEMPT: attempt + 1,
        H_ORIGINAL_TOPIC: old.original_topic or message.topic() or "",
        H_ORIGINAL_PARTITION: (
            old.original_partition
            if old.original_partition is not None
            else message.partition() or 0
        ),
        H_ORIGINAL_OFFSET: (
            old.original_offset if old.original_offset is not None else message.offset() or 0
        ),
        H_ERROR_CLASS: error.error_class,
        H_ERROR_MESSAGE: error.message,
        H_FIRST_FAILED_AT: old.first_failed_at if old.first_failed_at is not None else now,
        H_REPLAY_COUNT: old.replay_count,
        **{garbled_name(name): value for name, value in old.garbled.items()},
    }
    tier = attempt - 1  # attempt 1 failed -> retry-1, attempt 2 failed -> retry-2, ...
    if isinstance(error, RetryableError) and attempt < limit and tier < len(retry_topics):
        updates[H_NOT_BEFORE] = now + retry_delays_ms[tier] / 1000
        topic = retry_topics[tier]
    else:
        updates[H_ATTEMPT] = attempt
        updates[H_NOT_BEFORE] = None
        topic = dlq_topic
    headers = write_headers(old.raw, updates)
    return Outgoing(
        topic, message.key(), message.value(), headers, origin=message, dlq_topic=dlq_topic
    )


def too_large_stand_in(record: Outgoing, reason: str) -> Outgoing | None:
    """What goes to the DLQ instead of a retry or dead-letter record too large to produce
    (the original plus its failure headers can outgrow ``message.max.bytes``): a record with
    the key, no value, the design headers only, and ``x-error-class: record.too_large`` naming
    the previous error. The original stays findable through ``x-original-*`` until the source
    topic's retention ends. None for any other record (a status event): nothing can be parked
    for it; the caller logs and drops it."""
    from herald.producer import TOO_LARGE  # herald.producer imports this module

    if record.dlq_topic is None or (record.value is None and record.dead_letter):
        return None  # not a failure record, or already a stand-in
    read = read_headers(record.headers)
    headers = write_headers(
        [],
        {
            H_ATTEMPT: read.attempt,
            H_ORIGINAL_TOPIC: read.original_topic,
            H_ORIGINAL_PARTITION: read.original_partition,
            H_ORIGINAL_OFFSET: read.original_offset,
            H_FIRST_FAILED_AT: read.first_failed_at,
            H_REPLAY_COUNT: read.replay_count,
            H_ERROR_CLASS: TOO_LARGE,
            H_ERROR_MESSAGE: (
                f"its copy for {record.topic} was refused ({reason}); the value is not kept."
                f" It had failed with {read.error_class}: {read.error_message}"
            ),
        },
    )
    return Outgoing(
        record.dlq_topic,
        record.key,
        None,
        headers,
        origin=record.origin,
        dlq_topic=record.dlq_topic,
    )


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


#: A not-before further ahead than this is not a retry delay but garbage: ignored.
MAX_NOT_BEFORE_AHEAD_S = 7 * 86400.0


def header_not_before(message: Message) -> float | None:
    """The record's ``x-not-before`` (epoch seconds), or None when absent or unreadable."""
    headers = read_headers(message.headers())
    when = headers.not_before
    if when is not None and when > time.time() + MAX_NOT_BEFORE_AHEAD_S:
        # A mangled header must not park a partition for ever; process the record now.
        log.warning("ignoring %s %.3f: further ahead than any retry tier", H_NOT_BEFORE, when)
        return None
    return when


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


#: Commit errors after which the group no longer knows this member or its generation: the
#: partitions are being (or were) taken away, and whoever gets them resumes from the last
#: committed offset.
REBALANCE_ERRORS = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._ASSIGNMENT_LOST,
    }
)


class BatchLoop:
    """Consume in batches; hand each to ``handler``; produce its output; then commit.

    The handler makes its own effects durable (a database commit, an SMTP send) before it
    returns; the loop then waits for every produced record to be acknowledged before it
    commits the batch's offsets, so a crash anywhere replays the batch instead of losing it.

    With ``not_before`` (e.g. :func:`header_not_before` for retry tiers), a record that is not
    due yet is not handed to the handler: its partition is rewound to it and paused until
    then, while every other partition keeps flowing (the consumer itself never sleeps).

    Transient faults never end the loop (only :meth:`stop` does):

    - **Output not acknowledged** (broker down, leader moving): the records Kafka refused are
      produced again after a growing pause, for as long as it takes; the batch's offsets are
      not committed before every record is acknowledged. A record too large to ever be
      produced is logged and counted as ``record.too_large`` and not retried (it would wedge
      the partition forever).
    - **Commit refused** (``UNKNOWN_MEMBER_ID``, ``ILLEGAL_GENERATION``,
      ``REBALANCE_IN_PROGRESS``, ``_ASSIGNMENT_LOST`` after a rebalance, or a transport error
      while the broker is away): the batch's effects are already durable and its output
      acknowledged, so nothing is lost, only not yet recorded as done. Its offsets are kept
      as *pending* and committed with the next batch's (or alone, with backoff, when no batch
      comes). If the partition is revoked or lost meanwhile, the pending offsets of that
      partition are dropped: the next owner — another member, or this one after it rejoins —
      starts from the last committed offset and consumes the records again. That is safe
      because every handler is idempotent (the senders' send journal, inapp_store's upserts).
      Seeking back instead would redo work that is already done while the partition is ours.
    - Repeated failures mark the service degraded in :data:`herald.metrics.HEALTH`
      (``herald_service_degraded{reason="kafka.produce"|"kafka.commit"}``, ``/readyz`` 503)
      until the next success.
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
        produce_backoff: Backoff | None = None,
        commit_backoff: Backoff | None = None,
        dlq_guard: DlqLimitSettings | None = None,
    ) -> None:
        # herald.producer imports this module (Outgoing): import it when a loop is built.
        from herald.producer import AckedProducer

        self.service = service
        self.not_before = not_before
        #: Paused partitions and when each may resume (epoch seconds).
        self.paused: dict[tuple[str, int], float] = {}
        #: Offsets whose commit was refused, to commit with the next batch (see the class doc).
        self.pending: dict[tuple[str, int], int] = {}
        self.topics = list(topics)
        self.handler = handler
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.consumer = Consumer(
            consumer_config(kafka, group_id or service, **(consumer_overrides or {}))
        )
        self._producer_config = producer_config(kafka)
        self.producer: AckedProducer = AckedProducer(self._producer_config)
        self.produce_backoff = produce_backoff or Backoff(0.5, 10.0)
        self.commit_backoff = commit_backoff or Backoff(0.5, 5.0)
        self._next_commit_retry = 0.0
        self.stop_event = threading.Event()
        # The DLQ-flood guard (herald.dlqlimit), from HERALD_DLQ_GUARD_* unless given.
        self.dlq_guard = dlq_guard if dlq_guard is not None else DlqLimitSettings()
        self.dlq_limit = self.dlq_guard.limit()
        GUARD_TRIPPED.labels(service).set(0)

    def stop(self) -> None:
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT finish the current batch, commit, and exit the loop."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())

    def run(self) -> None:
        """Consume until :meth:`stop`; then flush the producer and leave the group."""
        self.consumer.subscribe(self.topics, on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            while not self.stop_event.is_set():
                self.run_once()
            if self.pending:
                self._commit([])
        finally:
            self.producer.close(30)
            self.consumer.close()

    def run_once(self) -> int:
        """Process one batch; return how many records it held."""
        self._resume_due()
        messages = self._next_batch()
        if not messages:
            self.producer.poll(0)
            if self.pending and time.monotonic() >= self._next_commit_retry:
                self._commit([])
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
            labelled(RECORDS_IN, self.service, message.topic()).inc()
        labelled(BATCH_SIZE, self.service).observe(len(records))
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
        outgoing, flooded = self._guard_dlq(records, outgoing)
        if flooded:
            # Last, so its (lower) offsets win over any later deferral of the same partition.
            holds = hold(flooded, time.time() + self.dlq_guard.backoff_seconds)
            self._defer(holds)
            deferrals.extend(holds)
            gone = {id(message) for message in flooded}
            records = [message for message in records if id(message) not in gone]
        if not self.publish(outgoing):
            return len(records)  # stopped before Kafka acknowledged it: not committed
        for record in outgoing:
            if record.dlq_topic is not None:
                if record.dead_letter:
                    DEAD_LETTERS.labels(self.service, record.topic).inc()
                else:
                    RETRIES.labels(self.service, record.topic.rpartition(".retry-")[2]).inc()
        # Explicit offsets: a rewound partition must not commit past its deferred record.
        self._commit(commit_offsets(records, deferrals))
        PROCESSING_SECONDS.labels(self.service).observe(time.perf_counter() - started)
        return len(records)

    def _commit(self, offsets: Sequence[TopicPartition]) -> bool:
        """Commit ``offsets`` with any pending ones; keep them pending if the commit is
        refused (see the class docstring). True when everything was committed."""
        wanted = dict(self.pending)
        for tp in offsets:
            key = (tp.topic, tp.partition)
            wanted[key] = max(wanted.get(key, tp.offset), tp.offset)
        if not wanted:
            return True
        partitions = [TopicPartition(t, p, o) for (t, p), o in wanted.items()]
        refused: KafkaError | None = None
        try:
            result = self.consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.fatal():
                raise
            refused = error if isinstance(error, KafkaError) else KafkaError(KafkaError._FAIL)
            failed = set(wanted)
        else:
            failed = {(tp.topic, tp.partition) for tp in result or [] if tp.error is not None}
            refused = next((tp.error for tp in result or [] if tp.error is not None), None)
        self.pending = {key: offset for key, offset in wanted.items() if key in failed}
        if refused is None:
            self.commit_backoff.reset()
            HEALTH.recovered(self.service, "kafka.commit")
            return True
        name = refused.name()
        COMMITS_REFUSED.labels(self.service, name).inc()
        delay = self.commit_backoff.next()
        self._next_commit_retry = time.monotonic() + delay
        rebalance = refused.code() in REBALANCE_ERRORS
        log.warning(
            "commit refused; offsets kept to commit later (records come again if the "
            "partitions moved)",
            extra={
                "error": str(refused),
                "rebalance": rebalance,
                "partitions": len(self.pending),
                "retry_in_s": delay,
            },
        )
        if not rebalance and delay >= self.commit_backoff.maximum:
            HEALTH.degraded(self.service, "kafka.commit", str(refused))
        return False

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
            try:
                self.consumer.pause([partition])
                self.consumer.seek(partition)  # also drops what was prefetched past the record
            except KafkaException as exc:
                # Revoked meanwhile: its next owner starts from the committed offset.
                log.info("could not defer a partition", extra={"error": str(exc)})
                continue
            self.paused[(deferral.topic, deferral.partition)] = deferral.not_before

    def _resume_due(self) -> None:
        if not self.paused:
            return
        now = time.time()
        due = [key for key, when in self.paused.items() if when <= now]
        if due:
            try:
                self.consumer.resume([TopicPartition(topic, partition) for topic, partition in due])
            except KafkaException as exc:  # a partition lost since: nothing to resume
                log.info("could not resume partitions", extra={"error": str(exc)})
            for key in due:
                del self.paused[key]

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # An orderly revoke: the group still knows us, so commit what is pending for these
        # partitions now; their next owner then starts after them.
        keys = {(p.topic, p.partition) for p in partitions}
        if any(key in keys for key in self.pending):
            mine = {key: offset for key, offset in self.pending.items() if key in keys}
            try:
                consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in mine.items()],
                    asynchronous=False,
                )
            except KafkaException as exc:
                log.info(
                    "could not commit pending offsets of revoked partitions; their next "
                    "owner consumes those records again",
                    extra={"error": str(exc)},
                )
        self._forget(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group has already given them to someone else: committing is no longer ours.
        log.warning("partitions lost (session timed out)", extra={"count": len(partitions)})
        self._forget(consumer, partitions)

    def _forget(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(p.topic, p.partition) for p in partitions}
        self.pending = {key: offset for key, offset in self.pending.items() if key not in keys}
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

    def _guard_dlq(
        self, records: list[Message], outgoing: list[Outgoing]
    ) -> tuple[list[Outgoing], list[Message]]:
        """Feed the DLQ-flood guard this batch's outcomes (a record is invalid when the handler
        made a dead letter of it, :func:`failure_record`). When it trips, the dead letters from
        that record on are not produced: return the output without them, and the records to
        hold (rewind and pause for the guard's back-off; they come again)."""
        invalid = {id(o.origin) for o in outgoing if o.dead_letter and o.origin is not None}
        index, reason = self.dlq_limit.check(id(message) in invalid for message in records)
        if index is None:
            GUARD_TRIPPED.labels(self.service).set(0)
            return outgoing, []
        flooded = [message for message in records[index:] if id(message) in invalid]
        held = {id(message) for message in flooded}
        kept = [o for o in outgoing if not (o.dead_letter and id(o.origin) in held)]
        GUARD_TRIPPED.labels(self.service).set(1)
        GUARD_TRIPS.labels(self.service).inc()
        log.error(
            "DLQ-flood guard tripped: %s; holding %d dead letters for %g s instead of producing"
            " them (a bad deploy, not bad data? fix it and restart, or raise"
            " HERALD_DLQ_GUARD_MAX_CONSECUTIVE / _MAX_INVALID_RATIO)",
            reason,
            len(flooded),
            self.dlq_guard.backoff_seconds,
        )
        return kept, flooded

    def publish(self, outgoing: list[Outgoing]) -> bool:
        """Produce every record and wait until the broker has acknowledged all of them.

        What Kafka refuses is produced again after a growing pause, until it is acknowledged
        (True) or the loop is stopped (False: the caller must not commit the batch).
        """
        from herald.producer import AckedProducer

        waiting = list(outgoing)
        while waiting:
            refused = self._produce_round(waiting)
            if refused is None:
                return False
            if not refused:
                break
            if any(error.fatal() for _, error in refused):
                # The idempotent producer is unusable after a fatal error: start a new one.
                self.producer = AckedProducer(self._producer_config)
            too_large = [(r, e) for r, e in refused if e.code() == KafkaError.MSG_SIZE_TOO_LARGE]
            stand_ins = []
            for record, error in too_large:
                ERRORS.labels(self.service, "record.too_large").inc()
                stand_in = too_large_stand_in(record, error.str())
                if stand_in is not None:
                    stand_ins.append(stand_in)
                log.error(
                    "output record refused as too large; "
                    + ("a stand-in goes to the DLQ" if stand_in else "dropped"),
                    extra={"topic": record.topic, "error": str(error)},
                )
            waiting = [r for r, e in refused if e.code() != KafkaError.MSG_SIZE_TOO_LARGE]
            if not waiting:
                if stand_ins:
                    waiting = stand_ins
                    continue
                break
            waiting.extend(stand_ins)
            PRODUCE_RETRIES.labels(self.service).inc()
            delay = self.produce_backoff.next()
            log.warning(
                "output not acknowledged by Kafka; producing it again",
                extra={"records": len(waiting), "error": str(refused[0][1]), "retry_in_s": delay},
            )
            HEALTH.degraded(self.service, "kafka.produce", str(refused[0][1]))
            if self.stop_event.wait(delay):
                return False
        self.produce_backoff.reset()
        HEALTH.recovered(self.service, "kafka.produce")
        return True

    def _produce_round(self, records: list[Outgoing]) -> list[tuple[Outgoing, KafkaError]] | None:
        """Produce ``records`` once and wait for every delivery report; return the refused
        ones, or None when the loop was stopped before Kafka answered."""
        from herald.producer import RecordTooLarge

        refused: list[tuple[Outgoing, KafkaError]] = []
        reported = [0]

        def done(record: Outgoing, error: KafkaError | None) -> None:
            reported[0] += 1
            if error is not None:
                refused.append((record, error))

        sent = 0
        for record in records:
            try:
                self.producer.send(record, done)
            except RecordTooLarge as exc:
                # Reported like a broker refusal: publish() parks a stand-in for it.
                refused.append((record, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, exc.message)))
                continue
            sent += 1
            labelled(RECORDS_OUT, self.service, record.topic).inc()
        # librdkafka reports every record within message.timeout.ms; a broker restart is
        # mostly waited out here, inside librdkafka's own retries.
        while reported[0] < sent:
            self.producer.flush(0.5)
            if self.stop_event.is_set() and reported[0] < sent:
                self.producer.flush(5)
                if reported[0] < sent:
                    return None
        return refused
