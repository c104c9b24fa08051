"""Route the records of a ledger gap, read straight from the broker (services.router.ledger).

A gap is a run of offsets at a partition's commit point that the stream did not hand to the
router while it handed a later one. :func:`read_gap` reads that run with a plain consumer
that joins no group and commits nothing, and returns the records it holds as Faust messages
(so the router routes them exactly as it routes the stream's) and the offsets that hold no
record (transaction markers, deleted segments). It blocks; :func:`repair` calls it in a
thread and hands each record to the router's stage for its topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from faust.types import TP, Message

from herald.settings import KafkaSettings
from herald.streaming import consumer_config
from services.router.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass
class GapRecords:
    """What a gap holds: its records, and the offsets known to hold none."""

    records: list[Message] = field(default_factory=list)
    holes: list[int] = field(default_factory=list)
    #: False when the broker did not answer up to the gap's end in time (try again later);
    #: ``holes`` is then empty (nothing is known to be missing).
    complete: bool = False


class GapReader:
    """One group-less consumer, reused for every gap of this worker (not thread-safe: one
    read at a time)."""

    def __init__(self, kafka: KafkaSettings, group_id: str) -> None:
        self._config = consumer_config(
            kafka,
            group_id,  # librdkafka wants one; nothing is committed or joined with it
            # What Faust's consumer reads (aiokafka's default), so a gap is routed as the
            # stream would have routed it.
            **{
                "enable.partition.eof": True,
                "enable.auto.offset.store": False,
                "isolation.level": "read_uncommitted",
            },
        )
        self._consumer: Consumer | None = None

    def read(self, tp: TP, start: int, end: int, timeout: float = 10.0) -> GapRecords:
        """The records of ``tp`` at offsets ``start`` up to (not including) ``end``."""
        if self._consumer is None:
            self._consumer = Consumer(self._config)
        consumer = self._consumer
        consumer.assign([TopicPartition(tp.topic, tp.partition, start)])
        found = GapRecords()
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                batch = consumer.consume(min(end - start, 500), timeout=0.5)
                for message in batch:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            # Past the end of the log: the rest of the gap holds nothing.
                            found.complete = True
                            break
                        continue
                    offset = message.offset()
                    if offset is None:
                        continue
                    if offset >= end:
                        found.complete = True
                        break
                    if offset >= start and offset not in seen:
                        seen.add(offset)
                        found.records.append(_faust_message(tp, message))
                if found.complete:
                    break
        finally:
            consumer.unassign()
        if found.complete:
            found.holes = [offset for offset in range(start, end) if offset not in seen]
        return found

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def _faust_message(tp: TP, message: Any) -> Message:
    timestamp_type, timestamp_ms = message.timestamp()
    value = message.value()
    key = message.key()
    return Message(
        topic=tp.topic,
        partition=tp.partition,
        offset=message.offset(),
        timestamp=timestamp_ms / 1000 if timestamp_ms and timestamp_ms > 0 else time.time(),
        timestamp_type=timestamp_type,
        headers=list(message.headers() or []),
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key) if key else 0,
        serialized_value_size=len(value) if value else 0,
        tp=tp,
    )


async def repair(
    ledger: Ledger,
    reader: GapReader,
    route: Callable[[Message], Awaitable[None]],
    now: float,
) -> int:
    """Read each gap the ledger reports and ``route`` its records (which reports them received
    and, once their outputs are acknowledged, finished); finish the offsets that hold none.
    Returns how many records were routed."""
    routed_count = 0
    for gap in ledger.gaps(now):
        try:
            found = await asyncio.to_thread(reader.read, gap.tp, gap.start, gap.end)
        except Exception:  # the broker away, say: the gap is reported again later
            log.exception(
                "could not read a gap from the broker; trying again later",
                extra={"topic": gap.tp.topic, "partition": gap.tp.partition},
            )
            found = GapRecords()
        log.warning(
            "the stream skipped records; routing them from the broker",
            extra={
                "topic": gap.tp.topic,
                "partition": gap.tp.partition,
                "offsets": f"{gap.start}-{gap.end - 1}",
                "records": len(found.records),
                "holes": len(found.holes),
                "complete": found.complete,
            },
        )
        for message in found.records:
            await route(message)
        routed_count += len(found.records)
        for offset in found.holes:
            ledger.finished(gap.tp, offset)
        # The ledger counted the gap's offsets as received when it reported the gap; route()
        # counted each record again. Release the gap's own count: a routed record stays
        # received until its outputs are acknowledged, a hole is finished, and an offset the
        # broker did not answer for in time becomes a gap again.
        holes = set(found.holes)
        for offset in range(gap.start, gap.end):
            if offset not in holes:
                ledger.abandoned(gap.tp, offset)
    return routed_count
