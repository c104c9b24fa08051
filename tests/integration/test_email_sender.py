"""The email sender as a real process on the real stack: Kafka in, SMTP sink out, statuses,
dead letters and retry tiers on the broker. Every test uses its own topics, schema and
recipient addresses, and looks only at its own messages on the shared SMTP sink."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_string
from email.message import EmailMessage
from email.policy import default
from typing import Any

import httpx
import psycopg
import pytest

from herald.db import search_path_options
from herald.devstack.components import Smtp
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from herald.streaming import H_ATTEMPT, H_ERROR_CLASS, H_ERROR_MESSAGE, H_ORIGINAL_TOPIC
from schemas import Catalogue
from tests.integration.delivery_util import (
    dead_letters,
    delivery_request,
    publish,
    wait_for,
    wait_for_statuses,
)
from tests.integration.kafka_util import committed_and_end
from tests.integration.services import TEST_RETRY_DELAYS_MS, ServiceProcess, service_env

pytestmark = pytest.mark.integration

SERVICE = "services.email_sender"


@pytest.fixture
def sink_api(local_stack: Settings) -> str:
    return f"http://127.0.0.1:{Smtp(local_stack).api_port}"


def address() -> str:
    return f"t-{uuid.uuid4().hex}@example.test"


def email_request(to: str, **changes: Any) -> dict[str, Any]:
    content = {
        "subject": f"Hello {to}",
        "body_text": f"Plain text for {to}",
        "body_html": f"<p>HTML for <b>{to}</b></p>",
    }
    return delivery_request("email", to, **{**content, **changes})


def mailbox(sink_api: str, recipients: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The sink's messages for ``recipients`` only (other tests share the sink)."""
    messages = httpx.get(f"{sink_api}/messages", timeout=10).raise_for_status().json()
    found: dict[str, list[dict[str, Any]]] = {}
    for message in messages:
        for rcpt in message["rcpt_tos"]:
            if rcpt in recipients:
                found.setdefault(rcpt, []).append(message)
    return found


def fail_smtp(sink_api: str, rcpt: str, code: int, message: str, count: int | None = None) -> None:
    """Make the sink answer ``code`` for ``rcpt`` (``count`` times, or always); scoped to the
    test's own address, as other tests share the sink."""
    fault: dict[str, Any] = {"code": code, "message": message, "rcpt": rcpt}
    if count is not None:
        fault["count"] = count
    httpx.post(f"{sink_api}/faults", json=fault, timeout=10).raise_for_status()


def smtp_replies(sink_api: str, rcpt: str) -> list[str]:
    """The reply codes the sink gave for ``rcpt``, in order."""
    log = httpx.get(f"{sink_api}/log", timeout=10).raise_for_status().json()
    return [entry["reply"][:3] for entry in log if entry["rcpt"] == rcpt]


def parse(raw: str) -> EmailMessage:
    message = message_from_string(raw, policy=default)
    assert isinstance(message, EmailMessage)
    return message


def start(
    run_service: Callable[..., ServiceProcess],
    kafka: KafkaSettings,
    database: DatabaseSettings,
    **extra: str,
) -> ServiceProcess:
    env = service_env(kafka, database, EMAIL_SENDER_METRICS_PORT="0", **extra)
    return run_service(SERVICE, env)


def test_sends_each_delivery_once_with_text_and_html(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sink_api: str,
) -> None:
    requests = [email_request(address()) for _ in range(5)]
    publish(kafka_settings, topics.deliveries_email.name, requests)
    service = start(run_service, kafka_settings, db_settings)

    recipients = {r["destination"] for r in requests}
    grouped = wait_for_statuses(
        kafka_settings, topics, {r["delivery_id"]: "sent" for r in requests}
    )
    box = wait_for(
        lambda: found if len(found := mailbox(sink_api, recipients)) == 5 else None,
        30,
        "five messages at the SMTP sink",
    )
    for request in requests:
        (stored,) = box[request["destination"]]  # exactly one message each
        message = parse(stored["raw"])
        assert message["Message-ID"] == f"<{request['delivery_id']}@herald>"
        assert message["Subject"] == request["subject"]
        assert message["To"] == request["destination"]
        assert stored["mail_from"] == "notifications@herald.local"
        text, html = message.get_body(("plain",)), message.get_body(("html",))
        assert text is not None and html is not None
        assert text.get_content().strip() == request["body_text"]
        assert html.get_content().strip() == request["body_html"]
        (status,) = grouped[request["delivery_id"]]
        assert (status["status"], status["attempt"]) == ("sent", 1)
        assert status["provider_message_id"] == f"<{request['delivery_id']}@herald>"
        assert status["notification_id"] == request["notification_id"]
    assert service.running()


