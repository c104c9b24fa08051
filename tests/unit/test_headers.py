"""The x-* header codec and failure_record on garbled headers: garbage of every kind is
reported, never raised, and a record carrying it goes to the DLQ as headers.invalid."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from herald.errors import PermanentError, ProcessingError, RetryableError
from herald.headers import (
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FIRST_FAILED_AT,
    H_NOT_BEFORE,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
    H_REPLAY_COUNT,
    HEADERS_INVALID,
    RawHeaders,
    header_problems,
    read_headers,
    write_headers,
)
from herald.streaming import Outgoing, failure_record, header_not_before, too_large_stand_in
from services.inapp_store.batch import plan_batch

NOW = 1_700_000_000.0
RETRIES = ("t.retry-1", "t.retry-2")
DELAYS = (30_000, 300_000)


def record(headers: list[tuple[str, str | bytes | None]] | None, offset: int = 7) -> Message:
    return Message(topic="t", partition=2, offset=offset, key=b"k", value=b"v", headers=headers)


def fail(
    message: Message, error: ProcessingError | None = None
) -> tuple[str, dict[str, bytes | str]]:
    out = failure_record(
        message,
        error or RetryableError("smtp down", error_class="smtp.4xx"),
        retry_topics=RETRIES,
        retry_delays_ms=DELAYS,
        dlq_topic="t.dlq",
        now=NOW,
    )
    return out.topic, {name: value or b"" for name, value in out.headers}


def test_reads_every_design_header_typed() -> None:
    read = read_headers(
        [
            (H_ATTEMPT, b"3"),
            (H_NOT_BEFORE, b"1700000030.500"),
            (H_ORIGINAL_TOPIC, b"herald.deliveries.sms.v1"),
            (H_ORIGINAL_PARTITION, b"4"),
            (H_ORIGINAL_OFFSET, b"123456789012"),
            (H_ERROR_CLASS, b"sms.5xx"),
            (H_ERROR_MESSAGE, "provider said \u00e9".encode()),
            (H_FIRST_FAILED_AT, b"1700000000.000"),
            (H_REPLAY_COUNT, b"0"),
            ("traceparent", b"\xff\x00binary"),
        ]
    )
    assert read.ok and read.problems == ()
    assert (read.attempt, read.not_before, read.original_partition) == (3, 1700000030.5, 4)
    assert read.original_offset == 123456789012 and read.replay_count == 0
    assert read.original_topic == "herald.deliveries.sms.v1" and read.error_class == "sms.5xx"
    assert read.error_message == "provider said \u00e9"
    assert read.first_failed_at == NOW


def test_absent_headers_are_not_problems() -> None:
    raws: list[RawHeaders] = [None, [], {}, [("traceparent", b"abc")]]
    for raw in raws:
        read = read_headers(raw)
        assert read.ok and read.attempt is None and read.replay_count is None


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        (H_ATTEMPT, b"x", "not a whole number"),
        (H_ATTEMPT, b"", "not a whole number"),
        (H_ATTEMPT, None, "no value"),
        (H_ATTEMPT, b"0", "out of range"),
        (H_ATTEMPT, b"-1", "not a whole number"),
        (H_ATTEMPT, b"+3", "not a whole number"),
        (H_ATTEMPT, b"3_000", "not a whole number"),
        (H_ATTEMPT, "\u0663".encode(), "not a whole number"),  # an Arabic-Indic 3: int() takes it
        (H_ATTEMPT, b"9" * 5000, "not a whole number"),  # int() raises past 4,300 digits
        (H_ATTEMPT, b"99999999999", "out of range"),
        (H_ATTEMPT, b"\xff\xfe", "not UTF-8"),
        (H_REPLAY_COUNT, b"many", "not a whole number"),
        (H_ORIGINAL_PARTITION, b"2147483648", "out of range"),
        (H_ORIGINAL_OFFSET, b"1.5", "not a whole number"),
        (H_NOT_BEFORE, b"nan", "not epoch seconds"),
        (H_NOT_BEFORE, b"inf", "not epoch seconds"),
        (H_NOT_BEFORE, b"1e309", "not epoch seconds"),
        (H_NOT_BEFORE, b"soon", "not epoch seconds"),
        (H_FIRST_FAILED_AT, b"1" * 400, "not epoch seconds"),
        (H_ORIGINAL_TOPIC, b"no spaces allowed", "not a topic name"),
        (H_ORIGINAL_TOPIC, b"t" * 250, "not a topic name"),
        (H_ERROR_CLASS, b"", "empty"),
        (H_ERROR_MESSAGE, b"caf\xe9", "not UTF-8"),
    ],
)
def test_garbage_is_reported_not_raised(name: str, value: bytes | None, why: str) -> None:
    read = read_headers([("traceparent", b"t"), (name, value)])
    assert not read.ok
    (problem,) = read.problems
    assert problem.startswith(name) and why in problem
    assert len(problem) < 200  # a huge value is quoted only in part
    assert read.garbled == {name: value or b""}
    assert header_problems([(name, value)]) == [problem]


def test_a_repeated_header_with_different_values_is_a_problem() -> None:
    assert read_headers([(H_ATTEMPT, b"2"), (H_ATTEMPT, b"2")]).attempt == 2
    read = read_headers([(H_ATTEMPT, b"2"), (H_ATTEMPT, b"5")])
    assert read.problems == (f"{H_ATTEMPT} repeated with different values",)
    assert read.attempt is None


def test_text_view_never_raises() -> None:
    read = read_headers({"a": b"\xff", "b": None, "c": "text"})
    assert read.text == {"a": "\ufffd", "b": "", "c": "text"}


def test_write_replaces_every_occurrence_and_keeps_foreign_bytes() -> None:
    out = write_headers(
        [(H_ATTEMPT, b"1"), ("trace", b"\xff"), (H_ATTEMPT, b"x"), (H_NOT_BEFORE, b"1")],
        {H_ATTEMPT: 2, H_NOT_BEFORE: None, H_FIRST_FAILED_AT: NOW, H_ERROR_MESSAGE: "e" * 5000},
    )
    assert out == [
        ("trace", b"\xff"),
        (H_ATTEMPT, "2"),
        (H_FIRST_FAILED_AT, "1700000000.000"),
        (H_ERROR_MESSAGE, "e" * 1000),
    ]
    assert read_headers(out).ok


def test_failure_record_with_good_headers_goes_to_the_next_tier() -> None:
    topic, headers = fail(record([(H_ATTEMPT, b"1"), ("trace", b"\xff")]))
    assert topic == "t.retry-1"
    assert headers[H_ATTEMPT] == "2" and headers["trace"] == b"\xff"
    assert headers[H_NOT_BEFORE] == f"{NOW + 30:.3f}"
    assert (headers[H_ORIGINAL_TOPIC], headers[H_ORIGINAL_PARTITION]) == ("t", "2")
    assert headers[H_ORIGINAL_OFFSET] == "7" and headers[H_ERROR_CLASS] == "smtp.4xx"


@pytest.mark.parametrize(
    "garbage",
    [
        [(H_ATTEMPT, b"x")],
        [(H_ATTEMPT, b"")],
        [(H_ATTEMPT, b"9" * 5000)],
        [(H_REPLAY_COUNT, b"\xff")],
        [(H_ORIGINAL_OFFSET, b"-3")],
        [(H_FIRST_FAILED_AT, b"yesterday")],
        [(H_NOT_BEFORE, b"later")],
        [(H_ATTEMPT, b"1"), (H_ATTEMPT, b"3")],
    ],
)
def test_failure_record_parks_garbled_headers_on_the_dlq(
    garbage: list[tuple[str, str | bytes | None]],
) -> None:
    """Even a retryable failure: the record's own headers make it poison."""
    topic, headers = fail(record([("trace", b"keep"), *garbage]))
    assert topic == "t.dlq"
    assert headers[H_ERROR_CLASS] == HEADERS_INVALID
    name = garbage[-1][0]
    message = str(headers[H_ERROR_MESSAGE])
    assert name in message and "smtp.4xx" in message  # the header, then the error it met
    assert headers["trace"] == b"keep"
    # The garbled value is kept verbatim under x-garbled-*; the typed headers read again.
    assert headers["x-garbled-" + name.removeprefix("x-")] == garbage[-1][1]
    again = read_headers(list(headers.items()))
    assert again.ok, again.problems
    assert again.original_topic == "t" and again.original_offset == 7
    assert again.attempt is not None and again.first_failed_at is not None
    assert H_NOT_BEFORE not in headers


