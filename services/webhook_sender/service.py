"""The webhook and Slack senders: ``herald.deliveries.webhook.v1`` / ``.slack.v1`` over HTTP.

One send function for both kinds (:class:`EndpointSender`), on the channel-agnostic sender
core (:func:`herald.sender.serve_channel`): per delivery it reads the user's endpoint of the
kind from PostgreSQL, formats the body (:mod:`~services.webhook_sender.formats`), signs it
(webhooks: :mod:`herald.webhooks`) and POSTs it (:mod:`~services.webhook_sender.client`).

Outcomes (:func:`answer_error`):

==========================  =============================================================
no endpoint / disabled      ``skipped`` (``endpoint.missing`` / ``endpoint.disabled``)
blocked URL or address      ``failed`` to the DLQ (``endpoint.blocked``), nothing sent
2xx                         ``sent``
410 Gone                    the endpoint is disabled and the user's record published
                            again without it (the router stops routing to it);
                            ``failed`` (``<kind>.gone``)
429                         Retry-After <= max wait: waited out and sent again once;
                            else the next retry tier (``<kind>.rate_limited``)
408, 5xx, timeout, no       the next retry tier, then the DLQ (``dead``); these count
connection, DNS failure,    neither toward the breaker nor the window (one user's
refused TLS certificate     broken endpoint must not slow everyone else's deliveries)
3xx, other 4xx              ``failed`` to the DLQ (``<kind>.redirect`` / ``<kind>.4xx``)
==========================  =============================================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from herald import logs
from herald.db import make_engine
from herald.errors import (
    EndpointRetryableError,
    PermanentError,
    ProcessingError,
    SkipDelivery,
)
from herald.metrics import serve_metrics
from herald.sender import Sent, serve_channel
from herald.settings import get_settings
from herald.webhooks import signed_headers
from schemas import CATALOGUE
from services.webhook_sender.client import Answer, EndpointHttp
from services.webhook_sender.endpoints import Endpoint, EndpointStore
from services.webhook_sender.formats import FORMATTERS
from services.webhook_sender.republish import UserRepublisher
from services.webhook_sender.settings import SETTINGS

log = logging.getLogger(__name__)

SERVICES = {"webhook": "webhook_sender", "slack": "slack_sender"}

ENDPOINTS_DISABLED = Counter(
    "herald_endpoints_disabled_total",
    "Endpoints disabled because they answered 410 Gone",
    ["kind"],
)
RETRY_AFTER_WAITS = Counter(
    "herald_endpoint_retry_after_waits_total",
    "429 answers whose Retry-After was waited out before sending again",
    ["kind"],
)


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header given in seconds (None: absent or an HTTP date)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def answer_error(kind: str, answer: Answer) -> ProcessingError | None:
    """The typed error for an endpoint's answer, or None when it accepted the delivery."""
    status = answer.status
    if 200 <= status < 300:
        return None
    text = answer.body[:200].decode("utf-8", "replace").strip()
    message = f"HTTP {status}" + (f": {text}" if text else "")
    retry_after = answer.headers.get("retry-after")
    if retry_after:
        message += f" (Retry-After: {retry_after})"
    if status == 410:
        return PermanentError(message + "; endpoint disabled", error_class=f"{kind}.gone")
    if status == 429:
        return EndpointRetryableError(message, error_class=f"{kind}.rate_limited")
    if status == 408:
        return EndpointRetryableError(message, error_class=f"{kind}.timeout")
    if status >= 500:
        return EndpointRetryableError(message, error_class=f"{kind}.5xx")
    if 300 <= status < 400:
        return PermanentError(
            message + "; redirects are not followed", error_class=f"{kind}.redirect"
        )
    if 400 <= status < 500:
        return PermanentError(message, error_class=f"{kind}.4xx")
    return EndpointRetryableError(message, error_class=f"{kind}.unexpected_status")


