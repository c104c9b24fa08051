"""Quiet hours follow changes: services.router.hold_review.review, no broker, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from herald.serde import encode
from services.router import hold_review, quiet_hours, routing
from tests.samples import SAMPLES

#: 23:00 in London (BST, UTC+1): inside a 22:00-07:30 window.
NOW = datetime(2024, 5, 1, 22, 0, tzinfo=UTC)
#: When 22:00-07:30 London ends after NOW: 07:30 BST the next morning.
END = datetime(2024, 5, 2, 6, 30, tzinfo=UTC)

DELIVERY = SAMPLES["herald.DeliveryRequest"]
EVENT_TYPE = {**SAMPLES["herald.EventType"], "channels": ["inapp", "email", "sms"]}
USER = SAMPLES["herald.User"]


def prefs(**fields: Any) -> dict[str, Any]:
    return {
        **routing.default_preferences("user-42"),
        "quiet_hours_start": "22:00",
        "quiet_hours_end": "07:30",
        **fields,
    }


def decide(**changes: Any) -> hold_review.Decision:
    args: dict[str, Any] = {
        "delivery": DELIVERY,
        "release_at": END,
        "user": USER,
        "preferences": prefs(),
        "event_type": EVENT_TYPE,
        "now": NOW,
        **changes,
    }
    return hold_review.review(**args)


def test_unchanged_records_keep_the_delivery_held() -> None:
    assert quiet_hours.quiet_until(prefs(), USER["timezone"], NOW) == END
    decision = decide()
    assert (decision.action, decision.release_at, decision.status) == ("keep", END, None)
    assert decision.delivery == DELIVERY


def test_a_removed_window_releases_now_to_the_current_address() -> None:
    moved_user = {**USER, "email": "ada@new.example"}
    decision = decide(user=moved_user, preferences=prefs(quiet_hours_start=None))
    assert decision.action == "release"
    assert decision.delivery["destination"] == "ada@new.example"
    assert decision.delivery["delivery_id"] == DELIVERY["delivery_id"]
    assert decision.status is None  # the sender reports what happens next


def test_a_window_moved_away_from_now_releases_now() -> None:
    decision = decide(preferences=prefs(quiet_hours_start="01:00", quiet_hours_end="06:00"))
    assert decision.action == "release"


def test_a_window_moved_but_still_holding_it_moves_the_release_and_says_so() -> None:
    decision = decide(preferences=prefs(quiet_hours_end="06:00"))
    assert decision.action == "move"
    assert decision.release_at == datetime(2024, 5, 2, 5, 0, tzinfo=UTC)
    assert decision.status is not None
    assert decision.status["status"] == "pending"
    assert decision.status["error_class"] == quiet_hours.HELD_ERROR_CLASS
    assert "released at 2024-05-02T05:00:00Z" in decision.status["error_message"]


def test_an_address_change_updates_a_delivery_that_stays_held() -> None:
    decision = decide(user={**USER, "email": "ada@new.example"})
    assert decision.action == "keep"
    assert decision.delivery["destination"] == "ada@new.example"


def test_opting_out_drops_it_with_a_skipped_status() -> None:
    for preferences, reason in (
        (prefs(email_enabled=False), "email disabled by the user's preferences"),
        (
            prefs(event_overrides={"comment.created": {"enabled": False, "channels": None}}),
            "the user turned off 'comment.created' notifications in their preferences",
        ),
    ):
        decision = decide(preferences=preferences)
        assert decision.action == "drop"
        assert decision.status is not None
        assert (decision.status["status"], decision.status["error_message"]) == (
            "skipped",
            reason,
        )
    no_email = decide(user={**USER, "email": None})
    assert no_email.action == "drop"
    assert no_email.status is not None
    assert no_email.status["error_message"] == "user has no email address"


def test_an_urgent_type_is_released_and_unknown_records_keep_it() -> None:
    assert decide(event_type={**EVENT_TYPE, "urgent": True}).action == "release"
    assert decide(user=None).action == "keep"
    assert decide(event_type=None).action == "keep"


def test_only_changes_a_held_delivery_depends_on_are_reviewed() -> None:

    def user_bytes(**changes: Any) -> bytes:
        record = {"user_id": "u", "email": "u@example.com", "phone": "+14155550123",
                  "display_name": "U", "updated_at": NOW, **changes}  # fmt: skip
        return encode(routing.USER, record)

    def prefs_bytes(**changes: Any) -> bytes:
        return encode(routing.PREFERENCES, {"user_id": "u", "updated_at": NOW, **changes})

    base = user_bytes()
    assert not hold_review.affects_holds(routing.USER, base, base)
    assert not hold_review.affects_holds(routing.USER, base, user_bytes(display_name="V"))
    assert not hold_review.affects_holds(
        routing.USER, base, user_bytes(endpoints={"webhook": "https://example.com/h"})
    )
    for field, value in (("email", None), ("phone", "+14155550124"), ("locale", "fr"),
                         ("timezone", "Europe/Paris")):  # fmt: skip
        assert hold_review.affects_holds(routing.USER, base, user_bytes(**{field: value}))
    later = NOW + timedelta(minutes=1)
    assert not hold_review.affects_holds(
        routing.PREFERENCES, prefs_bytes(), prefs_bytes(updated_at=later)
    )
    assert hold_review.affects_holds(
        routing.PREFERENCES, prefs_bytes(), prefs_bytes(sms_enabled=False)
    )
    assert hold_review.affects_holds(
        routing.PREFERENCES,
        prefs_bytes(),
        prefs_bytes(quiet_hours_start="22:00", quiet_hours_end="07:00"),
    )
