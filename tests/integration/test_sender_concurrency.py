"""The senders keep many sends in flight against the real stand-ins: a private SMS stand-in
and a private SMTP sink, each answering in 100 ms, so a sender sending one at a time could
never see two answers within 100 ms of each other. The assertions count overlap and
deliveries, never speed; the throughput is printed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from herald.devstack.process import free_port
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from herald.supervisor import answers
from schemas import Catalogue
from services.sms_sender.client import messages_path
from tests.integration.delivery_util import delivery_request, publish, wait_for
from tests.integration.services import ServiceProcess, service_env

pytestmark = pytest.mark.integration

LATENCY_MS = 100
COUNT = 600
CONCURRENCY = 32


def most_within(times: Sequence[float], window: float) -> int:
    """The most of ``times`` that fall within one ``window`` (seconds)."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


def report(channel: str, times: Sequence[float]) -> None:
    """Print the send rate and the overlap seen."""
    span = max(times) - min(times)
    rate = (len(times) - 1) / span if span > 0 else float("inf")
    print(
        f"{channel}: {len(times)} sends at {LATENCY_MS} ms provider latency, concurrency "
        f"{CONCURRENCY}: {rate:.0f}/s; most answers within {LATENCY_MS} ms: "
        f"{most_within(times, LATENCY_MS / 1000)}"
    )


def test_most_within_counts_overlap() -> None:
    assert most_within([0.0, 0.11, 0.22, 0.33], 0.1) == 1  # one at a time, 100+ ms each
    assert most_within([0.0, 0.01, 0.02, 0.3], 0.1) == 3


def test_the_sms_sender_keeps_many_requests_in_flight(
    local_stack: Settings,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    run_service(
        "herald.devstack.sms_standin", {}, "--port", str(port),
        "--latency-ms", str(LATENCY_MS), name="sms-standin",
    )  # fmt: skip

    wait_for(lambda: answers(f"{base}/healthz"), 30, "the private SMS stand-in")
    requests = [
        delivery_request("sms", "+4916" + f"{i:09d}", body_text=f"code {i}") for i in range(COUNT)
    ]
    publish(kafka_settings, topics.deliveries_sms.name, requests)
    metrics_port = free_port()
    env = service_env(
        kafka_settings, db_settings, SMS_API_URL=base, SMS_SENDER_METRICS_PORT=str(metrics_port),
        SMS_SENDER_CONCURRENCY=str(CONCURRENCY), SMS_SENDER_BATCH_SIZE="500",
    )  # fmt: skip
    run_service("services.sms_sender", env)
    sid = local_stack.sms.sms_account_sid
    auth = (sid, local_stack.sms.sms_auth_token)
    in_flight: list[float] = []

    def all_sent() -> list[dict[str, Any]] | None:
        # The stand-in logs no time for an accepted message: sample the sender's own gauge.
        try:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            text = ""
        for line in text.splitlines():
            if line.startswith('herald_sender_in_flight{channel="sms"}'):
                in_flight.append(float(line.rsplit(" ", 1)[1]))
        listed = httpx.get(base + messages_path(sid), auth=auth, timeout=10).json()["messages"]
        return listed if len(listed) >= COUNT else None

    started = time.monotonic()
    messages = wait_for(all_sent, 120, f"{COUNT} messages at the stand-in", interval=0.05)
    took = time.monotonic() - started
    assert len(messages) == COUNT
    assert len({m["idempotency_key"] for m in messages}) == COUNT  # each delivery once
    print(
        f"sms: {COUNT} sends at {LATENCY_MS} ms provider latency, concurrency {CONCURRENCY}: "
        f"~{COUNT / took:.0f}/s (start-up included); most in flight seen: {max(in_flight)}"
    )
    # One at a time, never more than one is in flight.
    assert max(in_flight) > 4


def test_the_email_sender_sends_on_several_smtp_connections_at_once(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    port, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    run_service(
        "herald.devstack.smtp_sink", {}, "--port", str(port), "--api-port", str(api_port),
        "--store", str(tmp_path / "sink"), "--latency-ms", str(LATENCY_MS), name="smtp-sink",
    )  # fmt: skip

    wait_for(lambda: answers(f"{api}/latency"), 30, "the private SMTP sink")
    run = uuid.uuid4().hex[:8]
    requests = [
        delivery_request("email", f"c{i}-{run}@example.test", subject=f"Hi {i}", body_text="x")
        for i in range(COUNT)
    ]
    publish(kafka_settings, topics.deliveries_email.name, requests)
    env = service_env(
        kafka_settings, db_settings, SMTP_URL=f"smtp://127.0.0.1:{port}",
        EMAIL_SENDER_METRICS_PORT="0", EMAIL_SENDER_CONCURRENCY=str(CONCURRENCY),
        EMAIL_SENDER_BATCH_SIZE="500",
    )  # fmt: skip
    run_service("services.email_sender", env)

    def all_received() -> list[dict[str, Any]] | None:
        got = httpx.get(f"{api}/messages", timeout=10).json()
        return got if len(got) >= COUNT else None

    received = wait_for(all_received, 120, f"{COUNT} emails at the sink")
    recipients = [rcpt for message in received for rcpt in message["rcpt_tos"]]
    assert sorted(recipients) == sorted(r["destination"] for r in requests)  # each once
    times = [message["received_at"] for message in received]
    report("email", times)
    assert most_within(times, LATENCY_MS / 1000) > 4
