"""Dead-letter handling decisions: filters, times, replay headers and limits, purge plans."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from herald import dlq
from herald.producer import Refused
from herald.streaming import (
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_ORIGINAL_TOPIC,
    H_REPLAY_COUNT,
    Outgoing,
)
from schemas import CATALOGUE

SMS = CATALOGUE.deliveries_sms


def letter(
    offset: int, *, error: str = "sms.5xx", replays: int = 0, **record: str
) -> dlq.DeadLetter:
    headers = {
        H_ERROR_CLASS: error,
        H_ORIGINAL_TOPIC: SMS.name,
        H_ATTEMPT: "4",
        H_REPLAY_COUNT: str(replays),
        "x-first-failed-at": "1700000000.000",
    }
    return dlq.DeadLetter(
        SMS.dlq_name, 0, offset, 1_700_000_000 + offset, b"user-1", b"v", headers, dict(record)
    )


def test_parse_time_accepts_ages_and_iso() -> None:
    assert dlq.parse_time("2h", now=10_000) == 10_000 - 7200
    assert dlq.parse_time("2026-11-25T10:00:00+00:00") == 1795600800
    with pytest.raises(dlq.DlqError, match="ISO-8601"):
        dlq.parse_time("yesterday")


def test_filter_combines_criteria_and_limit() -> None:
    letters = [
        letter(1, event_type="a", delivery_id="d1"),
        letter(2, error="sms.invalid", event_type="a", delivery_id="d2"),
        letter(3, event_type="b", delivery_id="d3"),
        letter(4, event_type="a", delivery_id="d4"),
    ]
    chosen = dlq.select(letters, dlq.Filter(error_classes={"sms.5xx"}, event_types={"a"}))
    assert [x.offset for x in chosen] == [1, 4]
    assert [x.offset for x in dlq.select(letters, dlq.Filter(limit=2))] == [1, 2]
    assert [x.offset for x in dlq.select(letters, dlq.Filter(delivery_ids={"d3"}))] == [3]
    since = dlq.Filter(since=1_700_000_003)
    assert [x.offset for x in dlq.select(letters, since)] == [3, 4]


def test_replay_goes_to_the_first_retry_tier_with_headers_kept() -> None:
    record = dlq.replay_record(CATALOGUE, letter(7, replays=1), max_replays=3, now=100.0)
    headers = dict(record.headers)
    assert record.topic == SMS.retry_topic_names[0]
    assert headers[H_REPLAY_COUNT] == "2"
    assert headers[H_ATTEMPT] == "1"
    assert headers["x-first-failed-at"] == "1700000000.000"
    assert headers[H_ERROR_CLASS] == "sms.5xx"
    assert record.key == b"user-1" and record.value == b"v"


def test_events_dlq_replays_to_the_events_topic() -> None:
    event_letter = dlq.DeadLetter(CATALOGUE.events.dlq_name, 0, 0, 0.0, None, b"x", {})
    assert dlq.replay_target(CATALOGUE, event_letter) == CATALOGUE.events.name


def test_replay_refuses_past_the_limit() -> None:
    report = dlq.replay(CATALOGUE, [letter(1, replays=3), letter(2)], None, max_replays=3)
    assert report.matched == 2 and report.replayed == 1
    assert "replayed 3 times" in report.refused[0]


def test_purge_plan_deletes_only_a_matching_prefix() -> None:
    letters = [letter(0), letter(1), letter(2, error="other"), letter(3)]
    chosen = [x for x in letters if x.error_class == "sms.5xx"]
    plan, kept = dlq.purge_plan(letters, chosen)
    assert plan == {(SMS.dlq_name, 0): 2}
    assert kept == [letters[3].where]


def test_unknown_topic_names_the_known_ones() -> None:
    with pytest.raises(dlq.DlqError, match=r"not a dead-letter topic.*herald\.events\.v1\.dlq"):
        dlq.dlq_topics(CATALOGUE, ["herald.nope.v1"])
    assert dlq.dlq_topics(CATALOGUE, [SMS.name]) == [SMS.dlq_name]


def test_replay_counts_only_what_kafka_acknowledged() -> None:
    """A copy Kafka refused is reported with its reason and is not among the acknowledged
    letters (the only ones ``replay --purge`` deletes)."""
    letters = [letter(0), letter(1), letter(2)]
    batches: list[int] = []

    def deliver(records: Sequence[Outgoing]) -> list[Refused]:
        batches.append(len(records))
        if len(batches) > 1:
            return []
        return [Refused(records[1], "Broker: Message size too large", "record.too_large")]

    report = dlq.replay(CATALOGUE, letters, deliver, chunk=2)
    assert batches == [2, 1]
    assert report.replayed == 2 and report.matched == 3
    assert [x.offset for x in report.acknowledged] == [0, 2]
    (failed,) = report.failed
    assert letters[1].where in failed and "too large" in failed
    plan, kept = dlq.purge_plan(letters, report.acknowledged)
    assert plan == {(SMS.dlq_name, 0): 1}  # offset 1 was not acknowledged: it and 2 stay
    assert kept == [letters[2].where]


def test_garbled_headers_never_break_a_replay() -> None:
    garbled = dlq.DeadLetter(
        SMS.dlq_name, 0, 5, 0.0, None, b"v", {},
        raw_headers=[(H_ORIGINAL_TOPIC, SMS.name.encode()), (H_REPLAY_COUNT, b"lots"),
                     ("trace", b"\xff")],
    )  # fmt: skip
    assert garbled.replay_count == 0
    record = dlq.replay_record(CATALOGUE, garbled, max_replays=3, now=100.0)
    assert dict(record.headers)[H_REPLAY_COUNT] == "1"
    assert dict(record.headers)["trace"] == b"\xff"  # foreign headers kept as bytes
    stray = dlq.DeadLetter(SMS.dlq_name, 0, 6, 0.0, None, b"v", {H_ORIGINAL_TOPIC: "elsewhere"})
    report = dlq.replay(CATALOGUE, [stray], None)
    assert report.replayed == 0 and "not a catalogue topic" in report.refused[0]
