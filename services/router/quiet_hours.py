"""Quiet hours as pure functions: is a user inside their quiet window now, and until when?

A user's preferences carry ``quiet_hours_start`` and ``quiet_hours_end`` (``HH:MM``, wall-clock
time in the user's IANA time zone, ``herald.User.timezone``). The window covers ``start``
inclusive to ``end`` exclusive; ``start > end`` spans midnight (``22:00``-``07:00``);
``start == end`` is no window (the ingest API refuses it, but any producer may write
preferences). During the window the router holds non-urgent email and SMS deliveries until the
window ends (services.router.holds); in-app notifications are stored as usual.

Time zones and daylight saving time go through :mod:`zoneinfo`:

- The window is decided on the local wall clock, so ``22:00``-``07:00`` stays ``22:00``-``07:00``
  local on both sides of a DST change.
- The window ends at the first instant the local clock reads ``end`` or later. When ``end``
  occurs twice (clocks go back), that is its first occurrence; when it does not occur at all
  (clocks jump forward over it), it is the instant of the jump. A window never ends early.
- An unknown time zone name is read as UTC, with a warning logged once per name per process:
  a user record with a bad zone must not stop their notifications.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)

#: The ``error_class`` of the ``pending`` status event of a held delivery.
HELD_ERROR_CLASS = "quiet_hours.held"


@lru_cache(maxsize=1024)
def user_zone(name: str | None) -> tzinfo:
    """The time zone named ``name`` (IANA); UTC, with a warning logged, if it is unknown.

    Cached: one lookup (and at most one warning) per name per process.
    """
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        log.warning(
            "unknown time zone; quiet hours read in UTC",
            extra={"timezone": name, "error": str(exc)},
        )
        return UTC


def parse_hour_minute(value: str | None) -> time | None:
    """``"HH:MM"`` (``"HH:MM:SS"`` accepted) as a :class:`datetime.time`; ``None`` if absent or
    unreadable."""
    if not value:
        return None
    try:
        return time.fromisoformat(value)
    except ValueError:
        return None


def quiet_window(preferences: Mapping[str, Any] | None) -> tuple[time, time] | None:
    """The preferences' quiet hours as ``(start, end)``, or ``None`` when there are none (or
    they are unreadable, which is logged)."""
    if not preferences:
        return None
    raw_start, raw_end = preferences.get("quiet_hours_start"), preferences.get("quiet_hours_end")
    if raw_start is None and raw_end is None:
        return None
    start, end = parse_hour_minute(raw_start), parse_hour_minute(raw_end)
    if start is None or end is None:
        log.warning(
            "unreadable quiet hours ignored",
            extra={"user_id": preferences.get("user_id"), "start": raw_start, "end": raw_end},
        )
        return None
    if start == end:
        return None
    return start, end


def is_quiet(start: time, end: time, local: time) -> bool:
    """Whether the wall-clock time ``local`` is inside ``[start, end)`` (overnight if
    ``start > end``)."""
    if start < end:
        return start <= local < end
    return local >= start or local < end


def quiet_until(
    preferences: Mapping[str, Any] | None, timezone: str | None, now: datetime
) -> datetime | None:
    """When (UTC) the user's quiet window that contains ``now`` ends; ``None`` if ``now`` is
    outside every quiet window or the user has none.

    ``timezone`` is the user's IANA zone name (unknown: UTC, see :func:`user_zone`); ``now`` must
    be timezone-aware.
    """
    window = quiet_window(preferences)
    if window is None:
        return None
    start, end = window
    zone = user_zone(timezone)
    local = now.astimezone(zone)
    wall = local.time().replace(tzinfo=None)
    if not is_quiet(start, end, wall):
        return None
    # The window ends at the next ``end`` on the local clock: today's if it is still ahead,
    # else tomorrow's (an overnight window entered before midnight).
    day = local.date() if wall < end else local.date() + timedelta(days=1)
    until = _first_instant_at(day, end, zone)
    # Only when clocks went back: in the repeated hour the wall clock may be inside the window
    # again although its end (first occurrence) has passed. The window is over.
    return until if until > now else None


def _first_instant_at(day: date, wall: time, zone: tzinfo) -> datetime:
    """The first instant (UTC) at which the local clock in ``zone`` reads ``wall`` or later on
    ``day``: the first occurrence of an ambiguous time, the DST jump for a skipped one."""
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _wall_clock(first, zone) == naive:
        return first
    # ``wall`` falls in a gap (clocks jump forward over it). fold=1 reads it with the offset
    # after the jump, an instant before the jump; fold=0 with the offset before, one after.
    # The jump is the one offset change between them: bisect for it (to the second).
    low = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first
    before = low.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    # ``high`` is at most a second past the jump and never before it; round up to the second.
    if high.microsecond:
        high = high.replace(microsecond=0) + timedelta(seconds=1)
    return high


def _wall_clock(instant: datetime, zone: tzinfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def held_message(release_at: datetime, start: time, end: time, timezone: str | None) -> str:
    """The readable reason a delivery is held, as the status history shows it."""
    zone = timezone or "UTC"
    return (
        f"held for the user's quiet hours ({start:%H:%M}-{end:%H:%M} {zone}); "
        f"released at {release_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
    )
