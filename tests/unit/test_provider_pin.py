"""The provider pin that survives a sender restart: ``x-provider-pin`` on the record.

A send whose outcome is unknown (a timeout after the request went out) pins the delivery to
its provider. The pin in the chain's memory is lost with the process; the one on the retry-tier
and dead-letter records is not. These tests feed the records one handler writes to a *new*
handler and chain (fresh memory, as after a restart or a partition moving to another replica)
and check that the retry goes to the pinned provider only. No network, no broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import pytest
from confluent_kafka import Message

from herald import dlq
from herald.errors import PermanentError, RetryableError
from herald.headers import (
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_PROVIDER_PIN,
    HEADERS_INVALID,
    garbled_name,
    read_headers,
    write_headers,
)
from herald.sender import (
    PIN_UNKNOWN,
    Breaker,
    ProviderChain,
    SenderHandler,
    SenderRoutes,
    decode_request,
    provider_names,
    with_pin,
)
from herald.sender.providers import PIN_KEY
from herald.serde import decode, encode
from herald.streaming import Outgoing
from services.sms_sender.service import uncertain as sms_uncertain
from tests.unit.test_sender import CATALOGUE_T, NOW, FakeChannel, FakeMessage, Journal
from tests.unit.test_sender import request as email_request

SMS = SenderRoutes.for_channel(CATALOGUE_T, "sms")


class Provider:
    """One SMS provider: fails with ``error`` while set, else accepts; keeps every request."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: Exception | None = None
        self.requests: list[Mapping[str, Any]] = []

    @property
    def calls(self) -> list[str]:
        return [request["delivery_id"] for request in self.requests]

    def __call__(self, request: Mapping[str, Any]) -> str:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return f"{self.name}-{request['delivery_id']}"


def timeout() -> RetryableError:
    return RetryableError("read timed out after 10 s", error_class="sms.timeout")


def down() -> RetryableError:
    return RetryableError("HTTP 503", error_class="sms.5xx")


def providers(count: int = 2) -> tuple[ProviderChain, list[Provider]]:
    """A fresh chain (empty memory) over ``count`` fresh providers, as a new process has."""
    sends = [Provider(name) for name in provider_names("sms", count)]
    chain = ProviderChain("sms", [(p.name, p) for p in sends], failures=3, uncertain=sms_uncertain)
    return chain, sends


def sms_request() -> dict[str, Any]:
    return email_request(channel="sms", destination="+447700900123")


def sms_message(record: Mapping[str, Any], **kwargs: Any) -> Message:
    return cast(Message, FakeMessage(encode("herald.DeliveryRequest", record), **kwargs))


def consumed(record: Outgoing, offset: int = 0) -> Message:
    """``record`` as a sender consumes it from its topic (header values are bytes there)."""
    headers = [
        (name, value.encode() if isinstance(value, str) else cast(bytes, value))
        for name, value in record.headers
    ]
    return cast(
        Message,
        FakeMessage(
            record.value,
            topic=record.topic,
            offset=offset,
            key=cast(bytes | None, record.key),
            headers=headers,
        ),
    )


def sms_handler(send: Any, journal: Journal, **kwargs: Any) -> SenderHandler:
    return SenderHandler(
        service="test_provider_pin",
        routes=SMS,
        catalogue=CATALOGUE_T,
        send=send,
        journal=journal,
        clock=lambda: NOW,
        **kwargs,
    )


def handle(handler: SenderHandler, messages: list[Message]) -> list[Outgoing]:
    out = handler(messages)
    assert isinstance(out, list), f"the handler held records back: {out}"
    return out


def split(out: list[Outgoing]) -> tuple[list[Outgoing], list[dict[str, Any]]]:
    """The records to the retry tiers or the DLQ, and the status events."""
    status = CATALOGUE_T.delivery_status.name
    records = [record for record in out if record.topic != status]
    events = [decode(cast(bytes, record.value)) for record in out if record.topic == status]
    return records, events


