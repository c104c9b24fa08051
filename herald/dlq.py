"""Dead letters: read them back, summarise, filter, replay and purge (``herald dlq``).

A dead letter keeps its whole story in headers (design section 5). Replay re-publishes a
record to the first retry tier of the topic it came from (or to that topic when it has no
tiers), with its headers preserved, ``x-attempt`` reset and ``x-replay-count`` incremented; past
``max_replays`` it refuses, so nothing loops forever. Kafka cannot delete single records, so
purge deletes a partition's records up to an offset, and only when every record before that
offset matches the filter too: it never removes a dead letter the filter did not select.

A letter counts as replayed only when Kafka acknowledged its copy (a delivery report without
an error, through :class:`herald.producer.AckedProducer`); the others are reported with the
broker's reason. ``replay --purge`` then deletes only acknowledged letters, so a refused replay
always leaves its dead letter in place.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from herald.headers import (
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_NOT_BEFORE,
    H_REPLAY_COUNT,
    RawValue,
    headers_text,
    read_headers,
    write_headers,
)
from herald.producer import Refused
from herald.serde import SerdeError, decode
from herald.settings import KafkaSettings
from herald.streaming import Outgoing
from schemas import Catalogue, UnknownTopicError

DEFAULT_MAX_REPLAYS = 3


class DlqError(ValueError):
    """A wrong topic name or filter; the message says what is accepted."""


@dataclass
class DeadLetter:
    """One record of a dead-letter topic, decoded where possible."""

    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    record: dict[str, Any] | None = None
    decode_error: str | None = None
    #: The headers as they are on the topic (bytes and all), for a faithful replay.
    raw_headers: list[tuple[str, RawValue]] = field(default_factory=list)

    @property
    def error_class(self) -> str:
        return self.headers.get(H_ERROR_CLASS, "unknown")

    @property
    def error_message(self) -> str:
        return self.headers.get(H_ERROR_MESSAGE, "")

    @property
    def replay_count(self) -> int:
        """``x-replay-count``; 0 when absent or unreadable."""
        return read_headers(self.raw_headers or self.headers).replay_count or 0

    @property
    def event_type(self) -> str | None:
        if self.record is None:
            return None
        value = self.record.get("event_type") or (self.record.get("event") or {}).get("event_type")
        return str(value) if value else None

    @property
    def delivery_id(self) -> str | None:
        value = (self.record or {}).get("delivery_id")
        return str(value) if value else None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass
class Filter:
    """Which dead letters a command acts on; every given criterion must hold."""

    since: float | None = None
    until: float | None = None
    error_classes: set[str] = field(default_factory=set)
    event_types: set[str] = field(default_factory=set)
    delivery_ids: set[str] = field(default_factory=set)
    limit: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.since is not None and letter.timestamp < self.since:
            return False
        if self.until is not None and letter.timestamp > self.until:
            return False
        if self.error_classes and letter.error_class not in self.error_classes:
            return False
        if self.event_types and letter.event_type not in self.event_types:
            return False
        return not self.delivery_ids or letter.delivery_id in self.delivery_ids


def parse_time(text: str, now: float | None = None) -> float:
    """An ISO-8601 time, or an age like ``30m``, ``2h``, ``7d`` (that long ago): epoch seconds."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return now - int(text[:-1]) * units[text[-1]]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise DlqError(
            f"cannot read the time {text!r}:"
            " give ISO-8601 (2026-11-25T10:00) or an age (30m, 2h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def dlq_topics(catalogue: Catalogue, names: Sequence[str] = ()) -> list[str]:
    """The dead-letter topics to read: all of the catalogue's, or the named ones (checked)."""
    known = [spec.dlq_name for spec in catalogue if spec.dlq]
    if not names:
        return known
    chosen = []
    for name in names:
        candidates = [
            t for t in known if t == name or t == f"{name}.dlq" or t == catalogue.prefix + name
        ]
        if not candidates:
            raise DlqError(f"{name!r} is not a dead-letter topic; known: {', '.join(known)}")
        chosen.append(candidates[0])
    return chosen


