"""The SMS sender: delivery of ``herald.deliveries.sms.v1`` and its retry tiers over HTTP."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter

from herald import logs
from herald.errors import RetryableError
from herald.metrics import serve_metrics
from herald.sender import provider_names, resend_uncertain_safe, serve_channel
from herald.settings import get_settings
from services.sms_sender.client import SmsApi
from services.sms_sender.message import fit_body, validate_e164
from services.sms_sender.settings import SmsSenderSettings

SERVICE = "sms_sender"
CHANNEL = "sms"

SEGMENTS = Counter("herald_sms_segments_total", "SMS segments sent", ["encoding"])
TRUNCATED = Counter(
    "herald_sms_truncated_total", "SMS bodies cut to the maximum number of segments"
)


class SmsSender:
    """The SMS channel's send function: check the number, fit the body, call the provider.

    Returns the provider's message sid.
    """

    def __init__(self, api: SmsApi, max_segments: int) -> None:
        self.api = api
        self.max_segments = max_segments

    def __call__(self, request: Mapping[str, Any]) -> str:
        to = validate_e164(request["destination"])
        body = fit_body(request["body_text"], self.max_segments)
        sid = self.api.create_message(to=to, body=body.text, idempotency_key=request["delivery_id"])
        SEGMENTS.labels(body.encoding).inc(body.segments)
        if body.truncated:
            TRUNCATED.inc()
        return sid


def uncertain(error: RetryableError) -> bool:
    """Whether the provider may have accepted the message despite ``error``: a timeout after
    the request went out, an accepted request without a readable sid, a connection lost
    mid-request. Such a delivery is not sent through another provider (see
    :mod:`herald.sender.providers`). An error answer (5xx, 408, 429) or a connection that could
    not be opened (``sms.unreachable``: refused, connect timeout, TLS) is certain: failover."""
    return error.error_class in ("sms.timeout", "sms.bad_response", "sms.connection")


def main() -> int:
    """Run the SMS sender until SIGTERM; return the process exit status."""
    own = SmsSenderSettings()
    logs.configure(own.log_level)
    # httpx logs every request at INFO: thousands of lines a second at full speed.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    settings = get_settings()
    serve_metrics(own.metrics_port)
    # SMS_API_URL, then SMS_API_FALLBACK_URLS: sms-a, sms-b, ...
    providers = settings.sms.providers()
    apis = [
        SmsApi(
            provider,
            timeout=own.http_timeout_seconds,
            connect_timeout=own.connect_timeout_seconds,
        )
        for provider in providers
    ]
    chain = own.provider_chain(
        CHANNEL,
        [
            (name, SmsSender(api, own.max_segments))
            for name, api in zip(provider_names("sms", len(apis)), apis, strict=True)
        ],
        uncertain,
    )

    def close() -> None:
        for api in apis:
            api.close()

    return serve_channel(
        service=SERVICE,
        channel=CHANNEL,
        own=own,
        settings=settings,
        send=chain,
        close=close,
        # The provider de-duplicates on the idempotency key (the delivery id), so a send a
        # dead sender left unconfirmed is safely sent again, when there is one provider: the
        # key is per provider, and with several the dead sender may have used any of them.
        resend_uncertain=resend_uncertain_safe(len(chain), idempotent=True),
    )