def pin_of(record: Outgoing) -> str | None:
    return read_headers(record.headers).provider_pin


# -- the header ------------------------------------------------------------------------------


def test_the_pin_header_round_trips_through_the_codec() -> None:
    written = write_headers(
        [(H_ATTEMPT, b"2"), ("traceparent", b"00-ab")], {H_PROVIDER_PIN: "sms-b"}
    )
    assert (H_PROVIDER_PIN, "sms-b") in written
    as_consumed = [(name, v.encode() if isinstance(v, str) else v) for name, v in written]
    headers = read_headers(as_consumed)
    assert headers.ok and headers.provider_pin == "sms-b" and headers.attempt == 2
    assert read_headers([(H_ATTEMPT, b"2")]).provider_pin is None
    # Written again with another provider: one header, the new value.
    again = write_headers(written, {H_PROVIDER_PIN: "sms-a"})
    assert [value for name, value in again if name == H_PROVIDER_PIN] == ["sms-a"]
    # None removes it.
    assert H_PROVIDER_PIN not in dict(write_headers(written, {H_PROVIDER_PIN: None}))


@pytest.mark.parametrize(
    "raw",
    [
        [(H_PROVIDER_PIN, b"")],
        [(H_PROVIDER_PIN, b"sms a")],
        [(H_PROVIDER_PIN, b"\xff\xfe")],
        [(H_PROVIDER_PIN, None)],
        [(H_PROVIDER_PIN, b"sms-a"), (H_PROVIDER_PIN, b"sms-b")],
    ],
)
def test_an_unreadable_pin_is_a_header_problem_and_parks_the_record(
    raw: list[tuple[str, bytes | None]],
) -> None:
    headers = read_headers(raw)
    assert headers.provider_pin is None
    assert headers.problems and H_PROVIDER_PIN in headers.problems[0]
    with pytest.raises(PermanentError) as caught:
        decode_request(sms_message(sms_request(), headers=cast(Any, raw)), "sms")
    assert caught.value.error_class == HEADERS_INVALID


def test_the_same_pin_repeated_is_read() -> None:
    assert read_headers([(H_PROVIDER_PIN, b"sms-a"), (H_PROVIDER_PIN, b"sms-a")]).provider_pin == (
        "sms-a"
    )


# -- the chain -------------------------------------------------------------------------------


def test_a_fresh_chain_sends_a_pinned_request_to_the_pinned_provider_only() -> None:
    chain, (a, b) = providers()
    one = sms_request()
    # Without a pin the primary takes it...
    assert chain(one).provider == "sms-a"
    # ...with one (nothing in memory), only the pinned provider does, though A answers.
    two = sms_request()
    assert chain.pins.get(two["delivery_id"]) is None
    assert chain(with_pin(two, "sms-b")).provider == "sms-b"
    assert two["delivery_id"] not in a.calls
    # The provider's send never sees the private key; the caller's request is not changed.
    assert all(PIN_KEY not in request for request in a.requests + b.requests)
    assert PIN_KEY not in two


def test_a_pinned_send_never_falls_through_even_on_a_certain_failure() -> None:
    chain, (a, b) = providers()
    a.error = down()  # an error answer: an unpinned delivery would go on to B
    assert chain(sms_request()).provider == "sms-b"
    one = sms_request()
    with pytest.raises(RetryableError) as caught:
        chain(with_pin(one, "sms-a"))
    assert caught.value.provider == "sms-a" and caught.value.error_class == "sms.5xx"
    assert one["delivery_id"] not in b.calls  # A may have it from the earlier timeout


def test_the_record_pin_wins_over_memory() -> None:
    chain, (a, _) = providers()
    one = sms_request()
    chain.pins.pin(one["delivery_id"], "sms-a")
    assert chain(with_pin(one, "sms-b")).provider == "sms-b"
    assert a.calls == []


