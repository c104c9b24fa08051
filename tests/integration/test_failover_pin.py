"""The provider pin survives a sender restart, on the real broker with two real SMS stand-ins.

The SMS sender sends through sms-a then sms-b (two private ``herald.devstack.sms_standin``
processes, so that their latency and faults disturb no other test). sms-a answers only after
the sender's timeout, but takes the message: the outcome is unknown, so the delivery is pinned
to sms-a. The sender is SIGKILLed while the retry waits on its tier, and a new sender (empty
memory) takes the retry while sms-a refuses its next request with a 503: an unpinned delivery
would fall through to sms-b and the phone would get the SMS twice. With the pin on the record
(``x-provider-pin``) the retry stays on sms-a, which de-duplicates it on the idempotency key:
one SMS across the two stand-ins' message lists.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from herald.devstack.process import free_ports
from herald.headers import H_PROVIDER_PIN, read_headers
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from schemas import Catalogue
from services.sms_sender.client import messages_path
from tests.integration.delivery_util import (
    delivery_request,
    publish,
    statuses_by_delivery,
    wait_for,
    wait_for_statuses,
)
from tests.integration.kafka_util import committed_to_end, poll_safely, read_all
from tests.integration.services import ServiceProcess, service_env

pytestmark = pytest.mark.integration

#: The sender gives up on an answer after this long...
HTTP_TIMEOUT_SECONDS = 1
#: ...and sms-a answers (having taken the message) only after this long.
SLOW_MS = 2_500


class StandIn:
    """One private SMS stand-in process: its message list, request log and controls."""

    def __init__(self, port: int, settings: Settings) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.auth = (settings.sms.sms_account_sid, settings.sms.sms_auth_token)
        self.list_url = self.base + messages_path(settings.sms.sms_account_sid)

    def up(self) -> bool:
        try:
            return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def latency(self, ms: int) -> None:
        httpx.post(f"{self.base}/control/latency", json={"ms": ms}, timeout=10).raise_for_status()

    def fail(self, status: int, count: int) -> None:
        fault = {"status": status, "count": count}
        httpx.post(f"{self.base}/control/fail", json=fault, timeout=10).raise_for_status()

    def created(self) -> Counter[str]:
        """Messages created (really sent), per idempotency key (the delivery id)."""
        listed = httpx.get(self.list_url, auth=self.auth, timeout=10).raise_for_status().json()
        return Counter(m["idempotency_key"] for m in listed["messages"])

    def requests(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.base}/control/log", timeout=10).raise_for_status().json())


def test_a_pinned_sms_stays_on_its_provider_across_a_sender_restart(
    local_stack: Settings,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    port_a, port_b = free_ports(2)
    for name, port in (("sms-a", port_a), ("sms-b", port_b)):
        run_service("herald.devstack.sms_standin", {}, "--port", str(port), name=name)
    a, b = StandIn(port_a, local_stack), StandIn(port_b, local_stack)
    wait_for(lambda: a.up() and b.up(), 30, "the two SMS stand-ins")
    a.latency(SLOW_MS)

    sms = delivery_request("sms", f"+4917{random.randrange(10**8):08d}", body_text="Code 4711")
    delivery_id = sms["delivery_id"]
    env = service_env(
        kafka_settings,
        db_settings,
        SMS_API_URL=a.base,
        SMS_API_FALLBACK_URLS=b.base,
        SMS_SENDER_METRICS_PORT="0",
        SMS_SENDER_HTTP_TIMEOUT_SECONDS=str(HTTP_TIMEOUT_SECONDS),
        # The first retry waits long enough for the first sender to be killed before it.
        HERALD_RETRY_DELAYS_MS="8000,1000,1000",
    )
    publish(kafka_settings, topics.deliveries_sms.name, [sms])
    first = run_service("services.sms_sender", env, name="sms-sender-1")

    # The timeout: a retrying status naming sms-a, and the retry record pinned to it.
    def timed_out() -> dict[str, Any] | None:
        events = statuses_by_delivery(kafka_settings, topics).get(delivery_id, [])
        return next((e for e in events if e["status"] == "retrying"), None)

    wait_for(poll_safely(lambda: timed_out() is not None), 60, "the timeout on sms-a")
    event = timed_out()
    assert event is not None
    assert (event["provider"], event["error_class"], event["attempt"]) == (
        "sms-a",
        "sms.timeout",
        1,
    )
    retry_topic = topics.deliveries_sms.retry_topic_names[0]
    (retry,) = wait_for(lambda: read_all(kafka_settings, retry_topic), 30, "the retry record")
    assert read_headers(retry.headers()).provider_pin == "sms-a", retry.headers()
    # sms-a did take the message, after the sender stopped waiting.
    wait_for(lambda: a.created() == {delivery_id: 1}, 30, "sms-a to have taken the SMS")
    # Offsets committed past the source record (else the restarted sender would read the
    # record without a pin again), then the sender dies before the retry is due.
    group = f"{kafka_settings.topic_prefix}sms_sender"
    wait_for(
        poll_safely(lambda: committed_to_end(kafka_settings, group, [topics.deliveries_sms.name])),
        30,
        "the first sender's commit",
    )
    first.stop(sig=signal.SIGKILL)
    assert a.created() == {delivery_id: 1} and b.created() == {}, "sent before the restart"

    # sms-a answers quickly again but refuses the next request (an error answer: certain,
    # so an unpinned delivery would fall through to sms-b at once).
    a.latency(0)
    a.fail(503, count=1)
    restarted = time.monotonic()
    run_service("services.sms_sender", env, name="sms-sender-2")
    wait_for_statuses(kafka_settings, topics, {delivery_id: "sent"}, timeout=90)
    print(f"sent {time.monotonic() - restarted:.1f} s after the restart")

    events = statuses_by_delivery(kafka_settings, topics)[delivery_id]
    assert [(e["status"], e["provider"], e["error_class"]) for e in events] == [
        ("retrying", "sms-a", "sms.timeout"),
        ("retrying", "sms-a", "sms.5xx"),  # the 503: no fall-through for a pinned delivery
        ("sent", "sms-a", None),
    ]
    # One SMS across the two providers: sms-a created it once (the resend was de-duplicated
    # on the idempotency key), sms-b was never asked.
    assert a.created() == {delivery_id: 1}
    assert b.created() == {} and b.requests() == []
    duplicates = [r for r in a.requests() if r.get("duplicate")]
    assert [r["key"] for r in duplicates] == [delivery_id]
    # The second retry record carried the pin too.
    tier2 = read_all(kafka_settings, topics.deliveries_sms.retry_topic_names[1])
    assert [dict(r.headers() or []).get(H_PROVIDER_PIN) for r in tier2] == [b"sms-a"]
