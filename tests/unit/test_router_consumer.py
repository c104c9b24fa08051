"""The router's changes to Faust's consumer (services.router.app): the fetch wait Faust fixes,
the short fetch while a partition is held back, and the per-batch delivery loop. No broker:
aiokafka's consumer is built but never started."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from faust.types import TP

from services.router.app import BUFFERED_FETCH_TIMEOUT, LedgerConsumer, create_router
from services.router.settings import RouterSettings

TOPIC = TP("t", 0)


@dataclass
class FakeMessage:
    tp: TP
    offset: int

    @property
    def topic(self) -> str:
        return self.tp.topic


def test_the_fetch_wait_of_the_settings_reaches_aiokafka() -> None:
    async def built() -> int:
        app = create_router(router_settings=RouterSettings(fetch_max_wait_ms=123)).app
        aio = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
        try:
            return int(aio._fetch_max_wait_ms)
        finally:
            await aio.stop()

    assert asyncio.run(built()) == 123
    # aiokafka builds its fetcher from that attribute when it starts: a rename there would
    # leave Faust's 1,500 ms in place without this failing elsewhere.
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)


def test_a_partition_held_back_for_buffer_pressure_makes_fetches_short() -> None:
    async def timeouts() -> tuple[float, float]:
        consumer = create_router().app.consumer
        assert isinstance(consumer, LedgerConsumer)
        idle = consumer._fetch_timeout()
        consumer.on_buffer_full(TOPIC)
        return idle, consumer._fetch_timeout()

    idle, held = asyncio.run(timeouts())
    assert idle == 1.0
    assert held == BUFFERED_FETCH_TIMEOUT


def test_a_batch_is_delivered_in_order_skipping_what_is_behind_the_read_offset() -> None:
    async def deliver() -> tuple[list[int], int | None]:
        consumer = create_router().app.consumer
        assert isinstance(consumer, LedgerConsumer)
        delivered: list[int] = []

        async def callback(message: FakeMessage) -> None:
            delivered.append(message.offset)

        consumer.callback = callback  # type: ignore[assignment]
        consumer._read_offset[TOPIC] = 5
        await consumer._deliver([(TOPIC, FakeMessage(TOPIC, o)) for o in (3, 5, 6, 7)])  # type: ignore[misc]
        return delivered, consumer._read_offset[TOPIC]

    assert asyncio.run(deliver()) == ([5, 6, 7], 7)


def test_delivery_stops_when_the_generation_changes_mid_batch() -> None:
    async def deliver() -> list[int]:
        app = create_router().app
        consumer = app.consumer
        assert isinstance(consumer, LedgerConsumer)
        delivered: list[int] = []

        async def callback(message: FakeMessage) -> None:
            delivered.append(message.offset)
            if message.offset == 1:
                app.consumer_generation_id += 1  # a rebalance while the batch is delivered

        consumer.callback = callback  # type: ignore[assignment]
        await consumer._deliver([(TOPIC, FakeMessage(TOPIC, o)) for o in range(5)])  # type: ignore[misc]
        return delivered

    assert asyncio.run(deliver()) == [0, 1]