def test_a_pin_to_a_provider_the_chain_lacks_sends_nothing() -> None:
    chain, (a, b) = providers()
    with pytest.raises(RetryableError) as caught:
        chain(with_pin(sms_request(), "sms-c"))
    error = caught.value
    assert error.error_class == PIN_UNKNOWN and error.uncertain_outcome
    assert "'sms-c'" in error.message and "sms-a, sms-b" in error.message
    assert a.calls == [] and b.calls == []
    # No breaker moved: it was nobody's failure.
    assert [p.breaker.consecutive for p in chain.providers] == [0, 0]


def test_a_plain_send_function_ignores_a_pin() -> None:
    send = FakeChannel()
    record = sms_request()
    out = handle(
        sms_handler(send, Journal()),
        [sms_message(record, headers=[(H_PROVIDER_PIN, b"sms-a")])],
    )
    assert send.sent == [record["delivery_id"]]
    assert [event["status"] for event in split(out)[1]] == ["sent"]


# -- through the handler, across a restart ---------------------------------------------------


def test_a_timeout_pins_the_retry_record_and_a_restarted_sender_honours_it() -> None:
    journal = Journal()  # the journal is durable: both processes share it
    one, other = sms_request(), sms_request()

    # Process 1: A times out on `one` (A may have it).
    chain, (a, b) = providers()
    a.error = timeout()
    (retry,), (event,) = split(handle(sms_handler(chain, journal), [sms_message(one)]))
    assert retry.topic == SMS.retry_topics[0]
    assert pin_of(retry) == "sms-a"
    assert (event["status"], event["provider"], event["error_class"]) == (
        "retrying",
        "sms-a",
        "sms.timeout",
    )
    assert b.calls == []

    # Process 2 (a restart: fresh memory) where A now answers 503, so that any unpinned
    # delivery goes to B, and does.
    chain2, (a2, b2) = providers()
    a2.error = down()
    handler2 = sms_handler(chain2, journal)
    assert chain2.pins.get(one["delivery_id"]) is None
    out = handle(handler2, [consumed(retry), sms_message(other, offset=1)])
    records, events = split(out)
    by_id = {e["delivery_id"]: e for e in events}
    assert by_id[other["delivery_id"]]["provider"] == "sms-b"  # fell through, as it may
    assert one["delivery_id"] not in b2.calls  # the pinned one did not
    assert a2.calls.count(one["delivery_id"]) == 1
    (retry2,) = records
    assert retry2.topic == SMS.retry_topics[1] and pin_of(retry2) == "sms-a"
    assert (by_id[one["delivery_id"]]["status"], by_id[one["delivery_id"]]["provider"]) == (
        "retrying",
        "sms-a",
    )

    # Process 3, A answering again: sent through A, once, and never through B.
    chain3, (a3, b3) = providers()
    a3.error = None
    records, events = split(handle(sms_handler(chain3, journal), [consumed(retry2)]))
    assert records == []
    (sent,) = events
    assert (sent["status"], sent["provider"], sent["attempt"]) == ("sent", "sms-a", 3)
    assert (a3.calls, b3.calls) == ([one["delivery_id"]], [])


def test_without_the_header_the_same_restart_would_fail_over() -> None:
    """The control: what the pin prevents (the duplicate the header exists for)."""
    journal = Journal()
    one = sms_request()
    chain, (a, _) = providers()
    a.error = timeout()
    (retry,), _ = split(handle(sms_handler(chain, journal), [sms_message(one)]))
    stripped = Outgoing(
        retry.topic, retry.key, retry.value, write_headers(retry.headers, {H_PROVIDER_PIN: None})
    )
    chain2, (a2, b2) = providers()
    a2.error = down()
    handle(sms_handler(chain2, journal), [consumed(stripped)])
    assert b2.calls == [one["delivery_id"]]


