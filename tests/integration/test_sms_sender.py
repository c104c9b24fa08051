"""The SMS sender as a real process on the real stack: Kafka in, the SMS provider stand-in
out, statuses, dead letters and retry tiers on the broker. Every test uses its own topics,
schema and phone numbers and looks only at its own messages on the shared stand-in (whose
global fault switch is left alone: other tests share it)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from herald.settings import DatabaseSettings, KafkaSettings, Settings
from herald.streaming import H_ERROR_CLASS, H_ERROR_MESSAGE, H_ORIGINAL_TOPIC
from schemas import Catalogue
from services.sms_sender.client import messages_path
from tests.integration.delivery_util import (
    dead_letters,
    delivery_request,
    publish,
    wait_for,
    wait_for_statuses,
)
from tests.integration.services import ServiceProcess, service_env

pytestmark = pytest.mark.integration

SERVICE = "services.sms_sender"


def phone() -> str:
    """A unique E.164 number (15 digits) that the stand-in accepts."""
    return "+4915" + f"{uuid.uuid4().int % 10**10:010d}"


def sms_request(to: str, body: str | None = None, **changes: Any) -> dict[str, Any]:
    return delivery_request("sms", to, body_text=body or f"Code for {to}: 123456", **changes)


class Provider:
    """The SMS stand-in's read side, filtered to this test's numbers and deliveries."""

    def __init__(self, settings: Settings) -> None:
        self.base = settings.sms.sms_api_url
        self.list_url = self.base + messages_path(settings.sms.sms_account_sid)
        self.auth = (settings.sms.sms_account_sid, settings.sms.sms_auth_token)

    def messages(self, numbers: set[str]) -> dict[str, list[dict[str, Any]]]:
        listed = httpx.get(self.list_url, auth=self.auth, timeout=10).raise_for_status().json()
        found: dict[str, list[dict[str, Any]]] = {}
        for message in listed["messages"]:
            if message["to"] in numbers:
                found.setdefault(message["to"], []).append(message)
        return found

    def requests_for(self, delivery_id: str) -> list[dict[str, Any]]:
        log = httpx.get(f"{self.base}/control/log", timeout=10).raise_for_status().json()
        return [entry for entry in log if entry.get("key") == delivery_id]


@pytest.fixture
def provider(local_stack: Settings) -> Provider:
    return Provider(local_stack)


def start(
    run_service: Callable[..., ServiceProcess],
    kafka: KafkaSettings,
    database: DatabaseSettings,
    **extra: str,
) -> ServiceProcess:
    env = service_env(kafka, database, SMS_SENDER_METRICS_PORT="0", **extra)
    return run_service(SERVICE, env)


def test_sends_each_delivery_once_in_at_most_the_allowed_segments(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    provider: Provider,
) -> None:
    short = [sms_request(phone()) for _ in range(3)]
    long = sms_request(phone(), "Your parcel is on its way. " * 30)  # 810 characters
    # The same delivery twice (a replay): the provider must see it once.
    publish(kafka_settings, topics.deliveries_sms.name, [*short, long, short[0]])
    start(run_service, kafka_settings, db_settings, SMS_SENDER_MAX_SEGMENTS="2")

    everything = [*short, long]
    grouped = wait_for_statuses(
        kafka_settings, topics, {r["delivery_id"]: "sent" for r in everything}
    )
    numbers = {r["destination"] for r in everything}
    found = wait_for(
        lambda: got if len(got := provider.messages(numbers)) == len(numbers) else None,
        30,
        "every SMS at the provider",
    )
    for request in everything:
        (message,) = found[request["destination"]]  # exactly one each
        assert message["idempotency_key"] == request["delivery_id"]
        (status,) = grouped[request["delivery_id"]]
        assert (status["status"], status["attempt"]) == ("sent", 1)
        assert status["provider_message_id"] == message["sid"]
    for request in short:
        assert found[request["destination"]][0]["body"] == request["body_text"]
        assert found[request["destination"]][0]["num_segments"] == "1"
    (cut,) = found[long["destination"]]
    assert cut["num_segments"] == "2"
    assert cut["body"].endswith("...") and 290 < len(cut["body"]) <= 306
    assert long["body_text"].startswith(cut["body"][:-3])
    assert len(provider.requests_for(short[0]["delivery_id"])) == 1


def test_invalid_numbers_fail_to_the_dlq_and_neighbours_are_sent(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    provider: Provider,
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"  # one user: one partition, so order is kept
    before = sms_request(phone(), user_id=user)
    not_e164 = sms_request("0151 2345 6789", user_id=user)  # refused before any request
    too_short = sms_request(f"+9{uuid.uuid4().int % 10**5:05d}", user_id=user)  # by the provider
    after = sms_request(phone(), user_id=user)
    publish(kafka_settings, topics.deliveries_sms.name, [before, not_e164, too_short, after])
    start(run_service, kafka_settings, db_settings)

    grouped = wait_for_statuses(
        kafka_settings,
        topics,
        {
            before["delivery_id"]: "sent",
            not_e164["delivery_id"]: "failed",
            too_short["delivery_id"]: "failed",
            after["delivery_id"]: "sent",
        },
    )
    assert grouped[not_e164["delivery_id"]][-1]["error_class"] == "sms.invalid_number"
    provider_refusal = grouped[too_short["delivery_id"]][-1]
    assert provider_refusal["error_class"] == "sms.4xx"
    assert "21211" in provider_refusal["error_message"]
    dlq = {request["delivery_id"]: headers for request, headers in
           dead_letters(kafka_settings, topics.deliveries_sms.dlq_name)}  # fmt: skip
    assert set(dlq) == {not_e164["delivery_id"], too_short["delivery_id"]}
    assert dlq[not_e164["delivery_id"]][H_ERROR_CLASS] == "sms.invalid_number"
    assert "21211" in dlq[too_short["delivery_id"]][H_ERROR_MESSAGE]
    assert provider.requests_for(not_e164["delivery_id"]) == []
    assert [e["status"] for e in provider.requests_for(too_short["delivery_id"])] == [400]
    found = provider.messages({before["destination"], after["destination"]})
    assert {number: len(messages) for number, messages in found.items()} == {
        before["destination"]: 1,
        after["destination"]: 1,
    }


def test_unreachable_provider_is_retried_then_dead_lettered(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    request = sms_request(phone())
    publish(kafka_settings, topics.deliveries_sms.name, [request])
    service = start(
        run_service, kafka_settings, db_settings, SMS_API_URL=f"http://127.0.0.1:{closed_port}"
    )

    grouped = wait_for_statuses(kafka_settings, topics, {request["delivery_id"]: "dead"})
    tiers = topics.deliveries_sms.retry_topic_names
    history = grouped[request["delivery_id"]]
    assert [(e["status"], e["attempt"]) for e in history] == [
        *(("retrying", n) for n in range(1, len(tiers) + 1)),
        ("dead", len(tiers) + 1),
    ]
    assert {e["error_class"] for e in history} == {"sms.unreachable"}
    ((parked, headers),) = dead_letters(kafka_settings, topics.deliveries_sms.dlq_name)
    assert parked == request
    assert headers[H_ERROR_CLASS] == "sms.unreachable"
    assert headers[H_ORIGINAL_TOPIC] == topics.deliveries_sms.name
    for tier in tiers:
        assert len(dead_letters(kafka_settings, tier)) == 1
    assert service.running()
