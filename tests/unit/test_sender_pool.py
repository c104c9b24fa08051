"""Concurrent sends (herald.sender.pool): the token bucket with a fake clock, and the batch
handler keeping many sends in flight without giving up the journal's once-only rules."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from herald.errors import RetryableError
from herald.sender import Breaker, SenderHandler, SendPool, TokenBucket
from herald.sender.journal import Claim
from herald.sender.pool import Outcome
from herald.streaming import Handled, Outgoing
from tests.unit.test_sender import (
    CATALOGUE_T,
    NOW,
    ROUTES,
    FakeChannel,
    Journal,
    message,
    request,
    statuses,
)


class FakeTime:
    """A clock that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_spaces_acquisitions_at_the_rate_after_a_burst() -> None:
    time = FakeTime()
    bucket = TokenBucket(10, burst=2, clock=time.clock, sleep=time.sleep)
    start = time.now
    waits = [bucket.acquire() for _ in range(12)]
    assert waits[:2] == [0, 0]  # the burst
    assert all(w == pytest.approx(0.1) for w in waits[2:])
    # 12 sends at 10/s with a burst of 2: the last goes out 1 s after the first.
    assert time.now - start == pytest.approx(1.0)


def test_token_bucket_reservations_queue_concurrent_callers_in_order() -> None:
    time = FakeTime()
    bucket = TokenBucket(100, burst=1, clock=time.clock, sleep=time.sleep)
    # Five callers reserve at the same instant (before anyone sleeps): evenly spaced waits.
    assert [bucket.reserve() for _ in range(5)] == pytest.approx([0, 0.01, 0.02, 0.03, 0.04])
    time.now += 1.0  # idle for a second: refilled to the burst, never beyond
    assert [bucket.reserve() for _ in range(2)] == pytest.approx([0, 0.01])


def test_token_bucket_rate_zero_is_unlimited() -> None:
    time = FakeTime()
    bucket = TokenBucket(0, clock=time.clock, sleep=time.sleep)
    assert sum(bucket.acquire() for _ in range(1000)) == 0 and time.slept == []


class Overlapping(FakeChannel):
    """A provider that answers only once ``together`` requests are waiting at once: a
    handler sending one at a time would time out on the barrier."""

    def __init__(self, together: int, outcomes: dict[str, Exception] | None = None) -> None:
        super().__init__(outcomes)
        self.barrier = threading.Barrier(together, timeout=10)
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0

    def __call__(self, request: Mapping[str, Any]) -> str:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            self.barrier.wait()
            with self.lock:
                return super().__call__(request)
        finally:
            with self.lock:
                self.active -= 1


def concurrent_handler(
    send: FakeChannel, journal: Journal, concurrency: int, **kwargs: Any
) -> SenderHandler:
    return SenderHandler(
        service="test_sender",
        routes=ROUTES,
        catalogue=CATALOGUE_T,
        pool=SendPool(send, channel="email", concurrency=concurrency),
        journal=journal,
        clock=lambda: NOW,
        **kwargs,
    )


def send_warm_batch(
    send: FakeChannel, journal: Journal, count: int
) -> tuple[list[dict[str, Any]], list[Outgoing]]:
    """``count`` requests through a handler of 8 in flight, already warmed up; every one of
    them was sent."""
    sender = concurrent_handler(send, journal, 8)
    sender._window = 8
    requests = [request() for _ in range(count)]
    try:
        out = sender([message(r, offset=i) for i, r in enumerate(requests)])
    finally:
        sender.close()
    assert isinstance(out, list)
    assert sorted(send.sent) == sorted(r["delivery_id"] for r in requests)
    return requests, out


def test_a_batch_is_sent_concurrently_claimed_and_confirmed_in_groups() -> None:
    send, journal = Overlapping(8), Journal()
    requests, out = send_warm_batch(send, journal, 32)
    assert send.most == 8
    assert [e["status"] for e in statuses(out)] == ["sent"] * 32
    # Status events come in the batch's order, whatever order the provider answered in.
    assert [e["delivery_id"] for e in statuses(out)] == [r["delivery_id"] for r in requests]
    # Every delivery claimed before it was sent and confirmed after, in groups.
    for r in requests:
        calls = [c[0] for c in journal.calls if c[1] == r["delivery_id"]]
        assert calls == ["claim", "confirm"]
    claims = [size for kind, size in journal.groups if kind == "claim"]
    assert sum(claims) == 32 and claims[0] == 8
    assert len([kind for kind, _ in journal.groups if kind == "confirm"]) < 32


