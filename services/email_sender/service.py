"""The email sender: SMTP delivery of ``herald.deliveries.email.v1`` and its retry tiers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from herald import logs
from herald.errors import RetryableError
from herald.metrics import serve_metrics
from herald.sender import provider_names, serve_channel
from herald.settings import get_settings
from services.email_sender.message import build_message, envelope_sender, message_id
from services.email_sender.settings import EmailSenderSettings
from services.email_sender.smtp import SmtpEndpoint, SmtpPool, SmtpTransport

SERVICE = "email_sender"
CHANNEL = "email"


class EmailSender:
    """The email channel's send function: build the message, hand it to SMTP (with an
    :class:`SmtpPool`, safe to call from several threads at once).

    Returns the Message-ID (``<delivery_id@herald>``) as the provider message id.
    """

    def __init__(self, transport: SmtpTransport | SmtpPool, from_header: str) -> None:
        self.transport = transport
        self.from_header = from_header
        # Checked once at start-up: a bad EMAIL_FROM should stop the service, not fail mail.
        self.envelope_from = envelope_sender(from_header)

    def __call__(self, request: Mapping[str, Any]) -> str:
        message = build_message(request, from_header=self.from_header)
        self.transport.send(
            message, envelope_from=self.envelope_from, recipient=request["destination"]
        )
        return message_id(request["delivery_id"])


def uncertain(error: RetryableError) -> bool:
    """Whether the relay may have taken the message despite ``error``: anything but a 4xx
    reply or a session that could not be opened (``smtp.unreachable``: refused, timed out,
    TLS, greeting; a timeout or a dropped session after MAIL may follow an accepted message).
    Such a delivery is not sent through another relay."""
    return error.error_class not in ("smtp.4xx", "smtp.unreachable", "smtp.connection_refused")


def main() -> int:
    """Run the email sender until SIGTERM; return the process exit status."""
    own = EmailSenderSettings()
    logs.configure(own.log_level)
    settings = get_settings()
    serve_metrics(own.metrics_port)
    # One connection per send in flight (EMAIL_SENDER_CONCURRENCY) to each relay: SMTP_URL,
    # then SMTP_FALLBACK_URLS (smtp-a, smtp-b, ...); a relay's connections open on first use.
    urls = settings.smtp.provider_urls
    transports = [
        SmtpPool(
            SmtpEndpoint.from_url(url),
            own.concurrency,
            timeout=own.smtp_timeout_seconds,
            idle_check_seconds=own.smtp_idle_check_seconds,
        )
        for url in urls
    ]
    chain = own.provider_chain(
        CHANNEL,
        [
            (name, EmailSender(transport, settings.smtp.email_from))
            for name, transport in zip(provider_names("smtp", len(urls)), transports, strict=True)
        ],
        uncertain,
    )

    def close() -> None:
        for transport in transports:
            transport.close()

    return serve_channel(
        service=SERVICE,
        channel=CHANNEL,
        own=own,
        settings=settings,
        send=chain,
        close=close,
    )