def test_invalid_address_fails_to_the_dlq_and_neighbours_are_sent(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sink_api: str,
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"  # one user: one partition, so order is kept
    before = email_request(address(), user_id=user)
    invalid = email_request(f"not-an-address-{uuid.uuid4().hex}", user_id=user)
    injected = email_request(address(), user_id=user, subject="Hi\r\nBcc: victim@example.test")
    after = email_request(address(), user_id=user)
    publish(kafka_settings, topics.deliveries_email.name, [before, invalid, injected, after])
    start(run_service, kafka_settings, db_settings)

    grouped = wait_for_statuses(
        kafka_settings,
        topics,
        {
            before["delivery_id"]: "sent",
            invalid["delivery_id"]: "failed",
            injected["delivery_id"]: "failed",
            after["delivery_id"]: "sent",
        },
    )
    assert grouped[invalid["delivery_id"]][-1]["error_class"] == "email.invalid_address"
    assert grouped[injected["delivery_id"]][-1]["error_class"] == "email.header_injection"
    dlq = {request["delivery_id"]: headers for request, headers in
           dead_letters(kafka_settings, topics.deliveries_email.dlq_name)}  # fmt: skip
    assert set(dlq) == {invalid["delivery_id"], injected["delivery_id"]}
    assert dlq[invalid["delivery_id"]][H_ERROR_CLASS] == "email.invalid_address"
    assert "not a valid email address" in dlq[invalid["delivery_id"]][H_ERROR_MESSAGE]
    assert dlq[injected["delivery_id"]][H_ERROR_CLASS] == "email.header_injection"
    assert dlq[invalid["delivery_id"]][H_ORIGINAL_TOPIC] == topics.deliveries_email.name
    box = mailbox(sink_api, {before["destination"], after["destination"],
                             injected["destination"], "victim@example.test"})  # fmt: skip
    assert {rcpt: len(found) for rcpt, found in box.items()} == {
        before["destination"]: 1,
        after["destination"]: 1,
    }


def test_a_delivery_already_sent_is_not_sent_again(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sink_api: str,
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    done = email_request(address(), user_id=user)
    fresh = email_request(address(), user_id=user)
    with psycopg.connect(
        db_settings.libpq_url, options=search_path_options(db_settings.database_schema)
    ) as conn:
        conn.execute(
            "INSERT INTO notification_delivery (id, notification_id, user_id, channel, status,"
            " provider_message_id, updated_at) VALUES (%s, %s, %s, 'email', 'sent', %s, now())",
            (done["delivery_id"], done["notification_id"], user, "<earlier@herald>"),
        )
    # The same delivery twice more (a replay), then a fresh one behind it on the same partition.
    publish(kafka_settings, topics.deliveries_email.name, [done, done, fresh])
    start(run_service, kafka_settings, db_settings)

    grouped = wait_for_statuses(kafka_settings, topics, {fresh["delivery_id"]: "sent"})
    # The fresh delivery came after the done one on its partition, so that one was handled.
    assert done["delivery_id"] not in grouped
    box = wait_for(
        lambda: mailbox(sink_api, {done["destination"], fresh["destination"]}),
        30,
        "the fresh message at the sink",
    )
    assert {rcpt: len(found) for rcpt, found in box.items()} == {fresh["destination"]: 1}


def test_temporary_smtp_refusals_are_retried_through_the_tiers(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sink_api: str,
) -> None:
    flaky = address()
    steady = address()
    fail_smtp(sink_api, flaky, 451, "4.3.0 try again later", count=2)
    request, neighbour = email_request(flaky), email_request(steady)
    publish(kafka_settings, topics.deliveries_email.name, [request, neighbour])
    start(run_service, kafka_settings, db_settings)

    grouped = wait_for_statuses(
        kafka_settings,
        topics,
        {request["delivery_id"]: "sent", neighbour["delivery_id"]: "sent"},
    )
    history = grouped[request["delivery_id"]]
    assert [(e["status"], e["attempt"]) for e in history] == [
        ("retrying", 1),
        ("retrying", 2),
        ("sent", 3),
    ]
    assert {e["error_class"] for e in history[:2]} == {"smtp.4xx"}
    assert "451" in history[0]["error_message"]
    # The tiers' delays were waited out (x-not-before), not skipped.
    delays = [int(ms) / 1000 for ms in TEST_RETRY_DELAYS_MS.split(",")]
    waited = (history[2]["occurred_at"] - history[0]["occurred_at"]).total_seconds()
    assert waited >= delays[0] + delays[1] - 0.05
    # One hop through each of the first two tiers, with the attempt count in the headers.
    tiers = topics.deliveries_email.retry_topic_names
    hops = [dead_letters(kafka_settings, tier) for tier in tiers[:3]]
    assert [[headers[H_ATTEMPT] for _, headers in hop] for hop in hops] == [["2"], ["3"], []]
    assert dead_letters(kafka_settings, topics.deliveries_email.dlq_name) == []
    # The neighbour did not wait for the flaky one.
    assert [(e["status"], e["attempt"]) for e in grouped[neighbour["delivery_id"]]] == [("sent", 1)]
    box = wait_for(lambda: mailbox(sink_api, {flaky}), 30, "the retried message")
    assert len(box[flaky]) == 1
    assert smtp_replies(sink_api, flaky) == ["451", "451", "250"]


def test_a_record_waiting_in_a_retry_tier_survives_a_restart(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sink_api: str,
) -> None:
    """The sender is stopped while a record waits (paused partition) in the first tier; the
    next sender waits out the rest of the record's x-not-before, then sends it once."""
    flaky = address()
    fail_smtp(sink_api, flaky, 451, "4.3.0 try again later", count=1)
    request = email_request(flaky)
    delivery = request["delivery_id"]
    tier_s = 10.0
    delays = f"{int(tier_s * 1000)},1000,2000"
    publish(kafka_settings, topics.deliveries_email.name, [request])
    first = start(run_service, kafka_settings, db_settings, HERALD_RETRY_DELAYS_MS=delays)

    retried = wait_for_statuses(kafka_settings, topics, {delivery: "retrying"})
    failed_at = retried[delivery][0]["occurred_at"]
    tier = topics.deliveries_email.retry_topic_names[0]
    group = f"{kafka_settings.topic_prefix}email_sender"
    # The first sender consumed the tier's record and paused its partition at it: the
    # committed offset is the record's own (it is consumed again), not past it.
    deferred = wait_for(lambda: deferred_at(kafka_settings, group, tier), 20, "the deferral")
    assert deferred == [0]
    assert first.stop() == 0  # SIGTERM while the partition is paused
    assert (datetime.now(UTC) - failed_at).total_seconds() < tier_s  # still not due
    start(run_service, kafka_settings, db_settings, HERALD_RETRY_DELAYS_MS=delays)

    history = wait_for_statuses(kafka_settings, topics, {delivery: "sent"}, 60)[delivery]
    assert [(e["status"], e["attempt"]) for e in history] == [("retrying", 1), ("sent", 2)]
    waited = (history[1]["occurred_at"] - history[0]["occurred_at"]).total_seconds()
    assert waited >= tier_s - 0.05  # the restart did not skip the wait
    box = wait_for(lambda: mailbox(sink_api, {flaky}), 30, "the retried message")
    assert len(box[flaky]) == 1
    assert smtp_replies(sink_api, flaky) == ["451", "250"]


def deferred_at(kafka: KafkaSettings, group: str, topic: str) -> list[int]:
    """The offsets ``group`` committed on ``topic``'s partitions that hold records but were
    not consumed past their end (a deferred record's own offset)."""
    offsets = committed_and_end(kafka, group, [topic]).values()
    return [committed for committed, end in offsets if 0 <= committed < end]


def test_a_recipient_refused_permanently_goes_straight_to_the_dlq(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sink_api: str,
) -> None:
    refused = address()
    fail_smtp(sink_api, refused, 550, "5.1.1 mailbox unavailable")
    user = f"u-{uuid.uuid4().hex[:8]}"  # one partition: the neighbour comes after it
    request, neighbour = (
        email_request(refused, user_id=user),
        email_request(address(), user_id=user),
    )
    publish(kafka_settings, topics.deliveries_email.name, [request, neighbour])
    start(run_service, kafka_settings, db_settings)

    grouped = wait_for_statuses(
        kafka_settings,
        topics,
        {request["delivery_id"]: "failed", neighbour["delivery_id"]: "sent"},
    )
    (failed,) = grouped[request["delivery_id"]]  # one attempt, no retries
    assert (failed["status"], failed["attempt"], failed["error_class"]) == ("failed", 1, "smtp.5xx")
    assert "550" in failed["error_message"] and "mailbox unavailable" in failed["error_message"]
    ((parked, headers),) = dead_letters(kafka_settings, topics.deliveries_email.dlq_name)
    assert parked == request
    assert headers[H_ERROR_CLASS] == "smtp.5xx" and headers[H_ATTEMPT] == "1"
    for tier in topics.deliveries_email.retry_topic_names:
        assert dead_letters(kafka_settings, tier) == []
    assert smtp_replies(sink_api, refused) == ["550"]
    assert mailbox(sink_api, {refused}) == {}
