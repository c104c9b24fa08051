"""A record the router's stream skipped is read from the broker and routed, and the commit
never passes it before (services.router.ledger, services.router.repair), against the real
broker: records written plainly and in a transaction (whose commit marker takes an offset that
holds no record)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from faust.types import TP, Message

from herald.errors import PermanentError
from herald.metrics import Health
from herald.producer import AckedProducer
from herald.settings import KafkaSettings
from herald.streaming import Outgoing, producer_config
from herald.topics import create_declared_topics
from schemas import TopicDeclaration
from services.router.ledger import Ledger
from services.router.outputs import Outputs
from services.router.repair import GapReader, repair
from tests.integration.kafka_util import read_all

pytestmark = pytest.mark.integration


def write_input(kafka: KafkaSettings, topic: str) -> None:
    """Offsets 0-9 plain, 10-11 in a transaction, 12 its commit marker, 13-15 plain."""
    plain = Producer(producer_config(kafka))
    for i in range(10):
        plain.produce(topic, key=b"k", value=f"r{i}".encode(), partition=0)
    assert plain.flush(20) == 0
    transactional = Producer(
        producer_config(kafka, **{"transactional.id": f"{topic}-tx", "linger.ms": 0})
    )
    transactional.init_transactions(20)
    transactional.begin_transaction()
    for i in (10, 11):
        transactional.produce(topic, key=b"k", value=f"r{i}".encode(), partition=0)
    transactional.commit_transaction(20)
    # The coordinator writes the commit marker after commit_transaction returns: wait for it
    # (offset 12), so that the records after it come after it.
    probe = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"{topic}-p"})
    deadline = time.monotonic() + 20
    while probe.get_watermark_offsets(TopicPartition(topic, 0), 5)[1] < 13:
        assert time.monotonic() < deadline, "the transaction's marker was never written"
        time.sleep(0.05)
    probe.close()
    for i in (13, 14, 15):
        plain.produce(topic, key=b"k", value=f"r{i}".encode(), partition=0)
    assert plain.flush(20) == 0


def test_skipped_records_are_routed_from_the_broker_and_holes_finished(
    kafka_settings: KafkaSettings, prefix: str
) -> None:
    source, out = f"{prefix}in", f"{prefix}out"
    create_declared_topics(
        kafka_settings, [TopicDeclaration(name, 1, 1, {}) for name in (source, out)]
    )
    write_input(kafka_settings, source)
    tp = TP(source, 0)
    ledger = Ledger({source}, repair_after=0.2)
    ledger.assigned({tp: 0})

    def dead_letter(message: Any, error: PermanentError) -> Outgoing:
        raise AssertionError(f"nothing here is too large: {error}")

    outputs = Outputs(
        lambda: AckedProducer(producer_config(kafka_settings)),
        dead_letter,
        ledger,
        service="router-test",
        health=Health(),
    )
    reader = GapReader(kafka_settings, f"{prefix}gaps")
    by_offset = {m.offset() or 0: m for m in read_all(kafka_settings, source)}
    assert sorted(by_offset) == [*range(12), 13, 14, 15]  # 12 is the transaction's marker

    async def route(message: Message) -> None:
        """What a stage does: received, then its one output submitted."""
        ledger.received(message.tp, message.offset)
        await outputs.submit(message, [Outgoing(out, "k", message.value or b"")])

    def stream_message(offset: int) -> Message:
        record = by_offset[offset]
        return Message(source, 0, offset, time.time(), 0, [], b"k", record.value(), None, tp=tp)

    async def serve_until(done: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, ledger.describe(tp)
            await outputs.serve_once(0.01)

    async def scenario() -> list[int]:
        routed = []
        # The stream hands over 0-4, then 8: 5, 6 and 7 were skipped.
        for offset in (0, 1, 2, 3, 4, 8):
            await route(stream_message(offset))
        await serve_until(lambda: ledger.committable(tp) == 5)
        # The ledger's clock is passed in: a gap is repaired once repair_after (0.2 s) has
        # passed since it was first seen.
        now = time.monotonic()
        assert await repair(ledger, reader, route, now) == 0  # first seen, not waited yet
        routed.append(await repair(ledger, reader, route, now + 0.3))
        await serve_until(lambda: ledger.committable(tp) == 9)
        # 9-11, then 13: 12 holds no record (the commit marker); 13-15 follow.
        for offset in (9, 10, 11, 13, 14, 15):
            await route(stream_message(offset))
        await serve_until(lambda: ledger.committable(tp) == 12)
        now = time.monotonic()
        assert await repair(ledger, reader, route, now) == 0  # seen, not waited
        routed.append(await repair(ledger, reader, route, now + 0.3))
        await serve_until(lambda: ledger.committable(tp) == 16)
        assert ledger.gaps(time.monotonic() + 10) == []
        return routed

    try:
        routed = asyncio.run(scenario())
    finally:
        reader.close()
    assert routed == [3, 0]
    values = sorted(m.value() or b"" for m in read_all(kafka_settings, out))
    # Every record routed once: 5-7 from the broker, the rest from the "stream".
    assert values == sorted(f"r{i}".encode() for i in [*range(12), 13, 14, 15])
