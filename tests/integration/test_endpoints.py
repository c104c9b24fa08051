"""Webhook and Slack endpoints: the admin API (``/v1/users/{id}/endpoints``) against real
PostgreSQL and Kafka, its SSRF refusals, and the router routing the two channels from the user
record the API republishes.

The ingest app runs in-process (TestClient) on this test's topics and schema; the router runs
as a real process on the same topics.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from herald import demo
from herald.identity import notification_id
from herald.netguard import ALLOW_PRIVATE_ENV
from herald.serde import decode
from herald.settings import DatabaseSettings, KafkaSettings
from schemas import Catalogue
from tests.integration.delivery_util import statuses, wait_for
from tests.integration.kafka_util import read_all
from tests.integration.pipeline import Pipeline
from tests.integration.services import ServiceProcess, service_env
from tests.integration.test_ingest import (
    assert_problem,
    create_event_type,
    execute,
    make_client,
    records,
    rows,
)

pytestmark = pytest.mark.integration

HOOK = "https://hooks.example.com/herald"
SLACK = "https://hooks.slack.com/services/T000/B000/XXXX"


@pytest.fixture
def client(
    kafka_settings: KafkaSettings, topics: Catalogue, db_settings: DatabaseSettings
) -> Iterator[TestClient]:
    yield from make_client(kafka_settings, db_settings)


@pytest.fixture(autouse=True)
def not_local(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside local mode unless a test says otherwise (the shell may have HERALD_ENV=local)."""
    monkeypatch.delenv("HERALD_ENV", raising=False)
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)


def new_user(client: TestClient, name: str = "ada") -> str:
    user_id = f"{name}-{uuid.uuid4().hex[:8]}"
    response = client.put(f"/v1/users/{user_id}", json={"email": f"{user_id}@example.test"})
    assert response.status_code == 201, response.text
    return user_id


def published_endpoints(kafka: KafkaSettings, topics: Catalogue, user_id: str) -> dict[str, str]:
    """The ``endpoints`` of the user's latest record on the users topic."""
    mine = [value for key, value in records(kafka, topics.users.name) if key == user_id]
    assert mine, f"no record of {user_id} on {topics.users.name}"
    endpoints: dict[str, str] = mine[-1]["endpoints"]
    return endpoints


def stored(db: DatabaseSettings, user_id: str) -> dict[str, dict[str, Any]]:
    found = rows(db, "select * from channel_endpoint where user_id = %s", user_id)
    return {row["kind"]: row for row in found}


# --- the API ----------------------------------------------------------------------------------


