"""The router's output stage (services.router.outputs) against the real broker: a consumed
record is acknowledged (and so may be committed by Faust) only once every record it made is
acknowledged by Kafka — not while the broker refuses them, and not before their reports."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from herald.errors import PermanentError
from herald.metrics import Health
from herald.producer import AckedProducer
from herald.settings import KafkaSettings
from herald.streaming import Outgoing, producer_config
from herald.topics import admin_client, create_declared_topics, delete_topics
from schemas import TopicDeclaration
from services.router.outputs import Outputs
from tests.integration.kafka_util import read_all

pytestmark = pytest.mark.integration


@dataclass(eq=False)
class FakeMessage:
    tp: tuple[str, int]


@dataclass(eq=False)
class FakeEvent:
    """Stands in for a Faust event: its identity and its partition matter to Outputs."""

    name: str
    partition: int = 0

    @property
    def message(self) -> FakeMessage:
        return FakeMessage(("input", self.partition))


class Stream:
    """Records the acks Outputs gives (Faust's ``Stream.ack`` in production)."""

    def __init__(self) -> None:
        self.acked: list[FakeEvent] = []

    async def ack(self, event: FakeEvent) -> bool:
        self.acked.append(event)
        return True


@pytest.fixture
def prefix(kafka_settings: KafkaSettings) -> Iterator[str]:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    yield prefix
    names = admin_client(kafka_settings).list_topics(timeout=10).topics
    delete_topics(kafka_settings, [name for name in names if name.startswith(prefix)])


def make_outputs(kafka: KafkaSettings, health: Health, dlq: str, **config: Any) -> Outputs:
    def dead_letter(event: Any, error: PermanentError) -> Outgoing:
        return Outgoing(dlq, event.name, b"input", [("x-error-class", error.error_class)])

    return Outputs(
        lambda: AckedProducer(producer_config(kafka, **config)),
        dead_letter,
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


def test_events_are_acked_after_their_outputs_and_not_while_the_broker_refuses_them(
    kafka_settings: KafkaSettings, prefix: str
) -> None:
    out, dlq, later = f"{prefix}out", f"{prefix}dlq", f"{prefix}created-later"
    create(kafka_settings, out, dlq)
    health = Health()
    # Short delivery timeout: a record for a topic that does not exist is refused in ~2 s.
    outputs = make_outputs(kafka_settings, health, dlq, **{"message.timeout.ms": 2000})
    stream = Stream()

    async def scenario() -> None:
        events = [FakeEvent(f"e{i}", i % 3) for i in range(200)]
        for event in events:
            records = [Outgoing(out, event.name, f"{event.name}/{n}".encode()) for n in range(3)]
            await outputs.submit(stream, event, records)
        await serve_until(outputs, lambda: len(stream.acked) == 200, 30)
        assert set(stream.acked) == set(events)
        assert outputs.in_flight == 0

        # An event whose output the broker refuses (no such topic yet) is not acknowledged,
        # the worker says why, and the record is produced again until it is accepted. The
        # events after it in its partition wait for it, even those with nothing to produce;
        # another partition's events do not.
        blocked = FakeEvent("blocked", 1)
        behind, empty, elsewhere = FakeEvent("behind", 1), FakeEvent("empty", 1), FakeEvent("x", 2)
        await outputs.submit(stream, blocked, [Outgoing(later, "k", b"v")])
        await outputs.submit(stream, behind, [Outgoing(out, "k", b"behind")])
        await outputs.submit(stream, empty, [])
        await outputs.submit(stream, elsewhere, [Outgoing(out, "k", b"elsewhere")])
        await serve_until(outputs, lambda: "router-test/producer" in health.problems(), 30)
        await serve_until(outputs, lambda: elsewhere in stream.acked, 30)
        assert not {blocked, behind, empty} & set(stream.acked)
        create(kafka_settings, later)
        await serve_until(outputs, lambda: empty in stream.acked, 90)
        assert stream.acked[-4:] == [elsewhere, blocked, behind, empty]
        assert "router-test/producer" not in health.problems()

        # An output larger than message.max.bytes: the input goes to the DLQ instead.
        huge = FakeEvent("huge")
        await outputs.submit(stream, huge, [Outgoing(out, "k", b"x" * 2_000_000)])
        await serve_until(outputs, lambda: huge in stream.acked, 30)

    asyncio.run(scenario())
    values = sorted(m.value() or b"" for m in read_all(kafka_settings, out))
    assert len(values) == 602 and len(set(values)) == 602
    assert [m.value() for m in read_all(kafka_settings, later)] == [b"v"]
    parked = read_all(kafka_settings, dlq)
    assert [(m.key(), dict(m.headers() or [])) for m in parked] == [
        (b"huge", {"x-error-class": b"record.too_large"})
    ]