def scan(
    kafka: KafkaSettings, topics: Iterable[str], timeout: float = 30.0
) -> Iterator[DeadLetter]:
    """Every record now in ``topics``, decoded where possible, oldest offset first per partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"herald-dlq-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        assignment: list[TopicPartition] = []
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            if metadata.error is not None:
                raise DlqError(
                    f"topic {topic} cannot be read: {metadata.error}"
                    " (were the topics created? `herald topics create`)"
                )
            for partition in metadata.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
                if high > low:
                    ends[(topic, partition)] = high
                    assignment.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
        if not assignment:
            return
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout
        remaining = dict(ends)
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading dead letters timed out; {len(remaining)} partitions left"
                )
            for message in consumer.consume(500, 0.5):
                if message.error() is not None:
                    continue
                topic, partition, offset = (
                    message.topic() or "",
                    message.partition() or 0,
                    message.offset() or 0,
                )
                value = message.value()
                raw: list[tuple[str, RawValue]] = [
                    (str(header[0]), header[1]) for header in message.headers() or []
                ]
                letter = DeadLetter(
                    topic, partition, offset, (message.timestamp()[1] or 0) / 1000,
                    message.key(), value, headers_text(raw), raw_headers=raw,
                )  # fmt: skip
                if value is not None:
                    try:
                        letter.record = decode(value)
                    except SerdeError as exc:
                        letter.decode_error = str(exc)
                yield letter
                if offset + 1 >= remaining.get((topic, partition), 0):
                    remaining.pop((topic, partition), None)
    finally:
        consumer.close()


def summarize(letters: Iterable[DeadLetter], now: float | None = None) -> list[dict[str, Any]]:
    """Counts by (topic, error class, event type), with the oldest and newest ages in seconds."""
    now = time.time() if now is None else now
    groups: dict[tuple[str, str, str], list[float]] = {}
    for letter in letters:
        key = (letter.topic, letter.error_class, letter.event_type or "-")
        groups.setdefault(key, []).append(letter.timestamp)
    return [
        {
            "topic": topic,
            "error_class": error_class,
            "event_type": event_type,
            "count": len(stamps),
            "oldest_age_s": round(now - min(stamps)),
            "newest_age_s": round(now - max(stamps)),
        }
        for (topic, error_class, event_type), stamps in sorted(groups.items())
    ]


def replay_target(catalogue: Catalogue, letter: DeadLetter) -> str:
    """The first retry tier of the letter's source topic, or the source topic itself."""
    source = read_headers(letter.raw_headers or letter.headers).original_topic or letter.topic
    try:
        spec = catalogue.by_name(source)
    except UnknownTopicError:
        raise DlqError(f"{letter.where} came from {source!r}, not a catalogue topic") from None
    tiers = spec.retry_topic_names
    return tiers[0] if tiers else spec.name


def replay_record(
    catalogue: Catalogue, letter: DeadLetter, max_replays: int, now: float | None = None
) -> Outgoing:
    """The record that replays ``letter``; DlqError when it was replayed too often already."""
    if letter.replay_count >= max_replays:
        raise DlqError(
            f"{letter.where} was replayed {letter.replay_count} times already (limit {max_replays})"
        )
    now = time.time() if now is None else now
    headers = write_headers(
        letter.raw_headers or letter.headers,
        {H_REPLAY_COUNT: letter.replay_count + 1, H_ATTEMPT: 1, H_NOT_BEFORE: now},
    )
    return Outgoing(replay_target(catalogue, letter), letter.key, letter.value, headers)