def test_register_list_replace_and_delete_endpoints(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    ada = new_user(client)
    assert published_endpoints(kafka_settings, topics, ada) == {}

    created = client.put(f"/v1/users/{ada}/endpoints/webhook", json={"url": HOOK})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["kind"], body["url"], body["enabled"], body["signed"]) == (
        "webhook",
        HOOK,
        True,
        True,
    )
    secret = body["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24
    assert stored(db_settings, ada)["webhook"]["secret"] == secret
    assert published_endpoints(kafka_settings, topics, ada) == {"webhook": HOOK}

    slack = client.put(f"/v1/users/{ada}/endpoints/slack", json={"url": SLACK})
    assert slack.status_code == 201, slack.text
    assert (slack.json()["secret"], slack.json()["signed"]) == (None, False)
    assert published_endpoints(kafka_settings, topics, ada) == {"webhook": HOOK, "slack": SLACK}

    # The secret is shown once: never in a listing.
    listing = client.get(f"/v1/users/{ada}/endpoints")
    assert listing.status_code == 200, listing.text
    assert [e["kind"] for e in listing.json()] == ["slack", "webhook"]
    assert secret not in listing.text and all("secret" not in e for e in listing.json())

    # A new URL keeps the secret (and does not show it); rotating or giving one replaces it.
    moved = client.put(f"/v1/users/{ada}/endpoints/webhook", json={"url": HOOK + "/v2"})
    assert moved.status_code == 200 and moved.json()["secret"] is None, moved.text
    assert stored(db_settings, ada)["webhook"]["secret"] == secret
    rotated = client.put(
        f"/v1/users/{ada}/endpoints/webhook", json={"url": HOOK, "rotate_secret": True}
    ).json()["secret"]
    assert rotated.startswith("whsec_") and rotated != secret
    given = "whsec_" + base64.b64encode(b"k" * 32).decode()
    response = client.put(f"/v1/users/{ada}/endpoints/webhook", json={"url": HOOK, "secret": given})
    assert response.json()["secret"] == given
    assert stored(db_settings, ada)["webhook"]["secret"] == given

    # Contact data changes republish the user with its endpoints.
    response = client.put(f"/v1/users/{ada}", json={"email": "new@example.test"})
    assert response.status_code == 200, response.text
    assert published_endpoints(kafka_settings, topics, ada) == {"webhook": HOOK, "slack": SLACK}

    deleted = client.delete(f"/v1/users/{ada}/endpoints/slack")
    assert deleted.status_code == 204, deleted.text
    assert stored(db_settings, ada).keys() == {"webhook"}
    assert published_endpoints(kafka_settings, topics, ada) == {"webhook": HOOK}
    assert client.delete(f"/v1/users/{ada}/endpoints/slack").status_code == 204  # idempotent


def test_a_disabled_endpoint_leaves_the_user_record_and_a_put_enables_it_again(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
) -> None:
    bo = new_user(client, "bo")
    secret = client.put(f"/v1/users/{bo}/endpoints/webhook", json={"url": HOOK}).json()["secret"]
    # What the webhook sender does when the endpoint answers 410 Gone.
    execute(
        db_settings,
        "update channel_endpoint set enabled = false, disabled_reason = 'HTTP 410 Gone',"
        " disabled_at = now() where user_id = %s",
        bo,
    )
    [listed] = client.get(f"/v1/users/{bo}/endpoints").json()
    assert (listed["enabled"], listed["disabled_reason"]) == (False, "HTTP 410 Gone")
    client.put(f"/v1/users/{bo}", json={"email": f"{bo}@example.test"}).raise_for_status()
    assert published_endpoints(kafka_settings, topics, bo) == {}

    again = client.put(f"/v1/users/{bo}/endpoints/webhook", json={"url": HOOK})
    assert again.status_code == 200, again.text
    assert (again.json()["enabled"], again.json()["disabled_reason"]) == (True, None)
    row = stored(db_settings, bo)["webhook"]
    assert (row["enabled"], row["disabled_at"], row["secret"]) == (True, None, secret)
    assert published_endpoints(kafka_settings, topics, bo) == {"webhook": HOOK}


def test_refusals(client: TestClient, db_settings: DatabaseSettings) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    assert_problem(client.put(f"/v1/users/{ghost}/endpoints/webhook", json={"url": HOOK}), 404)
    assert_problem(client.get(f"/v1/users/{ghost}/endpoints"), 404)
    assert_problem(client.delete(f"/v1/users/{ghost}/endpoints/webhook"), 404)
    cy = new_user(client, "cy")
    assert client.put(f"/v1/users/{cy}/endpoints/teams", json={"url": HOOK}).status_code == 422
    assert_problem(
        client.put(f"/v1/users/{cy}/endpoints/slack", json={"url": SLACK, "secret": "whsec_x"}),
        422,
        "a Slack endpoint has no secret",
    )
    assert_problem(
        client.put(f"/v1/users/{cy}/endpoints/webhook", json={"url": HOOK, "secret": "s3cret"}),
        422,
        "must start with 'whsec_'",
    )
    for url, phrase in [
        ("ftp://hooks.example.com/x", "must start with https://"),
        ("https://user:pw@hooks.example.com/", "user name or password"),
    ]:
        assert_problem(
            client.put(f"/v1/users/{cy}/endpoints/webhook", json={"url": url}), 422, phrase
        )
    too_long = {"url": "https://hooks.example.com/" + "a" * 2048}
    assert client.put(f"/v1/users/{cy}/endpoints/webhook", json=too_long).status_code == 422
    assert stored(db_settings, cy) == {}


@pytest.mark.parametrize("environment", [None, "production"])
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/x", "http://10.0.0.1/", "http://localhost:8080/", "http://[::1]/"]
)
def test_internal_addresses_are_refused_outside_local_mode(
    client: TestClient,
    db_settings: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
    environment: str | None,
    url: str,
) -> None:
    if environment is not None:
        monkeypatch.setenv("HERALD_ENV", environment)
    dee = new_user(client, "dee")
    for kind in ("webhook", "slack"):
        body = assert_problem(
            client.put(f"/v1/users/{dee}/endpoints/{kind}", json={"url": url}),
            422,
            "endpoints must be public",
        )
        assert body["type"].endswith("endpoint-not-allowed")
    assert stored(db_settings, dee) == {}


