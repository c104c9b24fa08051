"""Quiet hours (services/router/quiet_hours.py and their use in routing.route): no broker."""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime, time
from typing import Any

import pytest

from herald.identity import delivery_id, notification_id
from herald.serde import decode
from schemas import CATALOGUE
from services.router import quiet_hours, routing
from tests.samples import EVENT, SAMPLES, WHEN


def prefs(start: str | None, end: str | None, **fields: Any) -> dict[str, Any]:
    return {
        **routing.default_preferences("user-42"),
        "quiet_hours_start": start,
        "quiet_hours_end": end,
        "updated_at": WHEN,
        **fields,
    }


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- the window ---------------------------------------------------------------------------


def test_no_quiet_hours_means_never_quiet() -> None:
    now = utc(2024, 5, 1, 23, 0)
    assert quiet_hours.quiet_until(None, "UTC", now) is None
    assert quiet_hours.quiet_until(prefs(None, None), "UTC", now) is None


@pytest.mark.parametrize(
    ("now", "until"),
    [
        (utc(2024, 5, 1, 8, 59), None),  # before the window
        (utc(2024, 5, 1, 9, 0), utc(2024, 5, 1, 17, 30)),  # the start is inside
        (utc(2024, 5, 1, 12, 0), utc(2024, 5, 1, 17, 30)),
        (utc(2024, 5, 1, 17, 29, 59), utc(2024, 5, 1, 17, 30)),
        (utc(2024, 5, 1, 17, 30), None),  # the end is outside
    ],
)
def test_a_daytime_window(now: datetime, until: datetime | None) -> None:
    assert quiet_hours.quiet_until(prefs("09:00", "17:30"), "UTC", now) == until


@pytest.mark.parametrize(
    ("now", "until"),
    [
        (utc(2024, 5, 1, 21, 59), None),
        (utc(2024, 5, 1, 22, 0), utc(2024, 5, 2, 7, 0)),  # before midnight: tomorrow's end
        (utc(2024, 5, 1, 23, 45), utc(2024, 5, 2, 7, 0)),
        (utc(2024, 5, 2, 0, 0), utc(2024, 5, 2, 7, 0)),  # after midnight: today's end
        (utc(2024, 5, 2, 6, 59), utc(2024, 5, 2, 7, 0)),
        (utc(2024, 5, 2, 7, 0), None),
        (utc(2024, 5, 2, 12, 0), None),
    ],
)
def test_an_overnight_window(now: datetime, until: datetime | None) -> None:
    assert quiet_hours.quiet_until(prefs("22:00", "07:00"), "UTC", now) == until


def test_the_window_is_read_in_the_users_time_zone() -> None:
    # 20:30 UTC is 22:30 in Paris (CEST, UTC+2) and 16:30 in New York (EDT, UTC-4).
    now = utc(2024, 5, 1, 20, 30)
    window = prefs("22:00", "07:00")
    assert quiet_hours.quiet_until(window, "Europe/Paris", now) == utc(2024, 5, 2, 5, 0)
    assert quiet_hours.quiet_until(window, "America/New_York", now) is None
    # A non-UTC ``now`` is the same instant.
    paris = now.astimezone(quiet_hours.user_zone("Europe/Paris"))
    assert quiet_hours.quiet_until(window, "Europe/Paris", paris) == utc(2024, 5, 2, 5, 0)


def test_a_window_ending_after_clocks_go_forward() -> None:
    # Paris, night of 30-31 March 2024: 02:00 CET becomes 03:00 CEST. A 22:00-07:00 window
    # entered at 22:30 CET (21:30 UTC) ends at 07:00 CEST = 05:00 UTC: 7.5 hours, not 8.5.
    until = quiet_hours.quiet_until(
        prefs("22:00", "07:00"), "Europe/Paris", utc(2024, 3, 30, 21, 30)
    )
    assert until == utc(2024, 3, 31, 5, 0)


def test_a_window_ending_after_clocks_go_back() -> None:
    # Paris, night of 26-27 October 2024: 03:00 CEST becomes 02:00 CET. 07:00 CET = 06:00 UTC.
    until = quiet_hours.quiet_until(
        prefs("22:00", "07:00"), "Europe/Paris", utc(2024, 10, 26, 21, 0)
    )
    assert until == utc(2024, 10, 27, 6, 0)


def test_an_end_skipped_by_the_clocks_ends_the_window_at_the_jump() -> None:
    # New York, 10 March 2024: 02:00 EST jumps to 03:00 EDT (07:00 UTC); 02:30 never happens.
    # The window ends at the jump, never before it and never an hour late.
    until = quiet_hours.quiet_until(
        prefs("23:00", "02:30"), "America/New_York", utc(2024, 3, 10, 5, 0)
    )
    assert until == utc(2024, 3, 10, 7, 0)


def test_an_end_the_clocks_show_twice_ends_the_window_the_first_time() -> None:
    # New York, 3 November 2024: 01:30 happens at 05:30 UTC (EDT), then again at 06:30 (EST).
    window = prefs("23:00", "01:30")
    assert quiet_hours.quiet_until(window, "America/New_York", utc(2024, 11, 3, 4, 0)) == utc(
        2024, 11, 3, 5, 30
    )
    # In the repeated hour the clock reads 01:10 again, but the window has ended.
    assert quiet_hours.quiet_until(window, "America/New_York", utc(2024, 11, 3, 6, 10)) is None


