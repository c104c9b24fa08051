"""The weekly summary's pure parts: grouping unread rows, the digest event, its weekly id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from herald.digest import (
    MAX_TITLE_CHARS,
    UserDigest,
    digest_event,
    digest_event_id,
    group_unread,
    iso_week,
)
from herald.serde import decode, encode
from services.router.routing import EVENT, check_bounds

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a Monday, ISO week 48


def rows(user: str, titles: list[str]) -> list[tuple[str, str, datetime]]:
    return [(user, title, NOW - timedelta(hours=n)) for n, title in enumerate(titles)]


def test_rows_are_grouped_per_user_with_a_count_and_the_newest_titles() -> None:
    data = rows("ann", ["a1", "a2"]) + rows("bob", [f"b{n}" for n in range(7)]) + rows("cy", ["c"])
    digests = group_unread(data, max_titles=5)
    assert digests == [
        UserDigest("ann", 2, ("a1", "a2")),
        UserDigest("bob", 7, ("b0", "b1", "b2", "b3", "b4")),
        UserDigest("cy", 1, ("c",)),
    ]
    assert group_unread([]) == []


def test_the_event_id_is_the_same_all_week_and_differs_per_user_and_week() -> None:
    assert iso_week(NOW) == "2026-W48"
    sunday = NOW + timedelta(days=6, hours=15)
    assert iso_week(sunday) == "2026-W48"
    assert iso_week(sunday + timedelta(hours=1)) == "2026-W49"
    same = digest_event_id("ann", iso_week(NOW))
    assert same == digest_event_id("ann", iso_week(sunday))
    assert same != digest_event_id("bob", iso_week(NOW))
    assert same != digest_event_id("ann", "2026-W49")


def test_the_digest_event_is_a_valid_event_for_its_user() -> None:
    event = digest_event(UserDigest("bob", 7, ("b0", "b1")), NOW)
    assert event["event_type"] == "digest.weekly"
    assert event["recipients"] == ["bob"]
    assert event["event_id"] == digest_event_id("bob", "2026-W48")
    assert event["context"] == {
        "count": "7",
        "plural": "s",
        "week": "2026-W48",
        "titles": "- b0\n- b1\n... and 5 more",
    }
    assert decode(encode("herald.Event", event))["context"] == event["context"]
    assert digest_event(UserDigest("ann", 1, ("a",)), NOW)["context"]["plural"] == ""


def test_long_titles_are_cut_so_the_digest_stays_within_the_router_bounds() -> None:
    event = digest_event(UserDigest("bob", 9, tuple("t" * 1_000_000 for _ in range(5))), NOW)
    lines = event["context"]["titles"].split("\n")
    assert lines[0] == "- " + "t" * (MAX_TITLE_CHARS - 1) + "…"
    check_bounds(event, EVENT)  # not record.too_long


def test_every_default_template_renders_with_the_context_its_events_carry() -> None:
    """The seeded types' templates need only the built-ins and what Herald's own events
    (digest, login alert) or the demo's send: no ``template.missing_key`` in production."""
    from herald.seed import DEFAULT_EVENT_TYPES
    from herald.templates import render

    builtins = {"display_name": "Ann", "user_id": "ann", "event_id": "e", "actor_id": ""}
    contexts = {
        "digest.weekly": digest_event(UserDigest("ann", 2, ("a", "b")), NOW)["context"],
        "security.login_alert": {"device_id": "d", "user_agent": "ua", "ip": "1.2.3.4"},
        "comment.created": {"post_title": "p", "author_name": "Sam", "excerpt": "x"},
        "user.login": {"device_id": "d", "user_agent": "ua", "ip": "1.2.3.4"},
    }
    for code, body in DEFAULT_EVENT_TYPES.items():
        context = {**builtins, **contexts.get(code, {})}
        for channel, template in body["templates"].items():
            assert channel in body["channels"], code
            for part in ("title", "body"):
                assert render(template[part], context) or part == "title", (code, channel)
            if template.get("html"):
                render(template["html"], context, html=True)
