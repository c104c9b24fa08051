"""The agents that keep the router's tables equal to the compacted topics: event types (a
global table), users and preferences (this worker's partitions). A tombstone deletes; an
invalid record is logged and left out (the table keeps the last valid version)."""

from __future__ import annotations

from typing import Any

from faust.types import EventT, StreamT

from herald.errors import PermanentError
from herald.metrics import ERRORS
from services.router import routing
from services.router.app import SERVICE
from services.router.runtime import Runtime, log, records_in, where


def register(runtime: Runtime) -> None:
    """Add the table feeders to the worker's app."""
    router = runtime.router
    feeds = (
        ("load_event_types", router.event_types_topic, router.event_types, routing.EVENT_TYPE),
        ("load_users", router.users_topic, router.users, routing.USER),
        ("load_preferences", router.preferences_topic, router.preferences, routing.PREFERENCES),
    )
    for name, topic, table, full_name in feeds:
        router.app.agent(topic, name=name)(_feeder(runtime, table, full_name))


def _feeder(runtime: Runtime, table: Any, full_name: str) -> Any:
    async def feed(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            store(runtime, event, table, full_name)

    return feed


def store(runtime: Runtime, event: EventT, table: Any, full_name: str) -> None:
    """Copy one compacted-topic record into its table."""
    message = event.message
    records_in(message.topic).inc()
    runtime.stored[message.tp] = message.offset
    if not message.key:
        log.warning("record without a key ignored", extra=where(message))
        return
    if message.value is None:
        table.pop(message.key, None)
        return
    try:
        routing.decode_input(message.value, full_name)
    except PermanentError as exc:
        ERRORS.labels(SERVICE, exc.error_class).inc()
        log.warning(
            "invalid table record ignored",
            extra={**where(message), "error_class": exc.error_class, "error": exc.message},
        )
        return
    # The Avro bytes as they came: the changelog then holds records any Herald tool can read,
    # and values written by an older schema still resolve when looked up.
    table[message.key] = message.value
