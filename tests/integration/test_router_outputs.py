"""The router's output stage (services.router.outputs) against the real broker: a consumed
record is finished in the ledger (and so may be committed) only once every record it made is
acknowledged by Kafka — not while the broker refuses them, and not before their reports."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest

from herald.errors import PermanentError
from herald.metrics import Health
from herald.producer import AckedProducer
from herald.settings import KafkaSettings
from herald.streaming import Outgoing, producer_config
from herald.topics import create_declared_topics
from schemas import TopicDeclaration
from services.router.ledger import Ledger
from services.router.outputs import Outputs
from tests.integration.kafka_util import read_all

pytestmark = pytest.mark.integration


@dataclass(eq=False)
class FakeMessage:
    """Stands in for a Faust message: Outputs reads its partition and offset."""

    name: str
    tp: tuple[str, int]
    offset: int


class Input:
    """Consumed records of the topic ``input``, offsets counted per partition, each reported
    received to the ledger as the agents do."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.next = {p: 0 for p in range(3)}
        ledger.assigned({("input", p): 0 for p in range(3)})

    def take(self, name: str, partition: int) -> FakeMessage:
        message = FakeMessage(name, ("input", partition), self.next[partition])
        self.next[partition] += 1
        self.ledger.received(message.tp, message.offset)
        return message

    def committable(self) -> list[int | None]:
        return [self.ledger.committable(("input", p)) for p in range(3)]


def make_outputs(
    kafka: KafkaSettings, health: Health, dlq: str, ledger: Ledger, **config: Any
) -> Outputs:
    def dead_letter(message: Any, error: PermanentError) -> Outgoing:
        return Outgoing(dlq, message.name, b"input", [("x-error-class", error.error_class)])

    return Outputs(
        lambda: AckedProducer(producer_config(kafka, **config)),
        dead_letter,
        ledger,
        service="router-test",
        health=health,
    )


async def serve_until(outputs: Outputs, done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out serving delivery reports"
        await outputs.serve_once(0.01)


def create(kafka: KafkaSettings, *names: str) -> None:
    create_declared_topics(kafka, [TopicDeclaration(name, 3, 1, {}) for name in names])


def test_records_are_committable_after_their_outputs_and_not_while_the_broker_refuses_them(
    kafka_settings: KafkaSettings, prefix: str
) -> None:
    out, dlq, later = f"{prefix}out", f"{prefix}dlq", f"{prefix}created-later"
    create(kafka_settings, out, dlq)
    health = Health()
    ledger = Ledger({"input"})
    # Short delivery timeout: a record for a topic that does not exist is refused in ~2 s.
    outputs = make_outputs(kafka_settings, health, dlq, ledger, **{"message.timeout.ms": 2000})
    source = Input(ledger)

    async def scenario() -> None:
        for i in range(200):
            message = source.take(f"e{i}", i % 3)
            records = [
                Outgoing(out, message.name, f"{message.name}/{n}".encode()) for n in range(3)
            ]
            await outputs.submit(message, records)
        assert source.committable() != [67, 67, 66]  # not before the delivery reports
        await serve_until(outputs, lambda: source.committable() == [67, 67, 66], 30)
        assert outputs.in_flight == 0

        # A record whose output the broker refuses (no such topic yet) is not finished, the
        # worker says why, and the record is produced again until it is accepted. The records
        # after it in its partition are not committable either, even those with nothing to
        # produce; another partition's are.
        blocked = source.take("blocked", 1)
        behind, empty, elsewhere = (
            source.take("behind", 1),
            source.take("empty", 1),
            source.take("x", 2),
        )
        await outputs.submit(blocked, [Outgoing(later, "k", b"v")])
        await outputs.submit(behind, [Outgoing(out, "k", b"behind")])
        await outputs.submit(empty, [])
        await outputs.submit(elsewhere, [Outgoing(out, "k", b"elsewhere")])
        await serve_until(outputs, lambda: "router-test/producer" in health.problems(), 30)
        await serve_until(outputs, lambda: source.committable()[2] == 67, 30)
        assert source.committable()[1] == blocked.offset == 67
        create(kafka_settings, later)
        await serve_until(outputs, lambda: source.committable()[1] == 70, 90)
        assert "router-test/producer" not in health.problems()

        # An output larger than message.max.bytes: the input goes to the DLQ instead.
        huge = source.take("huge", 0)
        await outputs.submit(huge, [Outgoing(out, "k", b"x" * 2_000_000)])
        await serve_until(outputs, lambda: source.committable()[0] == 68, 30)

    asyncio.run(scenario())
    values = sorted(m.value() or b"" for m in read_all(kafka_settings, out))
    assert len(values) == 602 and len(set(values)) == 602
    assert [m.value() for m in read_all(kafka_settings, later)] == [b"v"]
    parked = read_all(kafka_settings, dlq)
    assert [(m.key(), dict(m.headers() or [])) for m in parked] == [
        (b"huge", {"x-error-class": b"record.too_large"})
    ]
