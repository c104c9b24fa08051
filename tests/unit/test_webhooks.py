"""Standard Webhooks signing (herald.webhooks), the example receiver, the webhook and Slack
bodies and the mapping of endpoint answers to outcomes: pure functions."""

from __future__ import annotations

import base64
import hmac
import json
import time
from datetime import UTC, datetime

import pytest

from examples import webhook_receiver
from herald import webhooks
from herald.errors import EndpointRetryableError, PermanentError
from services.webhook_sender.client import Answer
from services.webhook_sender.formats import mrkdwn_escape, slack_body, webhook_body
from services.webhook_sender.service import answer_error, retry_after_seconds
from tests.integration.delivery_util import delivery_request

# The reference vector of the Standard Webhooks libraries' test suites.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def independent_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.digest(key, signed, "sha256")).decode()


def test_sign_matches_the_reference_vector_and_an_independent_hmac() -> None:
    assert webhooks.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE
    secret = webhooks.new_secret()
    body = json.dumps({"ü": "ß"}, ensure_ascii=False).encode()
    assert webhooks.sign(secret, "d-1", 1700000000, body) == independent_signature(
        secret, "d-1", 1700000000, body
    )


def test_new_secret_has_the_specified_shape() -> None:
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) >= 24
    assert webhooks.new_secret() != secret
    with pytest.raises(ValueError):
        webhooks.secret_key("whsec_not base64!")


def test_verify_accepts_fresh_and_rotated_signatures_and_rejects_the_rest() -> None:
    now = time.time()
    headers = webhooks.signed_headers(VECTOR_SECRET, "d-2", b"{}", timestamp=int(now))
    assert webhooks.verify(VECTOR_SECRET, headers, b"{}", now=now)
    upper = {name.upper(): value for name, value in headers.items()}
    assert webhooks.verify(VECTOR_SECRET, upper, b"{}", now=now)
    rotated = {**headers, "webhook-signature": "v1,AAAA " + headers["webhook-signature"]}
    assert webhooks.verify(VECTOR_SECRET, rotated, b"{}", now=now)
    assert not webhooks.verify(VECTOR_SECRET, headers, b"{ }", now=now)  # body changed
    assert not webhooks.verify(webhooks.new_secret(), headers, b"{}", now=now)
    assert not webhooks.verify(VECTOR_SECRET, headers, b"{}", now=now + 301)  # replayed late
    assert not webhooks.verify(VECTOR_SECRET, headers, b"{}", now=now - 301)  # from the future
    assert not webhooks.verify(VECTOR_SECRET, {**headers, "webhook-id": "d-3"}, b"{}", now=now)
    assert not webhooks.verify(VECTOR_SECRET, {}, b"{}", now=now)


def test_example_receiver_verifies_and_rejects_a_replay_older_than_the_tolerance() -> None:
    body = b'{"type":"comment.created"}'
    fresh = webhooks.signed_headers(VECTOR_SECRET, "d-4", body)
    assert webhook_receiver.verify(VECTOR_SECRET, fresh, body)
    old = int(time.time()) - 301
    replayed = webhooks.signed_headers(VECTOR_SECRET, "d-4", body, timestamp=old)
    assert not webhook_receiver.verify(VECTOR_SECRET, replayed, body)
    assert webhook_receiver.verify(VECTOR_SECRET, replayed, body, tolerance_s=600)
    assert not webhook_receiver.verify(VECTOR_SECRET, fresh, body + b" ")
    vector = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    assert webhook_receiver.verify(VECTOR_SECRET, vector, VECTOR_BODY, tolerance_s=10**10)


def test_webhook_body_is_the_standard_payload_and_the_same_on_every_attempt() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    request = delivery_request(
        "webhook", "https://x.test/h", subject="New comment", body_text="Hi", created_at=created
    )
    body = webhook_body(request)
    assert body == webhook_body(dict(request))
    payload = json.loads(body)
    assert payload["type"] == "test.sender"
    assert payload["timestamp"] == "2026-01-02T03:04:05.678000Z"
    assert payload["data"] == {
        "delivery_id": request["delivery_id"],
        "notification_id": request["notification_id"],
        "event_id": request["event_id"],
        "user_id": request["user_id"],
        "event_type": "test.sender",
        "title": "New comment",
        "body": "Hi",
        "locale": "en",
        "created_at": "2026-01-02T03:04:05.678000Z",
    }


def test_slack_body_is_block_kit_mrkdwn_escaped_and_cut() -> None:
    request = delivery_request(
        "slack", "https://x.test/s", subject="A <b> & c", body_text="line\n" + "x" * 4000
    )
    payload = json.loads(slack_body(request))
    (block,) = payload["blocks"]
    assert block["type"] == "section" and block["text"]["type"] == "mrkdwn"
    text = block["text"]["text"]
    assert text.startswith("*A &lt;b&gt; &amp; c*\nline\n")
    assert len(text) == 3000 and text.endswith("…")
    assert payload["text"].startswith("A &lt;b&gt; &amp; c\nline")
    assert mrkdwn_escape("<@U1>") == "&lt;@U1&gt;"
    only_body = json.loads(slack_body(delivery_request("slack", "u", body_text="hello")))
    assert only_body["blocks"][0]["text"]["text"] == "hello"
    with pytest.raises(PermanentError) as info:
        slack_body(delivery_request("slack", "u"))
    assert info.value.error_class == "slack.empty"


@pytest.mark.parametrize(
    ("status", "kind", "error_class"),
    [
        (200, PermanentError, None),
        (204, PermanentError, None),
        (410, PermanentError, "webhook.gone"),
        (400, PermanentError, "webhook.4xx"),
        (404, PermanentError, "webhook.4xx"),
        (301, PermanentError, "webhook.redirect"),
        (429, EndpointRetryableError, "webhook.rate_limited"),
        (408, EndpointRetryableError, "webhook.timeout"),
        (500, EndpointRetryableError, "webhook.5xx"),
        (503, EndpointRetryableError, "webhook.5xx"),
    ],
)
def test_answers_map_to_outcomes(status: int, kind: type, error_class: str | None) -> None:
    error = answer_error("webhook", Answer(status, {"retry-after": "3"}, b"nope"))
    if error_class is None:
        assert error is None
        return
    assert error is not None and isinstance(error, kind)
    assert error.error_class == error_class
    assert f"HTTP {status}: nope" in error.message


def test_retry_after_in_seconds_only() -> None:
    assert retry_after_seconds("3") == 3
    assert retry_after_seconds(" 0.5 ") == 0.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("-1") is None
