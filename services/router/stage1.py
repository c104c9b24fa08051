"""Stage 1, ``expand_events``: each event on ``herald.events.v1`` validated and fanned out to
its recipients. A recipient whose user tables this worker holds is routed here at once
(stage 2's routing, services.router.stage2); the others are written to
``herald.recipients.v1``, keyed by user id, for the worker that holds them.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2
from faust.types.tuples import Message
from prometheus_client import Counter

from herald.serde import Record
from herald.streaming import Outgoing
from services.router import devices, digests, routing, stage2
from services.router.runtime import Runtime, Stage, add_stage, permanent

LOCAL = Counter(
    "herald_router_local_recipients_total",
    "Recipients stage 1 routed on this worker (it holds their user's tables) instead of "
    "writing them to the recipients topic.",
)


def register(runtime: Runtime) -> Stage:
    """Add the stage-1 agent, ``expand_events``, to the worker's app."""
    topic = runtime.router.events_topic
    return add_stage(runtime, topic, "expand_events", lambda message: expand(runtime, message))


async def expand(runtime: Runtime, message: Message) -> list[Outgoing]:
    """What one event makes: its recipients routed here or written to the recipients topic;
    poison (undecodable, unknown or inactive type, too large) as one dead letter."""
    router = runtime.router
    try:
        record = routing.decode_input(message.value, routing.EVENT)
        event_type = await runtime.lookup(
            router.event_types, record["event_type"], routing.EVENT_TYPE, message
        )
        routing.check_event_type(record, event_type)
        recipients = routing.expand(record)
    except Exception as exc:
        return [runtime.dead_letter(message, permanent(exc))]
    outgoing: list[Outgoing] = []
    for recipient in recipients:
        outgoing += await route_here_or_send(runtime, recipient, message)
    return outgoing


async def route_here_or_send(runtime: Runtime, recipient: Record, event: Message) -> list[Outgoing]:
    """Route a recipient's copy here when this worker holds its user's tables (the recipients
    partition is assigned here, its tables recovered), else write it to the recipients topic
    for the worker that holds them. Routing here saves a produce, a Faust consume and a
    decode per recipient; with one worker every recipient is routed here.

    A login goes through the topic always: its known-device write must land on the changelog
    partition of the recipients record, which Faust takes from the record being processed.
    So does an event of a type with a digest window: its window state records the offset it
    has there (services.router.digests).
    If a rebalance starts while routing here, the result is dropped and the copy written to
    the topic: the tables may have been given up mid-way (a user would look unknown).
    Routing here has no side effect that routing the copy again would repeat: a quiet-hours
    hold is inserted once per delivery id."""
    app, catalogue = runtime.app, runtime.catalogue
    key = recipient["user_id"].encode()
    tp = runtime.recipient_tps[partition_of(key, catalogue.recipients.partitions)]
    if (
        devices.is_login(recipient["event"])
        or digests.takes_hop(runtime, recipient)
        or not runtime.holds_tables(tp)
    ):
        return [routing.recipient_output(recipient, catalogue)]
    generation = app.consumer_generation_id
    message = Message(
        topic=tp.topic,
        partition=tp.partition,
        offset=-1,  # never on the topic (a copy that cannot be routed here is sent there)
        timestamp=event.timestamp,
        timestamp_type=event.timestamp_type,
        headers=event.headers,
        key=key,
        value=None,
        checksum=None,
        tp=tp,
    )
    try:
        outgoing: list[Outgoing] | None = await stage2.route_recipient(runtime, recipient, message)
    except Exception:
        outgoing = None  # stage 2 parks it (or meets the same bug) with the copy's offset
    moved = app.consumer_generation_id != generation or not runtime.holds_tables(tp)
    if outgoing is None or moved or not runtime.outputs.fit(outgoing):
        # A copy that cannot be routed (or whose output the broker would refuse as too large)
        # goes through the topic too: stage 2 parks that recipient's copy alone, with the
        # offset it has there (replayable like any), and counts it in its own DLQ guard.
        return [routing.recipient_output(recipient, catalogue)]
    LOCAL.inc()
    return outgoing


@lru_cache(maxsize=65_536)
def partition_of(key: bytes, partitions: int) -> int:
    """The recipients partition of a user id: murmur2 as the Java client, aiokafka and Faust
    (and Herald's producers, herald.streaming.producer_config) partition keys."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions
