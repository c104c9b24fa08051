"""Provider failover on the real stack: the SMS sender with the local stack's two SMS stand-ins
(sms-a on SMS_API_URL, sms-b), the email sender with two SMTP sinks, statuses on Kafka and the
provider of each attempt in the read API.

The shared SMS stand-in's faults are scoped to this test's number prefix; the email test's
primary relay is an SMTP sink of its own (its faults are global to it), the secondary the
local stack's smtp-b."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from herald.auth import LOCAL_ADMIN_API_KEY
from herald.devstack.components import SmsB, SmtpB
from herald.devstack.process import free_ports
from herald.serde import encode
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from herald.streaming import producer_config
from schemas import Catalogue
from tests.integration.delivery_util import (
    delivery_request,
    publish,
    statuses_by_delivery,
    wait_for,
    wait_for_statuses,
)
from tests.integration.pipeline import free_port
from tests.integration.services import ServiceProcess, service_env
from tests.integration.test_failures import SmsProvider, SmtpSink, sms_requests

pytestmark = pytest.mark.integration

#: Back-offs short enough for a test: a failing provider is probed every 1-2 s.
FAST_FAILOVER = {
    "PROVIDER_BREAKER_FAILURES": "5",
    "PROVIDER_BACKOFF_SECONDS": "1",
    "PROVIDER_BACKOFF_MAX_SECONDS": "2",
}


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample of a sender's /metrics, or None."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            series, value = line.rsplit(" ", 1)
            got = ",".join(sorted(series[len(name) + 1 : -1].split(",")))
            if got == wanted:
                return float(value)
    return None


def sent_by(kafka: KafkaSettings, topics: Catalogue, ids: set[str]) -> dict[str, list[str]]:
    """delivery id -> the provider of each ``sent`` status event it has."""
    grouped = statuses_by_delivery(kafka, topics)
    return {i: [e["provider"] for e in grouped.get(i, []) if e["status"] == "sent"] for i in ids}


def test_sms_fails_over_to_the_secondary_and_returns_to_the_primary(
    local_stack: Settings,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    primary = SmsProvider(local_stack)
    secondary_url = SmsB(local_stack).address
    secondary = SmsProvider(
        local_stack.model_copy(
            update={"sms": local_stack.sms.model_copy(update={"sms_api_url": secondary_url})}
        )
    )
    secondary.prefix = primary.prefix  # this test's numbers, on both stand-ins
    read_port, metrics_port = free_port(), free_port()
    env = service_env(
        kafka_settings,
        db_settings,
        SMS_API_FALLBACK_URLS=secondary_url,
        SMS_SENDER_METRICS_PORT=str(metrics_port),
        INAPP_STORE_METRICS_PORT="0",
        HERALD_READ_API_PORT=str(read_port),
        **{f"SMS_SENDER_{key}": value for key, value in FAST_FAILOVER.items()},
    )
    run_service("services.inapp_store", env)
    run_service("services.inapp_store.api", env)
    primary.fail(503)
    try:
        requests = sms_requests(primary, 1_000)
        ids = {r["delivery_id"] for r in requests}
        # One of them is also an inbox notification, so the read API shows its history.
        shown = requests[0]
        notification = {
            "notification_id": shown["notification_id"],
            "event_id": shown["event_id"],
            "user_id": shown["user_id"],
            "event_type": shown["event_type"],
            "title": "Your code",
            "message": shown["body_text"],
            "channels": ["sms"],
            "metadata": {},
            "created_at": datetime.now(UTC),
        }
        producer = Producer(producer_config(kafka_settings))
        producer.produce(
            topics.notifications.name,
            key=shown["user_id"],
            value=encode("herald.Notification", notification),
        )
        assert producer.flush(30) == 0
        publish(kafka_settings, topics.deliveries_sms.name, requests)

        started = time.monotonic()
        run_service("services.sms_sender", env)

        def at_secondary() -> int:
            return sum(secondary.created().values())

        wait_for(lambda: at_secondary() >= 990, 30, "99 % of 1,000 SMS through sms-b", 0.5)
        ninety_nine = time.monotonic() - started
        wait_for(lambda: at_secondary() >= 1_000, 30, "all 1,000 SMS through sms-b", 0.5)
        everything = time.monotonic() - started
        print(
            f"failover: 990 SMS via sms-b after {ninety_nine:.1f} s, 1,000 after {everything:.1f} s"
        )

        # None sent twice across the two providers: the primary created none (it refused
        # them all), the secondary each exactly once.
        assert secondary.created() == dict.fromkeys(ids, 1)
        assert primary.created() == {}
        # The primary was skipped once its breaker opened: only a few tries and probes.
        tried_primary = len(primary.requests())
        print(f"requests the failing primary got meanwhile: {tried_primary}")
        assert tried_primary < 100
        providers = wait_for(
            lambda: got if all((got := sent_by(kafka_settings, topics, ids)).values()) else None,
            60,
            "a sent status for every SMS",
            1.0,
        )
        assert {i: p for i, p in providers.items() if p != ["sms-b"]} == {}
        assert metric(metrics_port, "herald_sender_provider_active", channel="sms",
                      provider="sms-b") == 1.0  # fmt: skip
        assert (metric(metrics_port, "herald_sender_provider_failures_total", channel="sms",
                       provider="sms-a") or 0) >= 5  # fmt: skip
    finally:
        primary.recover()

    # The primary recovers: a probe (within its 2 s back-off) finds it answering and the
    # traffic returns to it.
    time.sleep(2.5)
    first = [delivery_request("sms", primary.number(1_000 + i), body_text=f"Back {i}")
             for i in range(20)]  # fmt: skip
    publish(kafka_settings, topics.deliveries_sms.name, first)
    wait_for_statuses(kafka_settings, topics, {r["delivery_id"]: "sent" for r in first})
    later = [delivery_request("sms", primary.number(2_000 + i), body_text=f"Later {i}")
             for i in range(200)]  # fmt: skip
    publish(kafka_settings, topics.deliveries_sms.name, later)
    wait_for_statuses(kafka_settings, topics, {r["delivery_id"]: "sent" for r in later})
    later_ids = {r["delivery_id"] for r in later}
    assert set(primary.created()) >= later_ids
    assert not later_ids & set(secondary.created())
    back = sent_by(kafka_settings, topics, later_ids)
    assert {i: p for i, p in back.items() if p != ["sms-a"]} == {}
    wait_for(lambda: metric(metrics_port, "herald_sender_provider_active", channel="sms",
                            provider="sms-a") == 1.0, 10, "sms-a active again")  # fmt: skip
    # Still nothing twice across the two: every delivery at exactly one of them, once.
    both = primary.created() + secondary.created()
    assert both == dict.fromkeys(ids | {r["delivery_id"] for r in first} | later_ids, 1)

    # The read API's status history names the provider of each attempt.
    def history() -> dict[str, Any] | None:
        response = httpx.get(
            f"http://127.0.0.1:{read_port}/v1/users/{shown['user_id']}/notifications/"
            f"{shown['notification_id']}",
            headers={"X-API-Key": LOCAL_ADMIN_API_KEY},
            timeout=10,
        )
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body if body["deliveries"] else None

    detail = wait_for(history, 60, "the notification's delivery history in the read API", 1.0)
    (delivery,) = detail["deliveries"]
    assert (delivery["channel"], delivery["status"], delivery["provider"]) == (
        "sms",
        "sent",
        "sms-b",
    )
    assert [(a["status"], a["provider"]) for a in delivery["attempts"]] == [("sent", "sms-b")]


def test_email_fails_over_to_the_second_relay_and_returns(
    local_stack: Settings,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    # The primary relay: an SMTP sink of this test's own, so its faults disturb nobody.
    (port,) = free_ports(1, pairs=1)
    api = f"http://127.0.0.1:{port + 1}"
    store = str(tmp_path / "primary")
    run_service("herald.devstack.smtp_sink", {}, "--port", str(port), "--api-port",
                str(port + 1), "--store", store, name="smtp-primary")  # fmt: skip

    def primary_up() -> bool:
        try:
            return httpx.get(f"{api}/messages", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(primary_up, 30, "the primary SMTP sink")
    httpx.post(f"{api}/faults", json={"code": 451, "message": "try later", "count": None},
               timeout=10).raise_for_status()  # fmt: skip
    secondary = SmtpSink(local_stack)
    secondary.api = f"http://127.0.0.1:{SmtpB(local_stack).api_port}"
    primary = SmtpSink(local_stack)
    primary.api = api

    run = uuid.uuid4().hex[:8]

    def emails(tag: str, count: int) -> list[dict[str, Any]]:
        return [
            delivery_request("email", f"{tag}{i}-{run}@example.test", subject=f"Failover {i}",
                             body_text=f"Message {i}")
            for i in range(count)
        ]  # fmt: skip

    down = emails("down", 40)
    publish(kafka_settings, topics.deliveries_email.name, down)
    env = service_env(
        kafka_settings,
        db_settings,
        SMTP_URL=f"smtp://127.0.0.1:{port}",
        SMTP_FALLBACK_URLS=SmtpB(local_stack).url,
        EMAIL_SENDER_METRICS_PORT="0",
        EMAIL_SENDER_CONCURRENCY="8",
        **{f"EMAIL_SENDER_{key}": value for key, value in FAST_FAILOVER.items()},
    )
    run_service("services.email_sender", env)
    wait_for_statuses(kafka_settings, topics, {r["delivery_id"]: "sent" for r in down})
    down_to = {r["destination"] for r in down}
    assert secondary.received(down_to) == dict.fromkeys(down_to, 1)
    assert primary.received(down_to) == {}
    ids = {r["delivery_id"] for r in down}
    assert set(Counter(p for ps in sent_by(kafka_settings, topics, ids).values()
                       for p in ps)) == {"smtp-b"}  # fmt: skip

    httpx.delete(f"{api}/faults", timeout=10).raise_for_status()
    time.sleep(2.5)
    probe = emails("probe", 3)
    publish(kafka_settings, topics.deliveries_email.name, probe)
    wait_for_statuses(kafka_settings, topics, {r["delivery_id"]: "sent" for r in probe})
    back = emails("back", 40)
    publish(kafka_settings, topics.deliveries_email.name, back)
    wait_for_statuses(kafka_settings, topics, {r["delivery_id"]: "sent" for r in back})
    back_to = {r["destination"] for r in back}
    assert primary.received(back_to) == dict.fromkeys(back_to, 1)
    assert secondary.received(back_to) == {}
    back_ids = {r["delivery_id"] for r in back}
    assert {i: p for i, p in sent_by(kafka_settings, topics, back_ids).items()
            if p != ["smtp-a"]} == {}  # fmt: skip
    # Each email once, across both relays.
    everyone = down_to | back_to | {r["destination"] for r in probe}
    assert primary.received(everyone) + secondary.received(everyone) == dict.fromkeys(everyone, 1)
