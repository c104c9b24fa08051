"""Stage 2, ``route_recipients``: each recipient's copy on ``herald.recipients.v1`` →
notification, delivery requests and ``pending``/``skipped`` statuses, from the user,
preferences and event type tables. A ``user.login`` also updates the user's known devices; a
new device raises a ``security.login_alert``, routed the same way (services.router.devices).
Email and SMS held for the user's quiet hours are stored in PostgreSQL (services.router.holds)
before the record can be finished.
"""

from __future__ import annotations

from datetime import UTC, datetime

from faust.types.tuples import Message

from herald.errors import PermanentError
from herald.metrics import DELIVERIES, labelled
from herald.seed import LOGIN_ALERT
from herald.serde import Record
from herald.streaming import Outgoing
from services.router import devices, digests, hold_review, routing, tables
from services.router.runtime import Runtime, Stage, add_stage, decoded, permanent, table_value


def register(runtime: Runtime) -> Stage:
    """Add the stage-2 agent, ``route_recipients``, to the worker's app."""
    topic = runtime.router.recipients_topic
    return add_stage(runtime, topic, "route_recipients", lambda message: route(runtime, message))


async def route(runtime: Runtime, message: Message) -> list[Outgoing]:
    """What one recipient's copy makes; poison as one dead letter."""
    try:
        recipient = routing.decode_input(message.value, routing.RECIPIENT_EVENT)
        return await route_recipient(runtime, recipient, message)
    except Exception as exc:
        return [runtime.dead_letter(message, permanent(exc))]


async def route_recipient(runtime: Runtime, recipient: Record, message: Message) -> list[Outgoing]:
    """Route one recipient's copy with this worker's tables (``message`` says where it is:
    its partition picks the tables to wait for). Raises what makes it poison."""
    router = runtime.router
    user_id = recipient["user_id"]
    code = recipient["event"]["event_type"]
    # A preference changed just before this event must rule it: let the feeders of this
    # partition's user and preferences rows store what their topics hold first.
    await runtime.wait_until_fed(message.partition, runtime.deadline(message))
    user = await runtime.lookup(router.users, user_id, routing.USER, message)
    if user is None:
        if tables.was_erased(runtime, user_id):
            tables.ERASED_DROPPED.inc()
            return []  # erased (DELETE /v1/users/{id}) while the event was in flight
        raise PermanentError(
            f"user {user_id!r} is unknown (no record on the users topic)",
            error_class="user.unknown",
        )
    event_type = routing.check_event_type(
        recipient["event"],
        await runtime.lookup(router.event_types, code, routing.EVENT_TYPE, message),
    )
    if digests.is_digested(event_type) and not devices.is_login(recipient["event"]):
        absorbed = digests.absorb(runtime, recipient, event_type, message)
        if absorbed is not None:  # in the user's digest window (services.router.digests)
            return absorbed
    raw_user = table_value(router.users, user_id.encode())
    raw_preferences = table_value(router.preferences, user_id.encode())
    user_preferences = decoded(raw_preferences, routing.PREFERENCES) if raw_preferences else None
    now = datetime.now(UTC)
    routed = routing.route(recipient, user, user_preferences, event_type, now)
    outgoing = routing.routed_outputs(routed, runtime.catalogue)
    if devices.is_login(recipient["event"]):
        outgoing += await _login_alert(runtime, recipient, user, user_preferences, now, message)
    for status in routed.statuses:
        labelled(DELIVERIES, status["channel"], status["status"]).inc()
    held = routing.held_rows(routed)
    await runtime.hold(held)
    if held and (raw_user, raw_preferences) != (
        table_value(router.users, user_id.encode()),
        table_value(router.preferences, user_id.encode()),
    ):
        # The user changed while this was routed: that change's review may have missed it.
        await hold_review.review_user(runtime, user_id)
    return outgoing


async def _login_alert(
    runtime: Runtime,
    recipient: Record,
    user: Record,
    user_preferences: Record | None,
    now: datetime,
    message: Message,
) -> list[Outgoing]:
    """Learn a login's device; a device new for this user raises a ``security.login_alert``,
    routed like any event (see services.router.devices). The table is updated only once the
    alert is routed, so a login parked on the DLQ is decided again when replayed."""
    router = runtime.router
    key = recipient["user_id"].encode()
    known = devices.decode_devices(table_value(router.known_devices, key))
    updated, is_new = devices.observe_login(known, recipient["event"], now)
    outgoing: list[Outgoing] = []
    if is_new:
        alert = devices.login_alert(recipient)
        alert_type = routing.check_event_type(
            alert["event"],
            await runtime.lookup(router.event_types, LOGIN_ALERT, routing.EVENT_TYPE, message),
        )
        routed = routing.route(alert, user, user_preferences, alert_type, now)
        outgoing = routing.routed_outputs(routed, runtime.catalogue)
        for status in routed.statuses:
            labelled(DELIVERIES, status["channel"], status["status"]).inc()
        await runtime.hold(routing.held_rows(routed))
    if updated != known:
        router.known_devices[key] = devices.encode_devices(updated)
    return outgoing
