"""The SMS sender: delivery of ``herald.deliveries.sms.v1`` and its retry tiers over HTTP."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter

from herald import logs
from herald.metrics import serve_metrics
from herald.sender import serve_channel
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


def main() -> int:
    """Run the SMS sender until SIGTERM; return the process exit status."""
    own = SmsSenderSettings()
    logs.configure(own.log_level)
    # httpx logs every request at INFO: thousands of lines a second at full speed.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    settings = get_settings()
    serve_metrics(own.metrics_port)
    api = SmsApi(
        settings.sms,
        timeout=own.http_timeout_seconds,
        connect_timeout=own.connect_timeout_seconds,
    )
    return serve_channel(
        service=SERVICE,
        channel=CHANNEL,
        own=own,
        settings=settings,
        send=SmsSender(api, own.max_segments),
        close=api.close,
        # The provider de-duplicates on the idempotency key (the delivery id), so a send a
        # dead sender left unconfirmed is safely sent again.
        resend_uncertain=True,
    )