def test_internal_addresses_are_accepted_in_local_mode(
    client: TestClient,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HERALD_ENV", "local")
    eve = new_user(client, "eve")
    for kind, url in (("webhook", "http://127.0.0.1/x"), ("slack", "http://10.0.0.1/")):
        response = client.put(f"/v1/users/{eve}/endpoints/{kind}", json={"url": url})
        assert response.status_code == 201, response.text
    assert published_endpoints(kafka_settings, topics, eve) == {
        "webhook": "http://127.0.0.1/x",
        "slack": "http://10.0.0.1/",
    }


# --- routing ----------------------------------------------------------------------------------


def deliveries(kafka: KafkaSettings, topic: str) -> list[dict[str, Any]]:
    return [decode(m.value() or b"", "herald.DeliveryRequest") for m in read_all(kafka, topic)]


def test_the_router_routes_webhook_and_slack_to_users_with_endpoints(
    client: TestClient,
    kafka_settings: KafkaSettings,
    db_settings: DatabaseSettings,
    topics: Catalogue,
    run_service: Callable[..., ServiceProcess],
) -> None:
    create_event_type(
        client,
        "comment.created",
        channels=["inapp", "webhook", "slack"],
        templates={
            "inapp": {"title": "New comment on {{ post_title }}", "body": "{{ excerpt }}"},
            "slack": {"title": "*{{ post_title }}*", "body": "> {{ excerpt }}"},
        },
    )
    ada, bo, cy = new_user(client, "ada"), new_user(client, "bo"), new_user(client, "cy")
    for kind, url in (("webhook", HOOK), ("slack", SLACK)):
        client.put(f"/v1/users/{ada}/endpoints/{kind}", json={"url": url}).raise_for_status()
    client.put(f"/v1/users/{cy}/endpoints/webhook", json={"url": HOOK}).raise_for_status()
    # cy turns Slack off, and has no Slack endpoint anyway; webhooks off is checked below.
    client.put(f"/v1/users/{cy}/preferences", json={"slack_enabled": False}).raise_for_status()
    # With this test's database: the router reviews a user's held deliveries when their record
    # changes (quiet hours follow changes), and the endpoint PUTs change them.
    run_service(
        "services.router", service_env(kafka_settings, db_settings, ROUTER_METRICS_PORT="0")
    )

    def post(**context: str) -> str:
        response = client.post(
            "/v1/events",
            json={"event_type": "comment.created", "recipients": [ada, bo, cy], "context": context},
        )
        assert response.status_code == 202, response.text
        return str(response.json()["event_ids"][0])

    first = post(post_title="Kafka", excerpt="Nice")
    webhook, slack = topics.for_channel("webhook").name, topics.for_channel("slack").name

    def routed(event_id: str, topic: str, count: int) -> list[dict[str, Any]] | None:
        found = [d for d in deliveries(kafka_settings, topic) if d["event_id"] == event_id]
        return found if len(found) >= count else None

    hooks = wait_for(lambda: routed(first, webhook, 2), 90, "webhook deliveries")
    assert {(d["user_id"], d["destination"]) for d in hooks} == {(ada, HOOK), (cy, HOOK)}
    assert all(
        (d["subject"], d["body_text"]) == ("New comment on Kafka", "Nice") for d in hooks
    )  # the in-app template
    [to_slack] = wait_for(lambda: routed(first, slack, 1), 30, "the slack delivery")
    assert (to_slack["user_id"], to_slack["destination"]) == (ada, SLACK)
    assert (to_slack["subject"], to_slack["body_text"]) == ("*Kafka*", "> Nice")

    def skipped(event_id: str) -> dict[tuple[str, str], str | None] | None:
        notifications = {notification_id(event_id, user) for user in (ada, bo, cy)}
        found = {
            (s["user_id"], s["channel"]): s["error_message"]
            for s in statuses(kafka_settings, topics)
            if s["status"] == "skipped" and s["notification_id"] in notifications
        }
        return found if len(found) >= 3 else None

    reasons = wait_for(lambda: skipped(first), 30, "skipped statuses")
    assert reasons[(bo, "webhook")] == "user has no webhook endpoint"
    assert reasons[(bo, "slack")] == "user has no Slack endpoint"
    assert reasons[(cy, "slack")] == "Slack disabled by the user's preferences"

    # The router sees endpoint changes at once: ada's webhook goes, cy turns webhooks off.
    assert client.delete(f"/v1/users/{ada}/endpoints/webhook").status_code == 204
    client.put(f"/v1/users/{cy}/preferences", json={"webhook_enabled": False}).raise_for_status()
    second = post(post_title="Again", excerpt="More")
    wait_for(lambda: routed(second, slack, 1), 60, "the second slack delivery")
    assert routed(second, webhook, 1) is None
    reasons = wait_for(lambda: skipped(second), 30, "skipped statuses")
    assert reasons[(ada, "webhook")] == "user has no webhook endpoint"
    assert reasons[(cy, "webhook")] == "webhook disabled by the user's preferences"


# --- the demo scenario ------------------------------------------------------------------------


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    """Local mode, so the loopback webhook sink is an allowed endpoint."""
    return {"HERALD_ENV": "local"}


def test_the_demo_delivers_a_comment_to_slack_and_a_signed_webhook(
    pipeline: Pipeline,
    kafka_settings: KafkaSettings,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    env = service_env(
        kafka_settings,
        db_settings,
        HERALD_ENV="local",
        WEBHOOK_SENDER_METRICS_PORT="0",
        SLACK_SENDER_METRICS_PORT="0",
    )
    run_service("services.webhook_sender", env)
    run_service("services.webhook_sender.slack", env)
    result = demo.webhooks(pipeline)
    assert result.passed, result.render()
    wen = result.data["user"]
    assert result.data["states"] == {
        (wen, "inapp"): "delivered",
        (wen, "email"): "sent",
        (wen, "sms"): "sent",
        (wen, "webhook"): "sent",
        (wen, "slack"): "sent",
    }
    [hook] = result.data["hooks"]
    # An independent check of the signature (neither the example nor herald.webhooks).
    headers = hook["headers"]
    key = base64.b64decode(result.data["secret"].removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{hook['body']}"
    mac = hmac.new(key, signed.encode(), hashlib.sha256).digest()
    assert "v1," + base64.b64encode(mac).decode() in headers["webhook-signature"].split()
