"""The webhook and Slack senders as real processes on the real stack: Kafka in, the webhook
sink stand-in (and the example receiver) out, endpoints in PostgreSQL, statuses, retry tiers
and dead letters on the broker. Each test uses its own topics, schema and sink paths, and
looks only at its own requests on the shared sink."""

from __future__ import annotations

import base64
import hmac
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest

from herald.serde import decode
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from herald.streaming import H_ERROR_CLASS
from herald.webhooks import new_secret
from schemas import Catalogue
from tests.integration.delivery_util import (
    dead_letters,
    delivery_request,
    herald_dlq,
    publish,
    wait_for,
    wait_for_statuses,
)
from tests.integration.kafka_util import committed_to_end, poll_safely, read_all
from tests.integration.pipeline import free_port
from tests.integration.services import ServiceProcess, service_env

pytestmark = pytest.mark.integration


class Sink:
    """The webhook sink's read side and fault switch, for this test's paths only."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.paths: list[str] = []

    def path(self, kind: str = "hooks") -> str:
        path = f"/{kind}/t-{uuid.uuid4().hex[:12]}"
        self.paths.append(path)
        return path

    def url(self, path: str) -> str:
        return self.base + path

    def requests(self, path: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.base}/requests", params={"path": path}, timeout=10)
        return list(answer.raise_for_status().json())

    def respond(self, path: str, status: int, count: int | None, **extra: Any) -> None:
        body = {"path": path, "status": status, "count": count, **extra}
        httpx.post(f"{self.base}/control/respond", json=body, timeout=10).raise_for_status()

    def heal(self, path: str) -> None:
        """Answer 200 again on ``path``."""
        httpx.delete(f"{self.base}/control/respond", params={"path": path}, timeout=10)

    def clear(self) -> None:
        for path in self.paths:
            self.heal(path)
            httpx.delete(f"{self.base}/requests", params={"path": path}, timeout=10)


@pytest.fixture
def sink(local_stack: Settings) -> Iterator[Sink]:
    sink = Sink(local_stack.webhook_sink.webhook_sink_url)
    yield sink
    sink.clear()


def add_endpoint(
    database: DatabaseSettings, user_id: str, kind: str, url: str, secret: str | None
) -> None:
    with psycopg.connect(database.libpq_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{database.database_schema}"')
        conn.execute("INSERT INTO user_account (id) VALUES (%s) ON CONFLICT DO NOTHING", (user_id,))
        conn.execute(
            "INSERT INTO channel_endpoint (user_id, kind, url, secret) VALUES (%s, %s, %s, %s)",
            (user_id, kind, url, secret),
        )


def endpoint_row(database: DatabaseSettings, user_id: str, kind: str) -> tuple[Any, ...]:
    with psycopg.connect(database.libpq_url) as conn:
        conn.execute(f'SET search_path TO "{database.database_schema}"')
        row = conn.execute(
            "SELECT enabled, disabled_reason, disabled_at FROM channel_endpoint"
            " WHERE user_id = %s AND kind = %s",
            (user_id, kind),
        ).fetchone()
    assert row is not None
    return tuple(row)


def start(
    run_service: Callable[..., ServiceProcess],
    kafka: KafkaSettings,
    database: DatabaseSettings,
    kind: str = "webhook",
    **extra: str,
) -> ServiceProcess:
    module = "services.webhook_sender" + (".slack" if kind == "slack" else "")
    prefix = "SLACK_SENDER_" if kind == "slack" else "WEBHOOK_SENDER_"
    # Local mode (the sink is on loopback) unless the test says otherwise.
    env = service_env(kafka, database, HERALD_ENV="local", **{prefix + "METRICS_PORT": "0"})
    env.update(extra)
    return run_service(module, env)


def sender_caught_up(kafka: KafkaSettings, topics: Catalogue, kind: str = "webhook") -> bool:
    """Whether the sender's group has committed every record now on its deliveries topic and
    retry tiers: it commits a batch only after its sends, so a record handled twice would
    have reached the sink by then."""
    spec = topics.for_channel(kind)
    consumed = [spec.name, *spec.retry_topic_names]
    return committed_to_end(kafka, f"{kafka.topic_prefix}{kind}_sender", consumed)


def independent_verify(secret: str, headers: dict[str, str], body: str) -> bool:
    """Standard Webhooks verification written from the specification, not herald.webhooks."""
    key = base64.b64decode(secret[len("whsec_") :])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body}".encode()
    expected = base64.b64encode(hmac.new(key, signed, "sha256").digest()).decode()
    versions = [s.split(",", 1) for s in headers["webhook-signature"].split()]
    return any(v == "v1" and hmac.compare_digest(sig, expected) for v, sig in versions)


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


@contextmanager
def example_receiver(secret: str, tolerance_s: int) -> Iterator[Callable[..., int]]:
    """examples/webhook_receiver.py as a real server; yields ``post(body, headers) -> status``."""
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "examples/webhook_receiver.py", "--port", str(port),
         "--secret", secret, "--tolerance", str(tolerance_s)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip

    def post(body: str, headers: dict[str, str]) -> int:
        url = f"http://127.0.0.1:{port}/"
        return httpx.post(url, content=body.encode(), headers=headers, timeout=5).status_code

    def answering() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code > 0
        except httpx.TransportError:
            return False

    try:
        wait_for(answering, 15, "the example receiver")
        yield post
    finally:
        receiver.terminate()
        receiver.wait(10)


def test_signed_webhooks_verify_independently_and_a_late_replay_is_rejected(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sink: Sink,
) -> None:
    secret, path, owner = new_secret(), sink.path(), user()
    add_endpoint(db_settings, owner, "webhook", sink.url(path), secret)
    requests = [
        delivery_request(
            "webhook", sink.url(path), user_id=owner, subject=f"Title {i}", body_text=f"Body {i}"
        )
        for i in range(3)
    ]
    publish(kafka_settings, topics.deliveries_webhook.name, [*requests, requests[0]])
    start(run_service, kafka_settings, db_settings)

    grouped = wait_for_statuses(
        kafka_settings, topics, {r["delivery_id"]: "sent" for r in requests}
    )
    wait_for(lambda: len(sink.requests(path)) >= 3, 30, "three webhooks")
    # Every record handled (the duplicate too): a second send would be at the sink by now.
    caught_up = poll_safely(lambda: sender_caught_up(kafka_settings, topics))
    wait_for(caught_up, 30, "the sender to commit all")
    received = sink.requests(path)
    assert len(received) == 3  # the duplicate record was not sent again
    by_id = {r["headers"]["webhook-id"]: r for r in received}
    assert set(by_id) == {r["delivery_id"] for r in requests}
    for request in requests:
        got = by_id[request["delivery_id"]]
        assert got["status"] == 200
        assert independent_verify(secret, got["headers"], got["body"])
        assert not independent_verify(new_secret(), got["headers"], got["body"])
        assert abs(int(got["headers"]["webhook-timestamp"]) - got["at"]) < 5
        assert got["headers"]["content-type"] == "application/json"
        payload = json.loads(got["body"])
        assert payload["type"] == "test.sender"
        assert payload["data"]["delivery_id"] == request["delivery_id"]
        assert payload["data"]["title"] == request["subject"]
        assert payload["data"]["body"] == request["body_text"]
        (status,) = grouped[request["delivery_id"]]
        assert (status["status"], status["attempt"]) == ("sent", 1)
        assert status["provider_message_id"] == request["delivery_id"]
        assert status["provider"] == "webhook"

    # The example receiver, as a real server: the captured request is accepted within the
    # tolerance, and the same request replayed once older than the tolerance is rejected.
    captured = received[0]
    headers = {k: v for k, v in captured["headers"].items() if k.startswith("webhook-")}
    with example_receiver(secret, 300) as post:
        assert post(captured["body"], headers) == 204
        assert post(captured["body"] + " ", headers) == 401  # tampered
    with example_receiver(secret, 2) as post:
        wait_for(lambda: time.time() - int(headers["webhook-timestamp"]) > 3, 10, "3 s")
        assert post(captured["body"], headers) == 401


def test_410_disables_the_endpoint_republishes_the_user_and_later_deliveries_are_skipped(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sink: Sink,
) -> None:
    path, owner, nobody = sink.path(), user(), user()
    add_endpoint(db_settings, owner, "webhook", sink.url(path), new_secret())
    slack_url = sink.url(sink.path())
    add_endpoint(db_settings, owner, "slack", slack_url, None)
    sink.respond(path, 410, 1)
    gone = delivery_request("webhook", sink.url(path), user_id=owner)
    no_endpoint = delivery_request("webhook", "https://example.test/x", user_id=nobody)
    publish(kafka_settings, topics.deliveries_webhook.name, [gone, no_endpoint])
    start(run_service, kafka_settings, db_settings)

    grouped = wait_for_statuses(
        kafka_settings,
        topics,
        {gone["delivery_id"]: "failed", no_endpoint["delivery_id"]: "skipped"},
    )
    assert grouped[gone["delivery_id"]][-1]["error_class"] == "webhook.gone"
    assert grouped[no_endpoint["delivery_id"]][-1]["error_class"] == "endpoint.missing"
    enabled, reason, disabled_at = endpoint_row(db_settings, owner, "webhook")
    assert enabled is False and "410" in reason and disabled_at is not None
    # The user's record went out again without the disabled endpoint, so the router stops
    # routing webhook deliveries to it (its other endpoints stay).
    published = wait_for(
        lambda: [
            record
            for message in read_all(kafka_settings, topics.users.name)
            if (record := decode(message.value() or b""))["user_id"] == owner
        ],
        30,
        "the user's record republished",
    )
    assert [record["endpoints"] for record in published] == [{"slack": slack_url}]

    later = delivery_request("webhook", sink.url(path), user_id=owner)
    publish(kafka_settings, topics.deliveries_webhook.name, [later])
    grouped = wait_for_statuses(kafka_settings, topics, {later["delivery_id"]: "skipped"})
    (skipped,) = grouped[later["delivery_id"]]
    assert (skipped["error_class"], skipped["provider"]) == ("endpoint.disabled", None)
    assert [r["status"] for r in sink.requests(path)] == [410]  # nothing after the 410
    parked = {request["delivery_id"]: headers for request, headers in
              dead_letters(kafka_settings, topics.deliveries_webhook.dlq_name)}  # fmt: skip
    assert set(parked) == {gone["delivery_id"]}  # skipped deliveries are not dead letters
    assert parked[gone["delivery_id"]][H_ERROR_CLASS] == "webhook.gone"


def test_5xx_walks_the_tiers_to_the_dlq_and_a_replay_delivers_it_once(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sink: Sink,
) -> None:
    path, owner = sink.path(), user()
    add_endpoint(db_settings, owner, "webhook", sink.url(path), new_secret())
    sink.respond(path, 503, None)  # until cleared
    request = delivery_request("webhook", sink.url(path), user_id=owner, body_text="retry me")
    publish(kafka_settings, topics.deliveries_webhook.name, [request])
    start(run_service, kafka_settings, db_settings)

    delivery = request["delivery_id"]
    grouped = wait_for_statuses(kafka_settings, topics, {delivery: "dead"})
    tiers = topics.deliveries_webhook.retry_topic_names
    assert [(e["status"], e["attempt"]) for e in grouped[delivery]] == [
        *(("retrying", n) for n in range(1, len(tiers) + 1)),
        ("dead", len(tiers) + 1),
    ]
    assert {e["error_class"] for e in grouped[delivery]} == {"webhook.5xx"}
    assert [r["status"] for r in sink.requests(path)] == [503] * (len(tiers) + 1)
    ((parked, headers),) = dead_letters(kafka_settings, topics.deliveries_webhook.dlq_name)
    assert parked == request and headers[H_ERROR_CLASS] == "webhook.5xx"

    sink.heal(path)  # the endpoint recovers
    replayed = herald_dlq(kafka_settings, "replay", "--error-class", "webhook.5xx")
    assert replayed.returncode == 0, replayed.stderr
    assert "1 matched, replayed 1" in replayed.stdout

    wait_for_statuses(kafka_settings, topics, {delivery: "sent"})
    # The replayed record and anything after it handled: a second send would show by now.
    caught_up = poll_safely(lambda: sender_caught_up(kafka_settings, topics))
    wait_for(caught_up, 30, "the sender to commit all")
    answered = sink.requests(path)
    assert [r["status"] for r in answered] == [503] * (len(tiers) + 1) + [200]
    assert {r["headers"]["webhook-id"] for r in answered} == {delivery}
    events = wait_for_statuses(kafka_settings, topics, {delivery: "sent"})[delivery]
    assert [e["status"] for e in events].count("sent") == 1


def test_slack_429_retry_after_is_waited_out_or_left_to_the_retry_tier(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sink: Sink,
) -> None:
    short_path, long_path = sink.path("slack"), sink.path("slack")
    short_user, long_user = user(), user()
    add_endpoint(db_settings, short_user, "slack", sink.url(short_path), None)
    add_endpoint(db_settings, long_user, "slack", sink.url(long_path), None)
    sink.respond(short_path, 429, 1, retry_after=2)
    sink.respond(long_path, 429, 1, retry_after=120)
    short = delivery_request(
        "slack", sink.url(short_path), user_id=short_user, subject="Hi <you>", body_text="body"
    )
    long = delivery_request("slack", sink.url(long_path), user_id=long_user, body_text="later")
    publish(kafka_settings, topics.deliveries_slack.name, [short, long])
    start(run_service, kafka_settings, db_settings, kind="slack")

    grouped = wait_for_statuses(
        kafka_settings, topics, {short["delivery_id"]: "sent", long["delivery_id"]: "sent"}
    )
    # 2 s: waited out within the attempt (one status, attempt 1).
    assert [(e["status"], e["attempt"]) for e in grouped[short["delivery_id"]]] == [("sent", 1)]
    first, second = sink.requests(short_path)
    assert (first["status"], second["status"]) == (429, 200)
    assert second["at"] - first["at"] >= 1.9
    payload = json.loads(second["body"])
    assert payload["blocks"] == [
        {"type": "section", "text": {"type": "mrkdwn", "text": "*Hi &lt;you&gt;*\nbody"}}
    ]
    assert "webhook-signature" not in second["headers"]
    # 120 s: longer than the wait allowed (10 s), so the first retry tier takes it.
    history = grouped[long["delivery_id"]]
    assert [(e["status"], e["attempt"]) for e in history] == [("retrying", 1), ("sent", 2)]
    assert history[0]["error_class"] == "slack.rate_limited"
    assert {e["provider"] for e in history} == {"slack"}
    assert "Retry-After: 120" in history[0]["error_message"]
    assert [r["status"] for r in sink.requests(long_path)] == [429, 200]


def test_private_addresses_are_refused_at_send_time_outside_local_mode(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sink: Sink,
) -> None:
    path, loopback_user, private_user = sink.path(), user(), user()
    # Registered while local mode allowed them (or written straight to the table): the
    # sender checks again before every send.
    add_endpoint(db_settings, loopback_user, "webhook", sink.url(path), new_secret())
    add_endpoint(db_settings, private_user, "webhook", "http://10.0.0.1/hook", new_secret())
    to_loopback = delivery_request("webhook", sink.url(path), user_id=loopback_user)
    to_private = delivery_request("webhook", "http://10.0.0.1/hook", user_id=private_user)
    publish(kafka_settings, topics.deliveries_webhook.name, [to_loopback, to_private])
    start(run_service, kafka_settings, db_settings, HERALD_ENV="production")

    grouped = wait_for_statuses(
        kafka_settings,
        topics,
        {to_loopback["delivery_id"]: "failed", to_private["delivery_id"]: "failed"},
    )
    for request, address in ((to_loopback, "127.0.0.1"), (to_private, "10.0.0.1")):
        (status,) = grouped[request["delivery_id"]]
        assert status["error_class"] == "endpoint.blocked"
        assert address in status["error_message"]
    assert sink.requests(path) == []