@dataclass
class ReplayReport:
    """What a replay did. ``replayed`` counts only copies Kafka acknowledged."""

    matched: int = 0
    replayed: int = 0
    #: Letters not replayed by rule (replayed too often, unknown source topic).
    refused: list[str] = field(default_factory=list)
    #: Letters whose copy Kafka did not acknowledge: where, target, and the broker's reason.
    failed: list[str] = field(default_factory=list)
    targets: Counter[str] = field(default_factory=Counter)
    #: The letters whose replay Kafka acknowledged (the only ones ``--purge`` may delete).
    acknowledged: list[DeadLetter] = field(default_factory=list)


#: Produces records and waits for every delivery report; returns those not acknowledged
#: (:meth:`herald.producer.AckedProducer.deliver`).
Deliver = Callable[[Sequence[Outgoing]], list[Refused]]


def select(letters: Iterable[DeadLetter], criteria: Filter) -> list[DeadLetter]:
    """The letters the filter matches, at most ``limit`` of them."""
    out = []
    for letter in letters:
        if criteria.matches(letter):
            out.append(letter)
            if criteria.limit is not None and len(out) >= criteria.limit:
                break
    return out


def replay(
    catalogue: Catalogue,
    letters: Sequence[DeadLetter],
    deliver: Deliver | None,
    *,
    max_replays: int = DEFAULT_MAX_REPLAYS,
    progress: Callable[[int], None] = lambda n: None,
    chunk: int = 500,
) -> ReplayReport:
    """Replay ``letters`` through ``deliver`` (None: a dry run that only reports), ``chunk``
    at a time; a letter counts as replayed only once Kafka acknowledged its copy."""
    report = ReplayReport(matched=len(letters))
    pending: list[tuple[DeadLetter, Outgoing]] = []

    def send() -> None:
        refused = (
            {} if deliver is None else {id(r.record): r for r in deliver([o for _, o in pending])}
        )
        for letter, record in pending:
            problem = refused.get(id(record))
            if problem is not None:
                report.failed.append(
                    f"{letter.where} → {record.topic}: {problem.error} ({problem.error_class})"
                )
                continue
            report.replayed += 1
            report.targets[record.topic] += 1
            report.acknowledged.append(letter)
        progress(len(pending))
        pending.clear()

    for letter in letters:
        try:
            pending.append((letter, replay_record(catalogue, letter, max_replays)))
        except DlqError as exc:
            report.refused.append(str(exc))
            progress(1)
        if len(pending) >= chunk:
            send()
    if pending:
        send()
    return report


def purge_plan(
    all_letters: Sequence[DeadLetter], chosen: Sequence[DeadLetter]
) -> tuple[dict[tuple[str, int], int], list[str]]:
    """Per partition, the offset to delete records before; and the chosen ones that cannot go
    because an unchosen record precedes them (Kafka deletes only a partition's prefix)."""
    chosen_keys = {(c.topic, c.partition, c.offset) for c in chosen}
    plan: dict[tuple[str, int], int] = {}
    kept: list[str] = []
    by_partition: dict[tuple[str, int], list[DeadLetter]] = {}
    for letter in sorted(all_letters, key=lambda x: (x.topic, x.partition, x.offset)):
        by_partition.setdefault((letter.topic, letter.partition), []).append(letter)
    for key, letters in by_partition.items():
        prefix_end = None
        blocked = False
        for letter in letters:
            selected = (letter.topic, letter.partition, letter.offset) in chosen_keys
            if selected and not blocked:
                prefix_end = letter.offset + 1
            elif selected:
                kept.append(letter.where)
            else:
                blocked = True
        if prefix_end is not None:
            plan[key] = prefix_end
    return plan, kept


def purge(kafka: KafkaSettings, plan: dict[tuple[str, int], int], timeout: float = 30.0) -> None:
    """Delete each partition's records before the planned offset (Kafka DeleteRecords)."""
    if not plan:
        return
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    futures = admin.delete_records(
        [TopicPartition(t, p, offset) for (t, p), offset in plan.items()],
        request_timeout=timeout,
        operation_timeout=timeout,
    )
    for future in futures.values():
        future.result()