class SlowConfirms(Journal):
    """A journal whose confirmations take 20 ms (a slow database), and which records the most
    claims that were ever unconfirmed at once (what a SIGKILL at that moment would leave)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.open: set[str] = set()
        self.most_open = 0

    def claim_many(self, claims: Sequence[Claim], channel: str) -> set[str]:
        won = super().claim_many(claims, channel)
        with self.lock:
            self.open |= won
            self.most_open = max(self.most_open, len(self.open))
        return won

    def confirm_many(self, confirmed: Sequence[tuple[str, str]]) -> None:
        time.sleep(0.02)
        super().confirm_many(confirmed)
        with self.lock:
            self.open -= {delivery_id for delivery_id, _ in confirmed}


def test_claims_unconfirmed_never_exceed_the_concurrency_even_with_slow_confirms() -> None:
    journal = SlowConfirms()
    _, out = send_warm_batch(FakeChannel(), journal, 200)
    assert len(statuses(out)) == 200
    # Sends in flight plus sends whose confirmation is being written: at most 8 at any moment,
    # so a sender killed at any point leaves at most 8 uncertain (email parks them).
    assert 1 < journal.most_open <= 8
    assert not journal.open


def test_copies_of_one_delivery_in_a_batch_are_sent_once() -> None:
    send, journal = FakeChannel(), Journal()
    sender = concurrent_handler(send, journal, 8)
    one, other = request(), request()
    batch = [message(one), message(other, offset=1), message(one, offset=2)]
    try:
        out = sender(batch)
    finally:
        sender.close()
    assert sorted(send.sent) == sorted([one["delivery_id"], other["delivery_id"]])
    assert isinstance(out, list) and len(statuses(out)) == 2


def test_the_breaker_stops_a_concurrent_batch_and_holds_the_untried_rest() -> None:
    refused = RetryableError("connection refused", error_class="sms.connection")
    send, journal = FakeChannel({"down": refused}), Journal()
    sender = concurrent_handler(
        send, journal, 8, breaker=Breaker(failures=3, backoff=5, backoff_max=60)
    )
    batch = [message(request(destination="down"), offset=i) for i in range(100)]
    try:
        result = sender(batch)
    finally:
        sender.close()
    assert isinstance(result, Handled)
    tried = len(batch) - len(result.held)
    # At most one window (8) beyond the breaker's threshold was tried; the rest is held,
    # a suffix of the batch, and none of it was claimed.
    assert tried == 3  # a cold sender sends one at a time until it has a success
    assert result.held == batch[tried:]
    assert [e["status"] for e in statuses(result.outgoing)] == ["retrying"] * tried
    assert journal.entries == {}  # every claim of a failed send was released


def test_the_window_grows_with_successes_and_halves_with_each_transient_failure() -> None:
    refused = RetryableError("connection refused", error_class="sms.connection")
    sender = concurrent_handler(
        FakeChannel({"down": refused}), Journal(), 64, breaker=Breaker(failures=0)
    )
    try:
        assert sender.window() == 1  # a cold sender probes first
        sender([message(request(), offset=i) for i in range(200)])
        assert sender.window() == 64
        sender([message(request(destination="down"), offset=i) for i in range(2)])
        assert sender.window() <= 32
        sender([message(request(destination="down"), offset=i) for i in range(10)])
        assert sender.window() == 1
    finally:
        sender.close()


def test_the_pool_waits_for_the_rate_limit_before_each_send() -> None:
    time = FakeTime()
    send = FakeChannel()
    pool = SendPool(
        send,
        channel="sms",
        concurrency=1,
        limit=TokenBucket(5, burst=1, clock=time.clock, sleep=time.sleep),
    )
    for n in range(6):
        pool.submit(n, request())
        (outcome,) = pool.completed()
        assert outcome.tag == n and outcome.result and outcome.error is None
    assert len(send.sent) == 6 and time.slept == pytest.approx([0.2] * 5)


def test_the_pool_hands_back_every_outcome_with_its_tag_and_stops_its_threads() -> None:

    class Flaky:
        def __call__(self, request: Mapping[str, Any]) -> str:
            if request["destination"] == "down":
                raise RetryableError("no answer", error_class="sms.timeout")
            return f"id-{request['destination']}"

    pool = SendPool(Flaky(), channel="sms", concurrency=8)
    for n in range(50):
        pool.submit(n, request(destination="down" if n % 7 == 0 else str(n)))
    outcomes: list[Outcome] = []
    while len(outcomes) < 50:
        outcomes.extend(pool.completed(at_least=10, linger=0.05))
    assert sorted(o.tag for o in outcomes) == list(range(50))
    for tag, result, error in outcomes:
        if tag % 7 == 0:
            assert result is None and isinstance(error, RetryableError)
        else:
            assert result == f"id-{tag}" and error is None
    assert 1 <= len(pool._threads) <= 8
    pool.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("send-sms-")]
