"""Digest windows (services.router.digests) as pure functions, and the ingest API's window
durations: no broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from herald.identity import notification_id
from schemas import CATALOGUE
from services.ingest.event_types import window_seconds
from services.router import digests, routing
from tests.samples import SAMPLES

USER = SAMPLES["herald.User"]
TYPE = {
    **SAMPLES["herald.EventType"],
    "channels": ["inapp", "email"],
    "templates": {
        **SAMPLES["herald.EventType"]["templates"],
        "digest": {
            "title": "{{ actors[0] }}{% if others %} and {{ others }} other"
            "{{ 's' if others > 1 else '' }}{% endif %} commented on {{ post_title }}",
            "body": "{% for e in events %}{{ e.actor_name }}: {{ e.excerpt }}\n{% endfor %}",
            "html": "<ul>{% for e in events %}<li>{{ e.excerpt }}</li>{% endfor %}</ul>",
        },
    },
}


def event(n: int, post: str = "p1", actor: str = "Alice", **context: str) -> dict[str, Any]:
    return {
        "event_id": f"e-{n}",
        "event_type": TYPE["code"],
        "actor_id": f"user-{actor.lower()}",
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        "context": {"post_id": post, "post_title": "Hello", "actor_name": actor, "excerpt": f"#{n}"}
        | context,
    }


def add(state: dict[str, Any], ev: dict[str, Any], at_ms: int, offset: int) -> str:
    return digests.add_event(
        state, ev, window_s=600, key_name="post_id", at_ms=at_ms, offset=offset
    )


def test_events_within_the_window_share_it_per_key_and_a_later_one_opens_another() -> None:
    state = digests.load(None)
    assert add(state, event(1), 1_000, 10) == "added"
    assert add(state, event(2, actor="Bob"), 2_000, 11) == "added"
    assert add(state, event(3, post="p2"), 3_000, 12) == "added"
    assert add(state, event(4), 601_000, 13) == "added"  # the first window ended at 601,000
    windows = [(w["key"], w["start"], w["end"], w["count"]) for w in state["w"]]
    assert windows == [
        ("p1", 1_000, 601_000, 2),
        ("p2", 3_000, 603_000, 1),
        ("p1", 601_000, 1_201_000, 1),
    ]
    assert state["o"] == [10, 11, 12, 13]


def test_a_window_past_its_end_takes_no_more_events() -> None:
    """The timer may be emitting it: a record stamped before its end but handled after it
    starts a window of its own."""
    state = digests.load(None)
    add(state, event(1), 1_000, 10)
    added = digests.add_event(
        state, event(2), window_s=600, key_name="post_id", offset=11, at_ms=600_000, now_ms=601_500
    )
    assert added == "added"
    assert [(w["start"], w["count"]) for w in state["w"]] == [(1_000, 1), (600_000, 1)]


def test_a_record_seen_again_and_an_event_written_twice_count_once() -> None:
    state = digests.load(None)
    assert add(state, event(1), 1_000, 10) == "added"
    before = json.dumps(state)
    assert add(state, event(1), 1_000, 10) == "repeat"  # the same record (its offset) again
    assert json.dumps(state) == before
    # The same event on another record (stage 1 expanded it again), even past the window's end.
    assert add(state, event(1), 900_000, 14) == "seen"
    assert len(state["w"]) == 1 and state["w"][0]["count"] == 1 and state["o"] == [10, 14]
    digests.prune(state, 12)
    assert state["o"] == [14]


def test_an_emitted_window_remembers_its_events_for_a_while() -> None:
    state = digests.load(None)
    add(state, event(1), 1_000, 10)
    digests.remove(state, state["w"][0], 602_000)
    assert state["w"] == []
    again: dict[str, Any] = {"window_s": 600, "key_name": "post_id", "offset": 11}
    assert digests.add_event(state, event(1), at_ms=603_000, now_ms=603_000, **again) == "seen"
    assert state["w"] == []
    later = {**again, "offset": 12}
    at = 602_000 + digests.RECENT_MS
    assert digests.add_event(state, event(1), at_ms=at, now_ms=at, **later) == "added"
    assert state["r"] == [] and state["w"][0]["start"] == at


def test_the_state_round_trips_and_empties_to_a_delete() -> None:
    state = digests.load(None)
    add(state, event(1), 1_000, 10)
    raw = digests.dump(state)
    assert raw is not None and digests.load(raw) == state
    digests.remove(state, state["w"][0], 2_000)
    digests.prune(state, 11)
    assert digests.dump(state) is not None  # the emitted ids, for a while
    state["r"] = []
    assert digests.dump(state) is None


def test_items_and_ids_are_bounded_but_the_count_is_not() -> None:
    state = digests.load(None)
    for n in range(digests.MAX_ITEMS + 5):
        add(state, event(n), 1_000 + n, n)
    (window,) = state["w"]
    assert window["count"] == digests.MAX_ITEMS + 5
    assert len(window["items"]) == digests.MAX_ITEMS


def test_a_window_renders_one_notification_with_ids_from_user_key_and_start() -> None:
    state = digests.load(None)
    for n, actor in enumerate(["Alice", "Bob", "Carol", "Bob", "Dan"]):
        add(state, event(n, actor=actor), 1_000 + n, n)
    (window,) = state["w"]
    recipient = digests.digest_recipient(USER["user_id"], window)
    again = digests.digest_recipient(USER["user_id"], json.loads(json.dumps(window)))
    assert recipient["event"]["event_id"] == again["event"]["event_id"]
    assert recipient["event"]["event_id"] == digests.digest_event_id(
        USER["user_id"], TYPE["code"], "p1", 1_000
    )
    other_start = digests.digest_event_id(USER["user_id"], TYPE["code"], "p1", 1_001)
    assert other_start != recipient["event"]["event_id"]
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    routed = routing.route(recipient, USER, None, digests.digest_type(TYPE), now)
    assert routed.notification is not None
    assert routed.notification["title"] == "Alice and 4 others commented on Hello"
    assert routed.notification["message"].splitlines() == [
        "Alice: #0",
        "Bob: #1",
        "Carol: #2",
        "Bob: #3",
        "Dan: #4",
    ]
    nid = notification_id(recipient["event"]["event_id"], USER["user_id"])
    assert routed.notification["notification_id"] == nid
    (email,) = [d for d in routed.deliveries if d["channel"] == "email"]
    assert email["subject"] == "Alice and 4 others commented on Hello"
    assert email["body_html"] == "<ul>" + "".join(f"<li>#{n}</li>" for n in range(5)) + "</ul>"
    assert routed.notification["metadata"]["digest_count"] == "5"
    routing.routed_outputs(routed, CATALOGUE)  # encodes


def test_a_type_without_a_digest_template_gets_the_generated_one() -> None:
    state = digests.load(None)
    add(state, event(1, actor="Alice"), 1_000, 1)
    add(state, event(2, actor="Bob"), 1_001, 2)
    plain = {**TYPE, "templates": {"inapp": {"title": "x", "body": "y", "html": None}}}
    recipient = digests.digest_recipient(USER["user_id"], state["w"][0])
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    routed = routing.route(recipient, USER, None, digests.digest_type(plain), now)
    assert routed.notification is not None
    assert routed.notification["title"] == "New comment (2)"
    assert routed.notification["message"] == "2 new New comment notifications from Alice, Bob."


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("90s", 90), ("10m", 600), ("1h", 3600), ("1d", 86_400), ("45", 45), (600, 600)],
)
def test_window_durations(given: str | int, seconds: int) -> None:
    assert window_seconds(given) == seconds


@pytest.mark.parametrize("given", ["", "10x", "m", "-5", "8d", 0, True, "1.5h"])
def test_bad_window_durations(given: Any) -> None:
    with pytest.raises(ValueError):
        window_seconds(given)
