"""Quiet hours follow changes: a user's held deliveries are decided again whenever their user
record or their preferences change.

A delivery held for quiet hours (services.router.holds) was decided with the user and
preferences of the moment it was routed. When either changes, :func:`review_user` (run by the
worker holding that user's tables, see services.router.tables) decides each of the user's held
deliveries again with the current records (:func:`review`, pure):

- **dropped** (status ``skipped``, with the reason) when the user opted out meanwhile: the
  channel switched off, the event type turned off, or the address removed;
- **released now** when the window was removed, moved so that now is outside it, or the type
  became urgent: the delivery goes to its channel topic at once;
- **moved** (a new ``release_at`` and a new ``pending`` status saying until when) when the
  window still holds it but ends at another time;
- otherwise kept. In every case but a drop, the delivery request is brought up to date with
  the user's current address (and locale), so that a held delivery always goes to the address
  the user has when it is released.

The rows are locked (``FOR UPDATE``) for the decision, so the release loop (``SKIP LOCKED``)
never releases a row while it is being decided; a row being released is decided once the
release loop's transaction ends (it is then gone). Stage 2 also runs a review when the user's
records changed between routing a held delivery and storing it (the review of that change may
have run before the row existed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from herald.metrics import ERRORS, Backoff
from herald.serde import Record
from herald.status import status_event
from services.router import quiet_hours, routing
from services.router.app import SERVICE
from services.router.runtime import Runtime, decoded, log, table_value


@dataclass(frozen=True)
class Decision:
    """What becomes of one held delivery: ``action`` is ``keep``, ``move``, ``release`` or
    ``drop``; ``delivery`` the (updated) request; ``release_at`` the new release time (keep,
    move); ``status`` the status event to publish, if any."""

    action: str
    delivery: Record
    release_at: datetime | None = None
    status: Record | None = None


def review(
    delivery: Mapping[str, Any],
    release_at: datetime,
    user: Mapping[str, Any] | None,
    preferences: Mapping[str, Any] | None,
    event_type: Mapping[str, Any] | None,
    now: datetime,
) -> Decision:
    """Decide one held delivery again with the user's current records (see the module
    docstring). A user or event type this worker does not know (any more) keeps the delivery
    as it was held: erasure and event type changes are not this function's business."""
    current: Record = dict(delivery)
    if user is None or event_type is None:
        return Decision("keep", current, release_at)
    channel = current["channel"]
    reason = routing.choose_channels(event_type, preferences, user).get(channel, "channel gone")
    if reason is not None:
        status = status_event(current, "skipped", error_message=reason, now=now)
        return Decision("drop", current, status=status)
    current["destination"] = routing.destination(channel, user)
    current["locale"] = user.get("locale") or current.get("locale") or "en"
    until = None
    if not event_type.get("urgent", False):
        until = quiet_hours.quiet_until(preferences, user.get("timezone"), now)
    if until is None:
        return Decision("release", current)
    if until == release_at:
        return Decision("keep", current, release_at)
    window = quiet_hours.quiet_window(preferences)
    assert window is not None  # until comes from this window
    message = quiet_hours.held_message(until, *window, user.get("timezone"))
    status = status_event(
        current,
        "pending",
        error_class=quiet_hours.HELD_ERROR_CLASS,
        error_message=message,
        now=now,
    )
    return Decision("move", current, until, status)


#: The user fields a held (email or SMS) delivery depends on: the address, the locale it is
#: sent in, and the time zone its quiet hours are read in.
_USER_FIELDS_HELD = ("email", "phone", "locale", "timezone")


def affects_holds(full_name: str, before: bytes, after: bytes) -> bool:
    """Whether a change of a user record (``routing.USER``) or of preferences
    (``routing.PREFERENCES``) from ``before`` to ``after`` (table values) can change a held
    delivery's fate: a user's address, locale or time zone; anything in the preferences but
    their ``updated_at``. Other changes (a display name, an endpoint) need no review, and no
    database round trip."""
    if before == after:
        return False
    old, new = decoded(before, full_name), decoded(after, full_name)
    if full_name == routing.USER:
        return any(old.get(f) != new.get(f) for f in _USER_FIELDS_HELD)
    return {**old, "updated_at": None} != {**new, "updated_at": None}


def _table_record(table: Any, user_id: str, full_name: str) -> Record | None:
    raw = table_value(table, user_id.encode())
    return decoded(raw, full_name) if raw is not None else None


def decider(runtime: Runtime, user_id: str) -> Any:
    """The decision function for :meth:`HoldStore.review`: this worker's current records."""
    router = runtime.router
    user = _table_record(router.users, user_id, routing.USER)
    preferences = _table_record(router.preferences, user_id, routing.PREFERENCES)

    def decide(delivery: Record, release_at: datetime) -> Decision:
        event_type = _table_record(router.event_types, delivery["event_type"], routing.EVENT_TYPE)
        return review(delivery, release_at, user, preferences, event_type, datetime.now(UTC))

    return decide


async def review_user(runtime: Runtime, user_id: str) -> None:
    """Decide ``user_id``'s held deliveries again (see the module docstring). A database or
    broker that does not answer is waited for, with growing pauses: the caller (a table
    feeder, or stage 2) must not move on before the change is applied, or a crash would lose
    it."""
    backoff = Backoff(initial=0.5, maximum=30.0)
    while True:
        try:
            counts = await asyncio.to_thread(
                runtime.hold_store.review, user_id, decider(runtime, user_id)
            )
        except Exception:
            pause = backoff.next()
            ERRORS.labels(SERVICE, "quiet_hours.review").inc()
            log.exception(
                "could not review held deliveries; retrying",
                extra={"user_id": user_id, "retry_in_s": pause},
            )
            await asyncio.sleep(pause)
            continue
        if any(action != "keep" for action in counts):
            log.info("held deliveries reviewed", extra={"user_id": user_id, **counts})
        return