def test_an_unknown_time_zone_is_read_as_utc_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    quiet_hours.user_zone.cache_clear()
    with caplog.at_level(logging.WARNING, logger=quiet_hours.__name__):
        until = quiet_hours.quiet_until(
            prefs("22:00", "07:00"), "Mars/Olympus", utc(2024, 5, 1, 23)
        )
        quiet_hours.quiet_until(prefs("22:00", "07:00"), "Mars/Olympus", utc(2024, 5, 1, 23))
    assert until == utc(2024, 5, 2, 7, 0)
    warnings = [r for r in caplog.records if "unknown time zone" in r.getMessage()]
    assert len(warnings) == 1  # once per name, not once per event
    assert getattr(warnings[0], "timezone", None) == "Mars/Olympus"


@pytest.mark.parametrize("bad", ["", "../../etc/passwd", "Not A Zone"])
def test_other_bad_zone_names_are_utc(bad: str) -> None:
    assert quiet_hours.user_zone(bad) is UTC


def test_unreadable_or_empty_windows_are_no_windows() -> None:
    now = utc(2024, 5, 1, 23, 0)
    assert quiet_hours.quiet_until(prefs("late", "07:00"), "UTC", now) is None
    assert quiet_hours.quiet_until(prefs("22:00", None), "UTC", now) is None
    assert quiet_hours.quiet_until(prefs("22:00", "22:00"), "UTC", now) is None


def test_is_quiet_boundaries() -> None:
    assert quiet_hours.is_quiet(time(22), time(7), time(22))
    assert not quiet_hours.is_quiet(time(22), time(7), time(7))
    assert quiet_hours.is_quiet(time(9), time(17), time(9))
    assert not quiet_hours.is_quiet(time(9), time(17), time(17))


# --- routing ------------------------------------------------------------------------------

NIGHT = utc(2024, 5, 1, 23, 0)  # midnight in London (BST)
LONDON_MORNING = utc(2024, 5, 2, 6, 0)  # 07:00 BST


def _event_type(**fields: Any) -> dict[str, Any]:
    base = copy.deepcopy(SAMPLES["herald.EventType"])
    base.update({"channels": ["inapp", "email", "sms"], "urgent": False, **fields})
    return base


def _recipient() -> dict[str, Any]:
    event = copy.deepcopy(EVENT)
    event["context"] = {"post_title": "Kafka", "comment_url": "https://x.test/c/1", "actor": "Bo"}
    return {"user_id": "user-42", "event": event}


def _route(preferences: dict[str, Any] | None, now: datetime = NIGHT, **type_fields: Any) -> Any:
    user = SAMPLES["herald.User"]  # Europe/London
    return routing.route(_recipient(), user, preferences, _event_type(**type_fields), now)


def test_route_holds_email_and_sms_during_quiet_hours_but_not_in_app() -> None:
    routed = _route(prefs("22:00", "07:00"))
    nid = notification_id(EVENT["event_id"], "user-42")
    assert routed.notification is not None
    assert routed.notification["channels"] == ["inapp", "email", "sms"]
    assert [d["channel"] for d in routed.deliveries] == ["inapp"]
    assert [(h.delivery["channel"], h.release_at) for h in routed.held] == [
        ("email", LONDON_MORNING),
        ("sms", LONDON_MORNING),
    ]
    statuses = {s["channel"]: s for s in routed.statuses}
    # In-app is delivered now (its first status comes from inapp_store).
    assert {c: s["status"] for c, s in statuses.items()} == dict.fromkeys(
        ("email", "sms"), "pending"
    )
    for channel in ("email", "sms"):
        assert statuses[channel]["delivery_id"] == delivery_id(nid, channel)
        assert statuses[channel]["error_class"] == "quiet_hours.held"
        message = statuses[channel]["error_message"]
        assert "22:00-07:00 Europe/London" in message
        assert "2024-05-02T06:00:00Z" in message


def test_held_deliveries_are_not_on_the_channel_topics_but_become_rows() -> None:
    routed = _route(prefs("22:00", "07:00"))
    topics = [out.topic for out in routing.routed_outputs(routed, CATALOGUE)]
    assert "herald.deliveries.email.v1" not in topics
    assert "herald.deliveries.sms.v1" not in topics
    assert "herald.deliveries.inapp.v1" in topics
    rows = routing.held_rows(routed)
    assert [(r["channel"], r["user_id"], r["release_at"]) for r in rows] == [
        ("email", "user-42", LONDON_MORNING),
        ("sms", "user-42", LONDON_MORNING),
    ]
    request = decode(rows[0]["payload"], routing.DELIVERY_REQUEST)
    assert request == routed.held[0].delivery
    assert request["destination"] == "ada@example.com"


def test_urgent_types_are_never_held() -> None:
    routed = _route(prefs("22:00", "07:00"), urgent=True)
    assert routed.held == []
    assert [d["channel"] for d in routed.deliveries] == ["inapp", "email", "sms"]
    assert all(s["error_class"] is None for s in routed.statuses)


def test_outside_quiet_hours_nothing_is_held() -> None:
    routed = _route(prefs("22:00", "07:00"), now=utc(2024, 5, 1, 12, 0))
    assert routed.held == []
    assert len(routed.deliveries) == 3


def test_without_quiet_hours_nothing_is_held() -> None:
    assert _route(None).held == []
    assert _route(prefs(None, None)).held == []


def test_a_skipped_channel_stays_skipped_during_quiet_hours() -> None:
    routed = _route(prefs("22:00", "07:00", sms_enabled=False))
    assert [h.delivery["channel"] for h in routed.held] == ["email"]
    statuses = {s["channel"]: s["status"] for s in routed.statuses}
    assert statuses == {"email": "pending", "sms": "skipped"}