def test_the_dead_letter_keeps_the_pin_and_a_replay_goes_to_that_provider() -> None:
    journal = Journal()
    one = sms_request()
    last = len(SMS.retry_topics) + 1
    chain, (a, _) = providers()
    a.error = timeout()
    record = sms_message(one, topic=SMS.retry_topics[-1], headers=[(H_ATTEMPT, str(last).encode())])
    (dead,), (event,) = split(handle(sms_handler(chain, journal), [record]))
    assert dead.topic == SMS.dlq_topic and event["status"] == "dead"
    assert pin_of(dead) == "sms-a"

    # `herald dlq replay` keeps the headers (x-attempt back to 1, x-replay-count up by one).
    letter = dlq.DeadLetter(
        dead.topic,
        0,
        0,
        NOW,
        cast(bytes, dead.key),
        dead.value,
        {name: str(value) for name, value in dead.headers},
        raw_headers=list(dead.headers),
    )
    replayed = dlq.replay_record(CATALOGUE_T, letter, max_replays=3, now=NOW)
    assert replayed.topic == SMS.retry_topics[0] and pin_of(replayed) == "sms-a"

    # Replayed to a fresh sender whose primary is failing: it still goes to A only.
    chain2, (a2, b2) = providers()
    a2.error = down()
    handler2 = sms_handler(chain2, journal)
    for _ in range(3):  # A's breaker opens on other deliveries
        handle(handler2, [sms_message(sms_request())])
    assert chain2.active() == "sms-b"
    a2.error = None
    (sent,) = split(handle(handler2, [consumed(replayed)]))[1]
    assert (sent["status"], sent["provider"]) == ("sent", "sms-a")
    assert one["delivery_id"] not in b2.calls


def test_a_pin_to_a_missing_provider_walks_the_tiers_keeping_it_without_tripping() -> None:
    journal = Journal()
    pinned, other = sms_request(), sms_request()
    chain, (a, b) = providers()
    # A breaker that opens on the first failure it counts: the unknown pin must not count.
    handler = sms_handler(chain, journal, breaker=Breaker(failures=1, backoff=60))
    out = handle(
        handler,
        [
            sms_message(pinned, headers=[(H_PROVIDER_PIN, b"sms-c")]),
            sms_message(other, offset=1),
        ],
    )
    (retry,), events = split(out)
    assert retry.topic == SMS.retry_topics[0] and pin_of(retry) == "sms-c"
    assert dict(retry.headers)[H_ERROR_CLASS] == PIN_UNKNOWN
    by_id = {e["delivery_id"]: e for e in events}
    assert by_id[pinned["delivery_id"]]["status"] == "retrying"
    assert by_id[pinned["delivery_id"]]["error_class"] == PIN_UNKNOWN
    assert by_id[other["delivery_id"]]["status"] == "sent"  # not held: no breaker opened
    assert pinned["delivery_id"] not in a.calls + b.calls
    assert journal.entries.get(pinned["delivery_id"]) is None  # the claim was released


def test_an_unreadable_pin_is_parked_and_its_replay_is_sent_without_one() -> None:
    journal = Journal()
    one = sms_request()
    chain, (a, b) = providers()
    handler = sms_handler(chain, journal)
    (dead,) = handle(handler, [sms_message(one, headers=[(H_PROVIDER_PIN, b"sms a")])])
    assert dead.topic == SMS.dlq_topic
    headers = dict(dead.headers)
    assert headers[H_ERROR_CLASS] == HEADERS_INVALID
    assert H_PROVIDER_PIN not in headers  # else every replay would be parked again
    assert headers[garbled_name(H_PROVIDER_PIN)] == b"sms a"
    assert a.calls == [] and b.calls == []
    letter = dlq.DeadLetter(
        dead.topic, 0, 0, NOW, None, dead.value, {}, raw_headers=list(dead.headers)
    )
    replayed = dlq.replay_record(CATALOGUE_T, letter, max_replays=3, now=NOW)
    (sent,) = split(handle(handler, [consumed(replayed)]))[1]
    assert (sent["status"], sent["provider"]) == ("sent", "sms-a")


def test_a_certain_failure_writes_no_pin() -> None:
    chain, (a, b) = providers()
    a.error = b.error = down()
    (retry,), _ = split(handle(sms_handler(chain, Journal()), [sms_message(sms_request())]))
    assert pin_of(retry) is None
