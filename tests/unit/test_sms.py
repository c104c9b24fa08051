"""The SMS sender's pure parts (E.164, segments, truncation, answer mapping) and its HTTP
client against httpx's in-process mock transport (no network, no broker)."""

from __future__ import annotations

import base64
import uuid
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from herald.errors import PermanentError, RetryableError
from herald.settings import SmsSettings
from services.sms_sender.client import IDEMPOTENCY_HEADER, SmsApi, messages_path, response_error
from services.sms_sender.message import (
    GSM7,
    UCS2,
    count_segments,
    encoding_of,
    fit_body,
    split_segments,
    validate_e164,
)
from services.sms_sender.service import SmsSender
from services.sms_sender.settings import SmsSenderSettings
from tests.samples import SAMPLES

SETTINGS = SmsSettings(
    sms_api_url="http://sms.test", sms_account_sid="AC123", sms_auth_token="secret"
)


def request(**changes: Any) -> dict[str, Any]:
    return {
        **SAMPLES["herald.DeliveryRequest"],
        "channel": "sms",
        "destination": "+14155550123",
        "body_html": None,
        "subject": "",
        "delivery_id": str(uuid.uuid4()),
        **changes,
    }


@pytest.mark.parametrize("number", ["+14155550123", "+4915112345678", "+12", "+999999999999999"])
def test_e164_numbers(number: str) -> None:
    assert validate_e164(number) == number


@pytest.mark.parametrize(
    "number",
    ["", "14155550123", "+04155550123", "+1 415 555 0123", "+1415555012345678", "+1", "+1a2"],
)
def test_not_e164(number: str) -> None:
    with pytest.raises(PermanentError) as caught:
        validate_e164(number)
    assert caught.value.error_class == "sms.invalid_number"


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Hello, world! 123", GSM7),
        ("Prix: 5€ [promo] {x} ~ ^ | \\", GSM7),
        ("Café à Zürich, Ñoño", GSM7),
        ("Ñandú", UCS2),  # ú is not in GSM 03.38 (ù is)
        ("ça va", UCS2),  # lower-case ç is not in GSM 03.38 (only Ç is)
        ("back`tick", UCS2),
        ("Привет", UCS2),
        ("ok 👍", UCS2),
    ],
)
def test_encoding(text: str, encoding: str) -> None:
    assert encoding_of(text) == encoding


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters take two septets
        ("€" * 81, 2),
        ("ж" * 70, 1),
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("👍" * 35, 1),  # outside the BMP: two UTF-16 units each
        ("👍" * 36, 2),
    ],
)
def test_segment_counts(text: str, segments: int) -> None:
    assert count_segments(text) == segments


def test_a_character_is_never_split_across_segments() -> None:
    text = "a" * 152 + "€" + "a" * 10  # the escape pair would straddle septet 153
    parts = split_segments(text)
    assert parts == ["a" * 152, "€" + "a" * 10]
    emoji = "ж" * 66 + "👍" + "ж" * 10  # the surrogate pair would straddle unit 67
    assert split_segments(emoji) == ["ж" * 66, "👍" + "ж" * 10]
    assert "".join(split_segments(text)) == text


def test_fit_body_keeps_a_short_body() -> None:
    body = fit_body("Your code is 123456", 1)
    assert (body.text, body.encoding, body.segments, body.truncated) == (
        "Your code is 123456",
        GSM7,
        1,
        False,
    )


@pytest.mark.parametrize("max_segments", [1, 2, 3])
def test_fit_body_truncates_gsm7_with_a_gsm7_ellipsis(max_segments: int) -> None:
    text = "word " * 200
    body = fit_body(text, max_segments)
    assert body.truncated and body.text.endswith("...") and body.encoding == GSM7
    assert body.segments == count_segments(body.text) == max_segments
    capacity = 160 if max_segments == 1 else 153 * max_segments
    assert capacity - 5 <= len(body.text) <= capacity
    assert text.startswith(body.text[:-3])


def test_fit_body_truncates_ucs2_with_an_ellipsis_character() -> None:
    text = "Привет мир " * 40
    body = fit_body(text, 2)
    assert body.truncated and body.text.endswith("…") and body.encoding == UCS2
    assert body.segments == 2 and len(body.text) <= 134


def test_fit_body_refuses_an_empty_body() -> None:
    with pytest.raises(PermanentError) as caught:
        fit_body("  ", 3)
    assert caught.value.error_class == "sms.empty_body"


