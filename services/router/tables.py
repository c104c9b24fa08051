"""The agents that keep the router's tables equal to the compacted topics: event types (a
global table), users and preferences (this worker's partitions). A tombstone deletes (a
user's tombstone, an erasure, also deletes their known devices); an invalid record is logged
and left out (the table keeps the last valid version)."""

from __future__ import annotations

import time
from typing import Any, Final

from faust.types import EventT, StreamT
from prometheus_client import Counter

from herald.errors import PermanentError
from herald.metrics import ERRORS, RECORDS_IN, labelled
from services.router import digests, hold_review, routing
from services.router.app import SERVICE
from services.router.runtime import Runtime, log, table_value, where

#: How long, and for how many users at most, a worker remembers an erased user.
ERASED_MEMORY_S: Final = 86_400.0
ERASED_MEMORY_MAX: Final = 100_000

ERASED_DROPPED = Counter(
    "herald_router_erased_user_records_total",
    "Recipients' copies of events for a user erased moments before (DELETE /v1/users/{id}), "
    "dropped with no send",
)


def forget_user(runtime: Runtime, key: bytes) -> None:
    """A user was erased (a tombstone on the users topic): drop their known devices too (a
    tombstone on that table's changelog), and remember the erasure for a while, so that their
    events still in flight are dropped (:func:`was_erased`) instead of dead-lettered. A
    worker that starts later knows no erasure: such an event is dead-lettered as
    ``user.unknown``, still with no send."""
    runtime.router.known_devices.pop(key, None)
    digests.forget(runtime, key)  # their open digest windows (tombstoned on the changelog)
    erased = runtime.erased
    now = time.time()
    erased.pop(key, None)
    erased[key] = now
    while erased and (
        len(erased) > ERASED_MEMORY_MAX or next(iter(erased.values())) < now - ERASED_MEMORY_S
    ):
        del erased[next(iter(erased))]


def was_erased(runtime: Runtime, user_id: str) -> bool:
    """Whether this worker saw ``user_id`` erased in the last ``ERASED_MEMORY_S``."""
    at = runtime.erased.get(user_id.encode())
    return at is not None and at >= time.time() - ERASED_MEMORY_S


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
    # A user's or preferences' change decides their quiet-hours holds again
    # (services.router.hold_review) before the feeder moves on (and its offset is committed).
    reviews = full_name in (routing.USER, routing.PREFERENCES)

    async def feed(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            key = event.message.key
            before = table_value(table, key) if reviews and key else None
            store(runtime, event, table, full_name)
            after = table_value(table, key) if before is not None else None
            # A tombstone (erasure) deletes the rows instead; an invalid record changed nothing.
            if (
                before is not None
                and after is not None
                and hold_review.affects_holds(full_name, before, after)
            ):
                await hold_review.review_user(runtime, key.decode(errors="replace"))

    return feed


def store(runtime: Runtime, event: EventT, table: Any, full_name: str) -> None:
    """Copy one compacted-topic record into its table."""
    message = event.message
    labelled(RECORDS_IN, SERVICE, message.topic).inc()
    runtime.stored[message.tp] = message.offset
    if not message.key:
        log.warning("record without a key ignored", extra=where(message))
        return
    if message.value is None:
        table.pop(message.key, None)
        if full_name == routing.USER:
            forget_user(runtime, message.key)
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