def test_failure_record_keeps_a_permanent_errors_story_on_garbled_headers() -> None:
    error = PermanentError("not Avro", error_class="decode.NotAvroError")
    topic, headers = fail(record([(H_ATTEMPT, b"x")]), error)
    assert topic == "t.dlq"
    assert headers[H_ERROR_CLASS] == HEADERS_INVALID
    assert "x-attempt='x'" in str(headers[H_ERROR_MESSAGE])
    assert "decode.NotAvroError: not Avro" in str(headers[H_ERROR_MESSAGE])


def test_header_not_before_ignores_garbage_and_far_futures() -> None:
    assert header_not_before(record([(H_NOT_BEFORE, b"soon")])) is None
    assert header_not_before(record([(H_NOT_BEFORE, b"99999999999")])) is None
    assert header_not_before(record([(H_NOT_BEFORE, b"1700000000.250")])) == NOW + 0.25


def test_inapp_store_parks_an_inapp_delivery_with_garbled_headers() -> None:
    from tests.unit.test_inapp_store import (
        CATALOGUE_T,
        T0,
        inapp_message,
        notification,
        notification_message,
        request,
    )

    inapp = CATALOGUE_T.for_channel("inapp")
    good = inapp_message(request(user="user-1"), offset=1)
    bad = inapp_message(request(user="user-2"), offset=2, x_attempt="x")
    # A notification's x-* headers are not read by the store: garbage there is not poison.
    plain = notification_message(notification(user="user-3"))
    plain = Message(
        topic=plain.topic(), partition=0, offset=3, value=plain.value(), headers=[(H_ATTEMPT, b"x")]
    )
    plan = plan_batch([good, bad, plain], CATALOGUE_T, now=T0)
    assert plan.delivered == 1
    assert [(i.offset, i.error.error_class, i.sent_to) for i in plan.invalid] == [
        (2, HEADERS_INVALID, inapp.dlq_name)
    ]
    dead = [o for o in plan.outgoing if o.topic == inapp.dlq_name]
    assert len(dead) == 1 and dead[0].dead_letter and dead[0].origin is bad
    headers = dict(dead[0].headers)
    assert headers[H_ERROR_CLASS] == HEADERS_INVALID and headers["x-garbled-attempt"] == b"x"
    assert "x-attempt='x'" in str(headers[H_ERROR_MESSAGE])