@pytest.mark.parametrize(
    ("status", "payload", "retry_after", "kind", "error_class"),
    [
        (400, {"code": 21211, "message": "invalid To"}, None, PermanentError, "sms.4xx"),
        (401, {"code": 20003, "message": "auth"}, None, PermanentError, "sms.auth"),
        (404, None, None, PermanentError, "sms.4xx"),
        (408, None, None, RetryableError, "sms.request_timeout"),
        (429, {"code": 20429, "message": "slow down"}, "7", RetryableError, "sms.rate_limited"),
        (500, None, None, RetryableError, "sms.5xx"),
        (503, {"code": 20500, "message": "down"}, "30", RetryableError, "sms.5xx"),
    ],
)
def test_provider_answers_are_typed(
    status: int, payload: Any, retry_after: str | None, kind: type, error_class: str
) -> None:
    error = response_error(status, payload, retry_after)
    assert type(error) is kind and error is not None
    assert error.error_class == error_class
    assert f"HTTP {status}" in error.message
    if payload:
        assert str(payload["code"]) in error.message
    if retry_after:
        assert f"Retry-After: {retry_after}" in error.message


def test_accepted_answers_are_not_errors() -> None:
    assert response_error(201, {"sid": "SM1"}) is None
    assert response_error(200, {"sid": "SM1"}) is None


class Provider:
    """A scripted provider behind httpx.MockTransport that records every request."""

    def __init__(self, answer: Any = None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer or (lambda request: httpx.Response(201, json={"sid": "SM42"}))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response: httpx.Response = self.answer(request)
        return response

    def api(self) -> SmsApi:
        return SmsApi(SETTINGS, transport=httpx.MockTransport(self))


def test_client_posts_the_twilio_shaped_request() -> None:
    provider = Provider()
    sid = SmsSender(provider.api(), 10)(req := request(body_text="Your code is 123456"))
    assert sid == "SM42"
    (sent,) = provider.requests
    assert sent.method == "POST"
    assert str(sent.url) == "http://sms.test" + messages_path("AC123")
    assert sent.url.path == "/2010-04-01/Accounts/AC123/Messages.json"
    assert sent.headers[IDEMPOTENCY_HEADER] == req["delivery_id"]
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(b"AC123:secret").decode()
    form = parse_qs(sent.content.decode())
    assert form == {
        "To": ["+14155550123"],
        "From": [SETTINGS.sms_from],
        "Body": ["Your code is 123456"],
    }


def test_client_sends_the_truncated_body() -> None:
    provider = Provider()
    SmsSender(provider.api(), 2)(request(body_text="x" * 1000))
    body = parse_qs(provider.requests[0].content.decode())["Body"][0]
    assert len(body) == 306 and body.endswith("...")


def test_invalid_number_is_refused_before_any_request() -> None:
    provider = Provider()
    with pytest.raises(PermanentError):
        SmsSender(provider.api(), 10)(request(destination="0155 1234"))
    assert provider.requests == []


def test_provider_rejection_is_permanent() -> None:
    provider = Provider(
        lambda request: httpx.Response(400, json={"code": 21211, "message": "bad To"})
    )
    with pytest.raises(PermanentError, match="21211"):
        SmsSender(provider.api(), 10)(request())


def test_rate_limit_is_retryable_and_records_retry_after() -> None:
    provider = Provider(
        lambda request: httpx.Response(429, headers={"Retry-After": "12"}, json={"code": 20429})
    )
    with pytest.raises(RetryableError, match="Retry-After: 12") as caught:
        SmsSender(provider.api(), 10)(request())
    assert caught.value.error_class == "sms.rate_limited"


@pytest.mark.parametrize(
    ("exc", "error_class"),
    [
        (httpx.ConnectError("refused"), "sms.unreachable"),
        (httpx.ReadTimeout("slow"), "sms.timeout"),
        (httpx.ConnectTimeout("slow"), "sms.unreachable"),
        (httpx.RemoteProtocolError("reset"), "sms.connection"),
    ],
)
def test_network_failures_are_retryable(exc: Exception, error_class: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(RetryableError) as caught:
        SmsSender(Provider(fail).api(), 10)(request())
    assert caught.value.error_class == error_class


def test_accepted_without_sid_is_retryable() -> None:
    provider = Provider(lambda request: httpx.Response(201, text="ok"))
    with pytest.raises(RetryableError) as caught:
        SmsSender(provider.api(), 10)(request())
    assert caught.value.error_class == "sms.bad_response"


def test_settings_defaults_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SmsSenderSettings().metrics_port == 9103
    monkeypatch.setenv("SMS_SENDER_MAX_SEGMENTS", "0")
    with pytest.raises(ValueError):
        SmsSenderSettings()
