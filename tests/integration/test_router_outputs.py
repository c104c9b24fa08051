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
class FakeEvent:
    """Stands in for a Faust event: only its identity matters to Outputs."""

    name: str


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
        events = [FakeEvent(f"e{i}") for i in range(200)]
        for event in events:
            records = [Outgoing(out, event.name, f"{event.name}/{n}".encode()) for n in range(3)]
            await outputs.submit(stream, event, records)
        await serve_until(outputs, lambda: len(stream.acked) == 200, 30)
        assert set(stream.acked) == set(events)
        assert outputs.in_flight == 0

        # An event whose output the broker refuses (no such topic yet) is not acknowledged,
        # the worker says why, and the record is produced again until it is accepted.
        blocked = FakeEvent("blocked")
        await outputs.submit(stream, blocked, [Outgoing(later, "k", b"v")])
        await serve_until(outputs, lambda: "router-test/producer" in health.problems(), 30)
        assert blocked not in stream.acked
        create(kafka_settings, later)
        await serve_until(outputs, lambda: blocked in stream.acked, 90)
        assert "router-test/producer" not in health.problems()

        # An output larger than message.max.bytes: the input goes to the DLQ instead.
        huge = FakeEvent("huge")
        await outputs.submit(stream, huge, [Outgoing(out, "k", b"x" * 2_000_000)])
        await serve_until(outputs, lambda: huge in stream.acked, 30)

    asyncio.run(scenario())
    values = sorted(m.value() or b"" for m in read_all(kafka_settings, out))
    assert len(values) == 600 and len(set(values)) == 600
    assert [m.value() for m in read_all(kafka_settings, later)] == [b"v"]
    parked = read_all(kafka_settings, dlq)
    assert [(m.key(), dict(m.headers() or [])) for m in parked] == [
        (b"huge", {"x-error-class": b"record.too_large"})
    ]