def test_sender_parks_a_delivery_with_garbled_headers_and_sends_the_rest() -> None:
    from tests.unit.test_sender import ROUTES, FakeChannel, handler, message, request

    send = FakeChannel()
    good, bad = request(), request()
    out = handler(send)(
        [message(good, offset=1), message(bad, offset=2, headers=[(H_ATTEMPT, b"x")])]
    )
    assert send.sent == [good["delivery_id"]]
    (dead,) = [o for o in out if o.topic == ROUTES.dlq_topic]
    assert dict(dead.headers)[H_ERROR_CLASS] == HEADERS_INVALID
    assert dead.origin is not None and dead.origin.offset() == 2


def test_a_failure_record_too_large_to_produce_gets_a_small_stand_in() -> None:
    big = Message(topic="t", partition=2, offset=7, key=b"k", value=b"v" * 2_000_000)
    error = PermanentError("bad", error_class="email.invalid_address")
    dead = failure_record(big, error, retry_topics=(), retry_delays_ms=(), dlq_topic="t.dlq")
    stand_in = too_large_stand_in(dead, "Broker: Message size too large")
    assert stand_in is not None and stand_in.dead_letter and stand_in.value is None
    assert stand_in.key == b"k" and stand_in.origin is big
    read = read_headers(stand_in.headers)
    assert read.ok and read.error_class == "record.too_large"
    assert read.original_offset == 7 and read.original_topic == "t"
    assert "email.invalid_address: bad" in (read.error_message or "")
    assert too_large_stand_in(stand_in, "again") is None  # never a stand-in of a stand-in
    assert too_large_stand_in(Outgoing("status", None, b"x" * 10), "big") is None
