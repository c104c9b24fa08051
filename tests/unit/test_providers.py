"""Provider failover (herald.sender.providers): the chain's choices with scripted providers and
a fake clock, its provider in the handler's status events, and the settings that list the
providers. No network."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from herald.errors import PermanentError, RetryableError
from herald.sender import ProviderChain, Sent, provider_names, resend_uncertain_safe
from herald.settings import SmsSettings, SmtpSettings
from herald.streaming import H_ATTEMPT
from services.email_sender.service import uncertain as smtp_uncertain
from services.sms_sender.service import uncertain as sms_uncertain
from tests.unit.test_sender import NOW, FakeChannel, handler, message, statuses
from tests.unit.test_sender import request as delivery_request


class Scripted:
    """A provider's send function: fails with ``error`` while set, else accepts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: Exception | None = None
        self.calls: list[str] = []

    def __call__(self, request: Mapping[str, Any]) -> str:
        self.calls.append(request["delivery_id"])
        if self.error is not None:
            raise self.error
        return f"{self.name}-{request['delivery_id']}"


def down() -> RetryableError:
    return RetryableError("HTTP 503", error_class="sms.5xx")


def req() -> dict[str, Any]:
    return {"delivery_id": str(uuid.uuid4())}


def chain_of(
    count: int = 2, *, channel: str = "sms", **options: Any
) -> tuple[ProviderChain, list[Scripted], list[float]]:
    now = [NOW]
    providers = [Scripted(name) for name in provider_names("sms", count)]
    options = {"failures": 3, "backoff": 5.0, "backoff_max": 20.0, **options}
    chain = ProviderChain(
        channel, [(p.name, p) for p in providers], clock=lambda: now[0], **options
    )
    return chain, providers, now


def active_gauge(channel: str, provider: str) -> float | None:
    return REGISTRY.get_sample_value(
        "herald_sender_provider_active", {"channel": channel, "provider": provider}
    )


def test_names_and_when_an_uncertain_send_may_be_resent() -> None:
    assert provider_names("sms", 3) == ["sms-a", "sms-b", "sms-c"]
    assert provider_names("smtp", 1) == ["smtp-a"]
    with pytest.raises(ValueError):
        provider_names("sms", 0)
    assert resend_uncertain_safe(1, idempotent=True)
    assert not resend_uncertain_safe(2, idempotent=True)
    assert not resend_uncertain_safe(1, idempotent=False)


def test_the_primary_sends_while_it_answers() -> None:
    chain, (a, b), _ = chain_of()
    one = req()
    assert chain(one) == Sent(f"sms-a-{one['delivery_id']}", "sms-a")
    assert (len(a.calls), len(b.calls)) == (1, 0)
    assert chain.active() == "sms-a"


def test_a_failing_primary_falls_through_then_is_skipped_once_its_breaker_opens() -> None:
    chain, (a, b), _ = chain_of(channel="sms-t1")
    a.error = down()
    results = [chain(req()) for _ in range(5)]
    assert {sent.provider for sent in results} == {"sms-b"}  # every one sent, through B
    assert len(a.calls) == 3  # tried until its breaker opened (3 failures), then skipped
    assert len(b.calls) == 5
    assert chain.active() == "sms-b"
    assert active_gauge("sms-t1", "sms-a") == 0 and active_gauge("sms-t1", "sms-b") == 1
    failures = REGISTRY.get_sample_value(
        "herald_sender_provider_failures_total", {"channel": "sms-t1", "provider": "sms-a"}
    )
    assert failures == 3


def test_the_primary_is_probed_after_its_backoff_and_taken_back_when_it_answers() -> None:
    chain, (a, b), now = chain_of(channel="sms-t2")
    a.error = down()
    for _ in range(3):
        chain(req())
    now[0] += 4.9
    chain(req())
    assert len(a.calls) == 3  # still backing off
    # The back-off has passed but the primary still fails: the probe falls through to B and
    # the back-off doubles (5 s, then 10 s).
    now[0] += 0.2
    assert chain(req()).provider == "sms-b"
    assert len(a.calls) == 4
    now[0] += 9.9
    chain(req())
    assert len(a.calls) == 4
    # It recovers: the next probe succeeds and traffic returns to it.
    a.error = None
    now[0] += 0.2
    assert chain(req()).provider == "sms-a"
    assert chain.active() == "sms-a" and active_gauge("sms-t2", "sms-a") == 1
    before = len(b.calls)
    assert {chain(req()).provider for _ in range(5)} == {"sms-a"}
    assert len(b.calls) == before


def test_only_one_send_probes_a_recovering_provider_at_a_time() -> None:
    chain, (a, _b), now = chain_of()
    a.error = down()
    for _ in range(3):
        chain(req())
    now[0] += 5.1
    # A send is probing A (taken by _next, as a concurrent thread would have it)...
    provider, probe = chain._next(set())
    assert provider is not None and provider.name == "sms-a" and probe
    # ...so another send meanwhile goes to B without trying A.
    calls = len(a.calls)
    assert chain(req()).provider == "sms-b"
    assert len(a.calls) == calls


def test_sends_begun_before_the_breaker_opened_do_not_lengthen_the_backoff() -> None:
    chain, (a, _), _ = chain_of()
    a.error = down()
    in_flight = [chain._next(set())[0] for _ in range(4)]  # chosen while A was closed
    for _ in range(3):
        chain(req())
    assert chain.providers[0].breaker.current_backoff == 5.0
    for provider in in_flight:
        assert provider is not None
        with pytest.raises(RetryableError):
            chain._send(provider, req(), str(uuid.uuid4()), taken=False)
    assert chain.providers[0].breaker.current_backoff == 5.0


