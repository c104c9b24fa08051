"""The DLQ-flood guard: pure limits, and BatchLoop holding a flood of dead letters."""

from __future__ import annotations

from typing import Any, cast

from confluent_kafka import Message

from herald.dlqlimit import GUARD_TRIPPED, DlqLimit, DlqLimitSettings
from herald.errors import PermanentError
from herald.settings import KafkaSettings
from herald.streaming import BatchLoop, Outgoing, failure_record
from tests.unit.test_sender import FakeConsumer


def test_consecutive_limit_trips_on_the_record_past_it() -> None:
    guard = DlqLimit(max_consecutive=3, max_invalid_ratio=0)
    assert guard.check([True, True, True]) == (None, None)
    index, reason = guard.check([True, False])
    assert index == 0 and reason is not None and "4 records in a row" in reason
    # Nothing from the tripping record on was counted: it trips again when it comes back.
    assert guard.check([True]) == (0, reason)


def test_a_valid_record_resets_the_run() -> None:
    guard = DlqLimit(max_consecutive=3, max_invalid_ratio=0)
    assert guard.check([True, True, True, False, True, True, True, False]) == (None, None)
    assert guard.consecutive == 0


def test_ratio_needs_min_seen_and_counts_a_sliding_window() -> None:
    guard = DlqLimit(max_consecutive=0, max_invalid_ratio=0.5, window=10, min_seen=6)
    # 3 of 4, then 4 of 5: a high share, but fewer than min_seen records seen.
    assert guard.check([True, False, True, True, True]) == (None, None)
    index, reason = guard.check([True])  # 5 of 6 > 50%
    assert index == 0 and reason is not None and "5 of the last 6" in reason
    # Good records push the bad ones out of the window.
    guard = DlqLimit(max_consecutive=0, max_invalid_ratio=0.5, window=4, min_seen=4)
    assert guard.check([True, True, False, False]) == (None, None)  # 2 of 4: not more than half
    assert guard.check([False, False, True, True]) == (None, None)  # the window slid
    assert guard.check([True])[0] == 0  # 3 of the last 4


def test_disabled_rules_never_trip() -> None:
    guard = DlqLimit(max_consecutive=0, max_invalid_ratio=0)
    assert guard.check([True] * 10_000) == (None, None)


def test_settings_defaults(monkeypatch: Any) -> None:
    monkeypatch.setenv("HERALD_DLQ_GUARD_MAX_CONSECUTIVE", "7")
    settings = DlqLimitSettings()
    limit = settings.limit()
    assert (limit.max_consecutive, limit.max_invalid_ratio) == (7, 0.9)
    assert (limit.window, limit.min_seen, settings.backoff_seconds) == (1000, 100, 30.0)


def message(partition: int, offset: int) -> Message:
    return Message(topic="in", partition=partition, offset=offset, key=b"k", value=b"v")


def test_batch_loop_holds_the_flood_and_commits_the_rest() -> None:
    """Partition 0 turns into dead letters, partition 1 is fine: past the limit, partition 0's
    dead letters are not produced, it is rewound to the first held record and paused, and the
    commit stops there; partition 1 is committed as usual."""
    bad = [message(0, offset) for offset in range(10, 16)]
    good = [message(1, offset) for offset in range(20, 23)]
    batch = [*bad[:2], *good, *bad[2:]]

    def handle(messages: list[Message]) -> list[Outgoing]:
        out = []
        for m in messages:
            if m.partition() == 0:
                error = PermanentError("template broken", error_class="template.error")
                dead = failure_record(
                    m, error, retry_topics=(), retry_delays_ms=(), dlq_topic="in.dlq"
                )
                out.append(dead)
            else:
                out.append(Outgoing("status", None, b"ok"))
        return out

    loop = BatchLoop(
        service="guard-test",
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),  # never contacted
        topics=["in"],
        handler=handle,
        dlq_guard=DlqLimitSettings(max_consecutive=3, max_invalid_ratio=0, backoff_seconds=60),
    )
    consumer = FakeConsumer([batch])
    loop.consumer = cast(Any, consumer)
    produced: list[Outgoing] = []

    def publish(outgoing: list[Outgoing]) -> bool:
        produced.extend(outgoing)
        return True

    loop.publish = publish  # type: ignore[method-assign]
    loop.run_once()

    # 10, 11, then the good ones reset the run; 12, 13, 14 pass; the fourth in a row (15)
    # trips the guard and is held.
    dead = [o for o in produced if o.dead_letter]
    assert [o.origin.offset() for o in dead if o.origin is not None] == [10, 11, 12, 13, 14]
    assert len([o for o in produced if o.topic == "status"]) == 3
    assert ("pause", [("in", 0, 15)]) in consumer.calls
    assert ("seek", [("in", 0, 15)]) in consumer.calls
    assert consumer.calls[-1] == ("commit", [("in", 0, 15), ("in", 1, 23)])
    assert GUARD_TRIPPED.labels("guard-test")._value.get() == 1