class EndpointSender:
    """The send function of one kind (``webhook`` or ``slack``); returns the delivery id (the
    ``webhook-id``) as the provider message id, and the kind as the provider (the status
    event's ``provider``, on failures too)."""

    def __init__(
        self,
        kind: str,
        endpoints: EndpointStore,
        http: EndpointHttp,
        *,
        retry_after_max_wait: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        on_disabled: Callable[[str], object] | None = None,
    ) -> None:
        self.kind = kind
        #: Called with the user id after a 410 disabled the user's endpoint (the webhook
        #: sender publishes the user again: services.webhook_sender.republish).
        self.on_disabled = on_disabled
        self.format = FORMATTERS[kind]
        self.endpoints = endpoints
        self.http = http
        self.retry_after_max_wait = retry_after_max_wait
        self.sleep = sleep
        self.clock = clock
        self.user_agent = f"herald-{SERVICES[kind].replace('_', '-')}"

    def prepare(self, requests: list[dict[str, Any]]) -> None:
        """Read the endpoints of a batch's users in one query (the core calls it per batch)."""
        self.endpoints.prefetch(request["user_id"] for request in requests)

    def __call__(self, request: Mapping[str, Any]) -> Sent:
        user_id = request["user_id"]
        endpoint = self.endpoints.get(user_id)
        if endpoint is None:
            raise SkipDelivery(
                f"user {user_id} has no {self.kind} endpoint", error_class="endpoint.missing"
            )
        if not endpoint.enabled:
            raise SkipDelivery(
                f"the {self.kind} endpoint of user {user_id} is disabled",
                error_class="endpoint.disabled",
            )
        try:
            return Sent(self._send(endpoint, request), self.kind)
        except ProcessingError as exc:
            exc.provider = self.kind
            raise

    def _send(self, endpoint: Endpoint, request: Mapping[str, Any]) -> str:
        user_id, delivery_id = request["user_id"], request["delivery_id"]
        body = self.format(request)
        answer = self._post(endpoint.url, endpoint.secret, delivery_id, body)
        if answer.status == 429:
            wait = retry_after_seconds(answer.headers.get("retry-after"))
            if wait is not None and wait <= self.retry_after_max_wait:
                RETRY_AFTER_WAITS.labels(self.kind).inc()
                self.sleep(wait)
                answer = self._post(endpoint.url, endpoint.secret, delivery_id, body)
        error = answer_error(self.kind, answer)
        if answer.status == 410:
            stamp = datetime.fromtimestamp(self.clock(), UTC).isoformat(timespec="seconds")
            if self.endpoints.disable(user_id, endpoint.url, f"HTTP 410 Gone at {stamp}"):
                ENDPOINTS_DISABLED.labels(self.kind).inc()
                log.warning(
                    "endpoint answered 410 Gone; disabled",
                    extra={"user_id": user_id, "kind": self.kind, "delivery_id": delivery_id},
                )
                if self.on_disabled is not None:
                    self.on_disabled(user_id)
        if error is not None:
            raise error
        return delivery_id

    def _post(self, url: str, secret: str | None, delivery_id: str, body: bytes) -> Answer:
        headers = {"Content-Type": "application/json", "User-Agent": self.user_agent}
        if self.kind == "webhook":
            if not secret:
                raise PermanentError(
                    "the webhook endpoint has no signing secret", error_class="endpoint.no_secret"
                )
            # Signed per attempt: the timestamp says when this request was made.
            headers.update(signed_headers(secret, delivery_id, body, timestamp=int(self.clock())))
        return self.http.post(url, body, headers)


def main(kind: str) -> int:
    """Run the sender of ``kind`` until SIGTERM; return the process exit status."""
    own = SETTINGS[kind]()
    logs.configure(own.log_level)
    settings = get_settings()
    serve_metrics(own.metrics_port)
    http = EndpointHttp(
        kind, timeout=own.http_timeout_seconds, connect_timeout=own.connect_timeout_seconds
    )
    # Endpoint reads: one per batch on the loop's thread, a few from send threads (cache
    # misses, 410s).
    engine = make_engine(settings.database, pool_size=2, max_overflow=4)
    republish = UserRepublisher(
        engine, settings.kafka, CATALOGUE.with_prefix(settings.kafka.topic_prefix)
    )
    send = EndpointSender(
        kind,
        EndpointStore(engine, kind, ttl=own.endpoint_cache_seconds),
        http,
        retry_after_max_wait=own.retry_after_max_wait_seconds,
        on_disabled=republish,
    )

    def close() -> None:
        http.close()
        republish.close()
        engine.dispose()

    return serve_channel(
        service=SERVICES[kind],
        channel=kind,
        own=own,
        settings=settings,
        send=send,
        close=close,
        prepare=send.prepare,
        # A sender that died mid-send leaves the outcome unknown; receivers de-duplicate on
        # webhook-id (the Standard Webhooks contract), so sending again is safe for webhooks.
        # Slack does not de-duplicate: such a delivery is parked for an operator instead.
        resend_uncertain=kind == "webhook",
    )