def test_an_uncertain_failure_does_not_fall_through_and_pins_the_delivery() -> None:
    chain, (a, b), _ = chain_of(uncertain=lambda e: e.error_class == "sms.timeout")
    a.error = RetryableError("timed out", error_class="sms.timeout")
    one = req()
    with pytest.raises(RetryableError) as caught:
        chain(one)
    assert caught.value.provider == "sms-a" and caught.value.uncertain_outcome
    assert b.calls == []  # B could send it a second time: A may have it
    # A's breaker opens on other deliveries' failures (they fall through to B)...
    a.error = down()
    for _ in range(3):
        assert chain(req()).provider == "sms-b"
    # ...but the pinned delivery still goes to A only, where its idempotency key dedupes it.
    a.error = None
    assert chain(one).provider == "sms-a"
    assert one["delivery_id"] not in b.calls
    # Once sent it is unpinned.
    assert chain.pins.get(one["delivery_id"]) is None


def test_a_permanent_refusal_is_final_without_trying_the_next_provider() -> None:
    chain, (a, b), _ = chain_of()
    a.error = PermanentError("not a number", error_class="sms.4xx")
    with pytest.raises(PermanentError) as caught:
        chain(req())
    assert caught.value.provider == "sms-a"
    assert b.calls == []


def test_when_every_provider_fails_the_error_names_them_and_one_is_always_tried() -> None:
    chain, (a, b), _now = chain_of()
    a.error, b.error = down(), RetryableError("HTTP 429", error_class="sms.rate_limited")
    with pytest.raises(RetryableError) as caught:
        chain(req())
    assert caught.value.provider == "sms-b"
    assert caught.value.error_class == "sms.rate_limited"
    assert "sms-a: HTTP 503" in caught.value.message and "sms-b: HTTP 429" in caught.value.message
    for _ in range(3):
        with pytest.raises(RetryableError):
            chain(req())
    # Both breakers are open: the chain still tries one (the sender's own breaker decides
    # when to stop trying altogether), the one whose back-off ends first.
    a_calls, b_calls = len(a.calls), len(b.calls)
    with pytest.raises(RetryableError):
        chain(req())
    assert len(a.calls) + len(b.calls) == a_calls + b_calls + 1


def test_a_single_provider_is_always_tried() -> None:
    chain, (a,), _ = chain_of(1)
    a.error = down()
    for _ in range(10):
        with pytest.raises(RetryableError):
            chain(req())
    assert len(a.calls) == 10


def test_the_handler_reports_the_provider_of_each_attempt() -> None:
    chain, (a, b), _ = chain_of()
    first, second = delivery_request(), delivery_request()
    out = handler(cast(Any, chain))([message(first), message(second, offset=1)])
    assert [(e["status"], e["provider"]) for e in statuses(out)] == [
        ("sent", "sms-a"),
        ("sent", "sms-a"),
    ]
    a.error = b.error = down()
    failing = delivery_request()
    out = handler(cast(Any, chain))([message(failing)])
    ((event),) = statuses(out)
    assert (event["status"], event["provider"], event["error_class"]) == (
        "retrying",
        "sms-b",
        "sms.5xx",
    )
    a.error = None
    out = handler(cast(Any, chain))([message(failing, headers=[(H_ATTEMPT, b"2")])])
    ((event),) = statuses(out)
    assert (event["status"], event["provider"], event["attempt"]) == ("sent", "sms-a", 2)
    assert event["provider_message_id"] == f"sms-a-{failing['delivery_id']}"


def test_a_plain_send_function_reports_no_provider() -> None:
    out = handler(FakeChannel())([message(delivery_request())])
    ((event),) = statuses(out)
    assert event["provider"] is None


def test_provider_lists_from_the_settings() -> None:
    sms = SmsSettings(
        sms_api_url="http://a.example:1",
        sms_api_fallback_urls=" http://b.example:2 , https://AC2:t%40k@c.example/api ,",
        sms_account_sid="AC1",
        sms_auth_token="tok",
    )
    a, b, c = sms.providers()
    assert (a.sms_api_url, a.sms_account_sid) == ("http://a.example:1", "AC1")
    assert (b.sms_api_url, b.sms_account_sid, b.sms_auth_token) == (
        "http://b.example:2",
        "AC1",
        "tok",
    )
    assert (c.sms_api_url, c.sms_account_sid, c.sms_auth_token) == (
        "https://c.example/api",
        "AC2",
        "t@k",
    )
    assert SmsSettings(sms_api_fallback_urls="").providers() == [SmsSettings()]
    smtp = SmtpSettings(smtp_url="smtp://a:25", smtp_fallback_urls="smtp://b:25,smtps://c:465")
    assert smtp.provider_urls == ["smtp://a:25", "smtp://b:25", "smtps://c:465"]


def test_which_failures_may_have_sent_the_message() -> None:
    assert not sms_uncertain(RetryableError("no", error_class="sms.unreachable"))
    assert sms_uncertain(RetryableError("reset", error_class="sms.connection"))
    assert sms_uncertain(RetryableError("t", error_class="sms.timeout"))
    assert not sms_uncertain(RetryableError("503", error_class="sms.5xx"))
    assert not sms_uncertain(RetryableError("408", error_class="sms.request_timeout"))
    assert not smtp_uncertain(RetryableError("451", error_class="smtp.4xx"))
    assert not smtp_uncertain(RetryableError("no", error_class="smtp.unreachable"))
    assert smtp_uncertain(RetryableError("t", error_class="smtp.timeout"))
    assert smtp_uncertain(RetryableError("gone", error_class="smtp.disconnected"))
