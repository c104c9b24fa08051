"""The sender core's decisions (herald.sender) and the retry-tier scheduling helpers of
herald.streaming, with a fake ``send`` and fake Kafka messages (no broker)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any, cast

import pytest
from confluent_kafka import Message

from herald.errors import EndpointRetryableError, PermanentError, RetryableError, SkipDelivery
from herald.sender import (
    OUTCOME_UNKNOWN,
    Breaker,
    Claim,
    JournalEntry,
    RecentlySent,
    SenderHandler,
    SenderRoutes,
    attempt_of,
    decode_request,
)
from herald.serde import decode, encode
from herald.settings import KafkaSettings
from herald.streaming import (
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_NOT_BEFORE,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_TOPIC,
    H_REPLAY_COUNT,
    BatchLoop,
    Deferral,
    Handled,
    Outgoing,
    commit_offsets,
    header_not_before,
    headers_dict,
    split_due,
)
from schemas import CATALOGUE
from tests.samples import SAMPLES

NOW = 1_700_000_000.0
CATALOGUE_T = CATALOGUE.with_prefix("tunit.")
ROUTES = SenderRoutes.for_channel(CATALOGUE_T, "email")


class FakeMessage:
    """The parts of confluent_kafka.Message the sender reads."""

    def __init__(
        self,
        value: bytes | None,
        *,
        topic: str = ROUTES.source_topic,
        partition: int = 0,
        offset: int = 0,
        key: bytes | None = b"user-42",
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self._value, self._topic, self._partition = value, topic, partition
        self._offset, self._key, self._headers = offset, key, headers

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def error(self) -> None:
        return None


def request(**changes: Any) -> dict[str, Any]:
    delivery_id = str(uuid.uuid4())
    return {**SAMPLES["herald.DeliveryRequest"], "delivery_id": delivery_id, **changes}


def message(record: Mapping[str, Any], **kwargs: Any) -> Message:
    return cast(Message, FakeMessage(encode("herald.DeliveryRequest", record), **kwargs))


class FakeChannel:
    """A send function that answers from a script, keyed by destination."""

    def __init__(self, outcomes: dict[str, Exception] | None = None) -> None:
        self.outcomes = outcomes or {}
        self.sent: list[str] = []

    def __call__(self, request: Mapping[str, Any]) -> str:
        outcome = self.outcomes.get(request["destination"])
        if outcome is not None:
            raise outcome
        self.sent.append(request["delivery_id"])
        return f"provider-{request['delivery_id']}"


class Journal:
    """An in-memory SendJournal that records every call."""

    def __init__(self, entries: dict[str, JournalEntry] | None = None) -> None:
        self.entries = dict(entries or {})
        self.calls: list[tuple[str, Any]] = []
        #: The size of each claim_many / confirm_many group.
        self.groups: list[tuple[str, int]] = []

    def states(self, delivery_ids: Collection[str]) -> dict[str, JournalEntry]:
        self.calls.append(("states", set(delivery_ids)))
        return {i: e for i, e in self.entries.items() if i in delivery_ids}

    def claim(
        self, delivery_id: str, channel: str, attempt: int, seen: JournalEntry | None = None
    ) -> bool:
        self.calls.append(("claim", delivery_id))
        if self.entries.get(delivery_id) not in (None, seen):
            return False  # claimed by someone else since it was read
        self.entries[delivery_id] = JournalEntry("sending")
        return True

    def confirm(self, delivery_id: str, provider_message_id: str) -> None:
        self.calls.append(("confirm", delivery_id))
        self.entries[delivery_id] = JournalEntry("sent", provider_message_id)

    def release(self, delivery_id: str) -> None:
        self.calls.append(("release", delivery_id))
        if self.entries.get(delivery_id) == JournalEntry("sending"):
            del self.entries[delivery_id]

    def claim_many(self, claims: Sequence[Claim], channel: str) -> set[str]:
        self.groups.append(("claim", len(claims)))
        return {
            c.delivery_id for c in claims if self.claim(c.delivery_id, channel, c.attempt, c.seen)
        }

    def confirm_many(self, confirmed: Sequence[tuple[str, str]]) -> None:
        self.groups.append(("confirm", len(confirmed)))
        for delivery_id, provider_message_id in confirmed:
            self.confirm(delivery_id, provider_message_id)

    def release_many(self, delivery_ids: Sequence[str]) -> None:
        for delivery_id in delivery_ids:
            self.release(delivery_id)


class Sender:
    """A SenderHandler whose call asserts that it held nothing back (``handle`` does not)."""

    def __init__(self, handler: SenderHandler) -> None:
        self.handle = handler

    def __call__(self, messages: list[Message]) -> list[Outgoing]:
        result = self.handle(messages)
        assert isinstance(result, list), f"the handler held records back: {result}"
        return result


def handler(
    send: FakeChannel,
    journal: Journal | None = None,
    clock: list[float] | None = None,
    **kwargs: Any,
) -> Sender:
    now = clock if clock is not None else [NOW]
    return Sender(
        SenderHandler(
            service="test_sender",
            routes=ROUTES,
            catalogue=CATALOGUE_T,
            send=send,
            journal=journal if journal is not None else Journal(),
            clock=lambda: now[0],
            **kwargs,
        )
    )


def statuses(outgoing: list[Any]) -> list[dict[str, Any]]:
    return [
        decode(record.value)
        for record in outgoing
        if record.topic == CATALOGUE_T.delivery_status.name
    ]


def test_routes_come_from_the_prefixed_catalogue() -> None:
    spec = CATALOGUE_T.deliveries_email
    assert ROUTES.source_topic == spec.name and spec.name.startswith("tunit.")
    assert ROUTES.retry_topics == spec.retry_topic_names
    assert ROUTES.retry_delays_ms == tuple(t.delay_ms for t in spec.retry_topics())
    assert ROUTES.dlq_topic == spec.dlq_name
    assert ROUTES.topics == [spec.name, *spec.retry_topic_names]
    assert SenderRoutes.for_channel(CATALOGUE_T, "sms").source_topic == (
        CATALOGUE_T.deliveries_sms.name
    )


def test_success_reports_sent_with_provider_id_and_attempt() -> None:
    first, second = request(), request()
    send = FakeChannel()
    out = handler(send)([message(first), message(second, offset=1, headers=[(H_ATTEMPT, b"3")])])
    assert send.sent == [first["delivery_id"], second["delivery_id"]]
    assert all(record.topic == CATALOGUE_T.delivery_status.name for record in out)
    assert [record.key for record in out] == [first["notification_id"]] * 2
    events = statuses(out)
    assert [(e["status"], e["attempt"]) for e in events] == [("sent", 1), ("sent", 3)]
    assert events[0]["provider_message_id"] == f"provider-{first['delivery_id']}"
    assert events[0]["delivery_id"] == first["delivery_id"] and events[0]["channel"] == "email"


def test_retryable_failure_goes_to_the_next_tier_with_a_retrying_status() -> None:
    failing = request(destination="flaky@example.test")
    send = FakeChannel({"flaky@example.test": RetryableError("451 later", error_class="smtp.4xx")})
    out = handler(send)([message(failing, offset=7)])
    retry, status = out
    assert retry.topic == ROUTES.retry_topics[0]
    assert retry.value == encode("herald.DeliveryRequest", failing)
    headers = dict(retry.headers)
    assert headers[H_ATTEMPT] == "2"
    assert float(cast(str, headers[H_NOT_BEFORE])) == pytest.approx(
        NOW + ROUTES.retry_delays_ms[0] / 1000
    )
    assert headers[H_ERROR_CLASS] == "smtp.4xx"
    assert headers[H_ORIGINAL_TOPIC] == ROUTES.source_topic and headers[H_ORIGINAL_OFFSET] == "7"
    (event,) = statuses([status])
    assert (event["status"], event["attempt"], event["error_class"]) == (
        "retrying",
        1,
        "smtp.4xx",
    )


def test_a_retry_tier_record_moves_to_the_following_tier() -> None:
    failing = request(destination="flaky@example.test")
    send = FakeChannel({"flaky@example.test": RetryableError("451 later", error_class="smtp.4xx")})
    record = message(failing, topic=ROUTES.retry_topics[0], headers=[(H_ATTEMPT, b"2")])
    retry, status = handler(send)([record])
    assert retry.topic == ROUTES.retry_topics[1]
    assert dict(retry.headers)[H_ATTEMPT] == "3"
    assert statuses([status])[0]["attempt"] == 2


def test_exhausted_attempts_go_to_the_dlq_as_dead() -> None:
    failing = request(destination="down@example.test")
    send = FakeChannel({"down@example.test": RetryableError("refused", error_class="smtp.x")})
    last = len(ROUTES.retry_topics) + 1
    record = message(
        failing, topic=ROUTES.retry_topics[-1], headers=[(H_ATTEMPT, str(last).encode())]
    )
    dlq, status = handler(send)([record])
    assert dlq.topic == ROUTES.dlq_topic
    assert H_NOT_BEFORE not in dict(dlq.headers)
    assert dict(dlq.headers)[H_ATTEMPT] == str(last)  # attempts made, not a next one
    (event,) = statuses([status])
    assert (event["status"], event["attempt"]) == ("dead", last)


def test_permanent_failure_goes_to_the_dlq_as_failed_and_neighbours_are_sent() -> None:
    before, bad, after = request(), request(destination="bad"), request()
    send = FakeChannel(
        {"bad": PermanentError("not a valid email address", error_class="email.invalid_address")}
    )
    out = handler(send)([message(before), message(bad, offset=1), message(after, offset=2)])
    assert send.sent == [before["delivery_id"], after["delivery_id"]]
    (dlq,) = [record for record in out if record.topic == ROUTES.dlq_topic]
    headers = dict(dlq.headers)
    assert headers[H_ERROR_CLASS] == "email.invalid_address"
    assert headers[H_ERROR_MESSAGE] == "not a valid email address"
    events = {e["delivery_id"]: e for e in statuses(out)}
    assert events[bad["delivery_id"]]["status"] == "failed"
    assert events[bad["delivery_id"]]["error_message"] == "not a valid email address"
    assert {events[r["delivery_id"]]["status"] for r in (before, after)} == {"sent"}


def test_undecodable_record_goes_to_the_dlq_without_stopping() -> None:
    good = request()
    garbage = cast(Message, FakeMessage(b"not avro at all", offset=0))
    send = FakeChannel()
    out = handler(send)([garbage, message(good, offset=1)])
    assert send.sent == [good["delivery_id"]]
    dlq = out[0]
    assert dlq.topic == ROUTES.dlq_topic and dlq.value == b"not avro at all"
    assert dict(dlq.headers)[H_ERROR_CLASS] == "decode.NotAvroError"
    assert [e["status"] for e in statuses(out)] == ["sent"]  # nothing to report for garbage


def test_one_lookup_per_batch_and_already_sent_deliveries_are_skipped() -> None:
    done, fresh = request(), request()
    journal = Journal({done["delivery_id"]: JournalEntry("recorded")})
    send = FakeChannel()
    out = handler(send, journal)([message(done), message(fresh, offset=1)])
    assert [call for call in journal.calls if call[0] == "states"] == [
        ("states", {done["delivery_id"], fresh["delivery_id"]})
    ]
    assert send.sent == [fresh["delivery_id"]]
    assert [e["delivery_id"] for e in statuses(out)] == [fresh["delivery_id"]]


def test_a_delivery_is_sent_once_even_when_it_comes_again() -> None:
    same = request()
    send = FakeChannel()
    sender = handler(send)
    sender([message(same), message(same, offset=1)])
    out = sender([message(same, offset=2)])  # the database has not heard of the send yet
    assert send.sent == [same["delivery_id"]]
    assert out == []


def test_unexpected_exceptions_are_retried_not_fatal() -> None:
    class Broken(FakeChannel):
        def __call__(self, request: Mapping[str, Any]) -> str:
            raise KeyError("bug")

    retry, status = handler(Broken())([message(request())])
    assert retry.topic == ROUTES.retry_topics[0]
    assert statuses([status])[0]["error_class"] == "unexpected"


def down(count: int) -> tuple[FakeChannel, list[dict[str, Any]]]:
    """A provider refusing every request, and ``count`` requests for it."""
    refused = RetryableError("connection refused", error_class="sms.connection")
    return FakeChannel({"down": refused}), [request(destination="down") for _ in range(count)]


def test_the_breaker_holds_the_rest_of_the_batch_after_consecutive_failures() -> None:
    send, requests = down(10)
    sender = handler(send, breaker=Breaker(failures=3, backoff=5, backoff_max=60))
    batch = [message(r, offset=i) for i, r in enumerate(requests)]
    result = sender.handle(batch)
    assert isinstance(result, Handled)
    assert result.held == batch[3:]  # three tried, seven never tried
    assert result.hold_until == NOW + 5
    assert [r.topic for r in result.outgoing].count(ROUTES.retry_topics[0]) == 3
    assert [e["status"] for e in statuses(result.outgoing)] == ["retrying"] * 3


def test_the_breaker_backs_off_doubling_then_closes_on_a_success() -> None:
    clock = [NOW]
    send, requests = down(4)
    breaker = Breaker(failures=2, backoff=5, backoff_max=12)
    sender = handler(send, clock=clock, breaker=breaker)
    first = sender.handle([message(r, offset=i) for i, r in enumerate(requests)])
    assert isinstance(first, Handled) and first.hold_until == NOW + 5
    clock[0] = NOW + 1  # still open: nothing is tried
    still = sender.handle([message(request(destination="down"))])
    assert isinstance(still, Handled) and still.outgoing == [] and len(still.held) == 1
    clock[0] = NOW + 5  # the probe fails: open again for twice as long
    probe = sender.handle([message(request(destination="down")), message(request(), offset=1)])
    assert isinstance(probe, Handled) and probe.hold_until == NOW + 5 + 10
    clock[0] = NOW + 15  # fails again: the back-off stops at its ceiling
    probe = sender.handle([message(request(destination="down")), message(request(), offset=1)])
    assert isinstance(probe, Handled) and probe.hold_until == NOW + 15 + 12
    clock[0] = NOW + 27  # the provider is back: closed, everything flows
    ok = [request(), request()]
    sender([message(r, offset=i) for i, r in enumerate(ok)])
    assert send.sent == [r["delivery_id"] for r in ok]
    assert breaker.consecutive == 0 and not breaker.is_open(clock[0])


def test_permanent_failures_do_not_open_the_breaker() -> None:
    bad = PermanentError("nope", error_class="email.invalid_address")
    sender = handler(FakeChannel({"bad": bad}), breaker=Breaker(failures=2))
    out = sender([message(request(destination="bad"), offset=i) for i in range(5)])
    assert len(statuses(out)) == 5


def test_a_disabled_breaker_never_holds() -> None:
    send, requests = down(50)
    out = handler(send, breaker=Breaker(failures=0))([message(r) for r in requests])
    assert len(statuses(out)) == 50


def test_endpoint_failures_neither_open_the_breaker_nor_shrink_the_window() -> None:
    broken = EndpointRetryableError("HTTP 503", error_class="webhook.5xx")
    inner = SenderHandler(
        service="test_sender",
        routes=ROUTES,
        catalogue=CATALOGUE_T,
        send=FakeChannel({"broken": broken}),
        journal=Journal(),
        breaker=Breaker(failures=2),
        clock=lambda: NOW,
    )
    inner._window = 4  # a RetryableError would halve it
    out = Sender(inner)([message(request(destination="broken"), offset=i) for i in range(5)])
    assert [e["status"] for e in statuses(out)] == ["retrying"] * 5  # none held back
    assert inner._window == 4 and inner.breaker.consecutive == 0


def test_a_skipped_delivery_is_reported_released_and_not_parked() -> None:
    journal = Journal()
    gone = SkipDelivery("user u has no webhook endpoint", error_class="endpoint.missing")
    send = FakeChannel({"nowhere": gone})
    skipped, sent = request(destination="nowhere"), request()
    out = handler(send, journal)([message(skipped), message(sent, offset=1)])
    assert {r.topic for r in out} == {CATALOGUE_T.delivery_status.name}  # no DLQ, no tier
    events = {e["delivery_id"]: e for e in statuses(out)}
    assert events[skipped["delivery_id"]]["status"] == "skipped"
    assert events[skipped["delivery_id"]]["error_class"] == "endpoint.missing"
    assert events[sent["delivery_id"]]["status"] == "sent"
    assert skipped["delivery_id"] not in journal.entries  # the claim was released


def test_prepare_sees_the_whole_batch_once_before_any_send() -> None:
    seen: list[list[str]] = []
    send = FakeChannel()
    batch = [request(), request()]
    sender = handler(send, prepare=lambda rs: seen.append([r["delivery_id"] for r in rs]))
    sender([message(r, offset=i) for i, r in enumerate(batch)])
    assert seen == [[r["delivery_id"] for r in batch]]
    assert send.sent == seen[0]


def test_a_delivery_is_claimed_before_sending_and_confirmed_after() -> None:
    journal = Journal()
    one = request()
    handler(FakeChannel(), journal)([message(one)])
    assert journal.calls == [
        ("states", {one["delivery_id"]}),
        ("claim", one["delivery_id"]),
        ("confirm", one["delivery_id"]),
    ]


def test_a_send_that_failed_with_a_known_outcome_releases_its_claim() -> None:
    journal = Journal()
    failing = request(destination="flaky")
    handler(FakeChannel({"flaky": RetryableError("later")}), journal)([message(failing)])
    assert [call[0] for call in journal.calls] == ["states", "claim", "release"]
    assert failing["delivery_id"] not in journal.entries


def test_a_send_that_failed_unexpectedly_stays_claimed() -> None:
    class Broken(FakeChannel):
        def __call__(self, request: Mapping[str, Any]) -> str:
            raise KeyError("bug after the provider may have accepted it")

    journal = Journal()
    failing = request()
    handler(Broken(), journal)([message(failing)])
    assert journal.entries[failing["delivery_id"]].state == "sending"


def test_a_send_confirmed_but_never_reported_is_reported_not_resent() -> None:
    done = request()
    journal = Journal({done["delivery_id"]: JournalEntry("sent", "<earlier@herald>")})
    send = FakeChannel()
    out = handler(send, journal)([message(done)])
    assert send.sent == []
    (event,) = statuses(out)
    assert (event["status"], event["provider_message_id"]) == ("sent", "<earlier@herald>")


def test_an_uncertain_send_is_parked_when_the_provider_cannot_deduplicate() -> None:
    uncertain, fresh = request(), request()
    journal = Journal({uncertain["delivery_id"]: JournalEntry("sending")})
    send = FakeChannel()
    out = handler(send, journal)([message(uncertain), message(fresh, offset=1)])
    assert send.sent == [fresh["delivery_id"]]
    (dlq,) = [record for record in out if record.topic == ROUTES.dlq_topic]
    assert dict(dlq.headers)[H_ERROR_CLASS] == OUTCOME_UNKNOWN
    events = {e["delivery_id"]: e for e in statuses(out)}
    assert events[uncertain["delivery_id"]]["status"] == "dead"
    assert "may have arrived" in events[uncertain["delivery_id"]]["error_message"]


def test_an_uncertain_send_is_sent_again_when_replayed_or_deduplicated() -> None:
    uncertain = request()
    for resend, headers in (
        (False, [(H_REPLAY_COUNT, b"1")]),  # an operator replayed it: their call
        (True, None),  # the provider drops a second copy
    ):
        journal = Journal({uncertain["delivery_id"]: JournalEntry("sending")})
        send = FakeChannel()
        sender = handler(send, journal, resend_uncertain=resend)
        out = sender([message(uncertain, headers=headers)])
        assert send.sent == [uncertain["delivery_id"]]
        assert [e["status"] for e in statuses(out)] == ["sent"]


@pytest.mark.parametrize(
    ("value", "error_class"),
    [
        (b"", "decode.empty"),
        (b"\xc3\x01" + b"\x00" * 8 + b"x", "decode.UnknownSchemaError"),
        (encode("herald.Event", SAMPLES["herald.Event"]), "decode.IncompatibleSchemaError"),
        (encode("herald.DeliveryRequest", request(channel="sms")), "request.wrong_channel"),
        (encode("herald.DeliveryRequest", request(delivery_id="d-1")), "request.invalid_id"),
        (encode("herald.DeliveryRequest", request(user_id="u" * 3000)), "request.invalid_id"),
        (encode("herald.DeliveryRequest", request(event_type="")), "request.invalid_id"),
    ],
)
def test_decode_request_refuses_what_it_cannot_send(value: bytes, error_class: str) -> None:
    with pytest.raises(PermanentError) as caught:
        decode_request(cast(Message, FakeMessage(value)), "email")
    assert caught.value.error_class == error_class


def test_attempt_of_reads_the_header() -> None:
    assert attempt_of(cast(Message, FakeMessage(b""))) == 1
    assert attempt_of(cast(Message, FakeMessage(b"", headers=[(H_ATTEMPT, b"3")]))) == 3
    assert attempt_of(cast(Message, FakeMessage(b"", headers=[(H_ATTEMPT, b"x")]))) == 1


def test_recently_sent_forgets_the_oldest() -> None:
    recent = RecentlySent(capacity=2)
    for delivery_id in ("a", "b", "c"):
        recent.add(delivery_id)
    assert "a" not in recent and "b" in recent and "c" in recent


# --- retry-tier scheduling (herald.streaming) -------------------------------------------------


def fake(topic: str, partition: int, offset: int, not_before: float | None = None) -> Message:
    headers = [(H_NOT_BEFORE, f"{not_before:.3f}".encode())] if not_before is not None else None
    return cast(Message, FakeMessage(b"", topic=topic, partition=partition, offset=offset,
                                     headers=headers))  # fmt: skip


def test_header_not_before() -> None:
    assert header_not_before(fake("t", 0, 0)) is None
    assert header_not_before(fake("t", 0, 0, NOW)) == pytest.approx(NOW)
    garbled = cast(Message, FakeMessage(b"", headers=[(H_NOT_BEFORE, b"soon")]))
    assert header_not_before(garbled) is None


def test_split_due_holds_back_a_partition_from_its_first_future_record() -> None:
    batch = [
        fake("retry", 0, 10, NOW - 1),  # due
        fake("retry", 0, 11, NOW + 5),  # not due: offsets 11.. of partition 0 wait
        fake("retry", 0, 12, NOW - 1),  # due by itself, but behind 11: waits too
        fake("retry", 1, 3, NOW + 2),
        fake("main", 0, 100),  # no header: always due
    ]
    due, deferrals = split_due(batch, header_not_before, NOW)
    assert [(m.topic(), m.partition(), m.offset()) for m in due] == [
        ("retry", 0, 10),
        ("main", 0, 100),
    ]
    assert deferrals == [
        Deferral("retry", 0, 11, NOW + 5),
        Deferral("retry", 1, 3, NOW + 2),
    ]


def test_commit_offsets_never_pass_a_deferred_record() -> None:
    processed = [fake("retry", 0, 10), fake("main", 0, 100), fake("main", 0, 101)]
    deferrals = [Deferral("retry", 0, 11, NOW + 5), Deferral("retry", 1, 3, NOW + 2)]
    offsets = {(tp.topic, tp.partition): tp.offset for tp in commit_offsets(processed, deferrals)}
    assert offsets == {("retry", 0): 11, ("main", 0): 102, ("retry", 1): 3}
    assert commit_offsets([]) == []


def test_headers_survive_as_text() -> None:
    record = fake("t", 0, 0, NOW)
    assert headers_dict(record)[H_NOT_BEFORE] == f"{NOW:.3f}"


class FakeConsumer:
    """Records what BatchLoop asks of its consumer; hands out scripted batches."""

    def __init__(self, batches: list[list[Message]]) -> None:
        self.batches = batches
        self.calls: list[tuple[str, list[tuple[str, int, int]]]] = []

    def _note(self, name: str, partitions: list[Any]) -> None:
        self.calls.append((name, [(p.topic, p.partition, p.offset) for p in partitions]))

    def poll(self, timeout: float) -> Message | None:
        """The first record of the next scripted batch (None for an empty one)."""
        if not self.batches:
            return None
        if not self.batches[0]:
            self.batches.pop(0)
            return None
        return self.batches[0].pop(0)

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        """The rest of the batch ``poll`` started, without waiting."""
        if not self.batches:
            return []
        rest = self.batches.pop(0)
        assert len(rest) <= num_messages
        return rest

    def pause(self, partitions: list[Any]) -> None:
        self._note("pause", partitions)

    def resume(self, partitions: list[Any]) -> None:
        self._note("resume", partitions)

    def seek(self, partition: Any) -> None:
        self._note("seek", [partition])

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self._note("commit", sorted(offsets, key=lambda p: (p.topic, p.partition)))


def test_batch_loop_pauses_a_partition_until_its_record_is_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [NOW]
    monkeypatch.setattr("herald.streaming.time.time", lambda: clock[0])
    handled: list[list[tuple[str, int]]] = []

    def handle(messages: list[Message]) -> list[Any]:
        handled.append([(m.topic() or "", m.offset() or 0) for m in messages])
        return []

    first = [fake("main", 0, 5), fake("retry", 2, 40, NOW + 1), fake("retry", 2, 41, NOW + 2)]
    again = [fake("retry", 2, 40, NOW + 1)]
    loop = BatchLoop(
        service="test",
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),  # never contacted
        topics=["main", "retry"],
        handler=handle,
        not_before=header_not_before,
    )
    consumer = FakeConsumer([first, [], again])
    loop.consumer = cast(Any, consumer)

    loop.run_once()
    assert handled == [[("main", 5)]]
    assert consumer.calls == [
        ("pause", [("retry", 2, 40)]),
        ("seek", [("retry", 2, 40)]),
        ("commit", [("main", 0, 6), ("retry", 2, 40)]),
    ]
    consumer.calls.clear()
    clock[0] = NOW + 0.5
    loop.run_once()  # not due yet: stays paused
    assert consumer.calls == [] and loop.paused == {("retry", 2): NOW + 1}
    clock[0] = NOW + 1
    loop.run_once()  # due: resumed, consumed again, handled, committed
    assert consumer.calls[0][0] == "resume" and consumer.calls[0][1][0][:2] == ("retry", 2)
    assert handled[-1] == [("retry", 40)]
    assert consumer.calls[-1] == ("commit", [("retry", 2, 41)])
    assert loop.paused == {}


def test_records_left_when_the_batch_budget_is_spent_are_retried_untried() -> None:
    elapsed = [0.0]

    class Slow(FakeChannel):
        def __call__(self, request: Mapping[str, Any]) -> str:
            elapsed[0] += 40  # every send takes until the provider's timeout
            return super().__call__(request)

    send = Slow()
    sender = handler(send, batch_budget_seconds=60, timer=lambda: elapsed[0])
    first, second, third = request(), request(), request()
    out = sender([message(first), message(second, offset=1), message(third, offset=2)])
    assert send.sent == [first["delivery_id"], second["delivery_id"]]  # 40 s, then 80 s > 60
    (retry,) = [record for record in out if record.topic == ROUTES.retry_topics[0]]
    assert retry.value == encode("herald.DeliveryRequest", third)
    events = {e["delivery_id"]: e for e in statuses(out)}
    assert events[third["delivery_id"]]["status"] == "retrying"
    assert events[third["delivery_id"]]["error_class"] == "sender.batch_budget"


def test_batch_loop_rewinds_and_pauses_what_the_handler_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("herald.streaming.time.time", lambda: NOW)
    batch = [fake("main", 0, 5), fake("main", 1, 7), fake("main", 0, 6), fake("main", 1, 8)]

    def handle(messages: list[Message]) -> Handled:
        return Handled([], held=messages[1:], hold_until=NOW + 30)  # tried only the first

    loop = BatchLoop(
        service="test",
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),  # never contacted
        topics=["main"],
        handler=handle,
    )
    consumer = FakeConsumer([batch])
    loop.consumer = cast(Any, consumer)
    loop.run_once()
    assert consumer.calls == [
        ("pause", [("main", 1, 7)]),
        ("seek", [("main", 1, 7)]),
        ("pause", [("main", 0, 6)]),
        ("seek", [("main", 0, 6)]),
        # Partition 0 past the handled record only; partition 1 at its first held one.
        ("commit", [("main", 0, 6), ("main", 1, 7)]),
    ]
    assert loop.paused == {("main", 0): NOW + 30, ("main", 1): NOW + 30}
