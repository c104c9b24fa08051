"""Typed processing errors. Processing functions raise them; the Kafka adapter routes them:
a retryable error goes to the next retry tier, a permanent one to the dead-letter topic."""

from __future__ import annotations


class ProcessingError(Exception):
    """Base of the errors a processing function may raise for one record."""

    #: The provider the failed send went to (``sms-a``, ``smtp-b``...; provider failover,
    #: :mod:`herald.sender.providers`), reported in the status event; None when unknown.
    provider: str | None = None
    #: True when the provider may have accepted the message anyway (a timeout after the
    #: request went out): the delivery is then not sent through another provider.
    uncertain_outcome: bool = False

    def __init__(self, message: str, *, error_class: str | None = None) -> None:
        super().__init__(message)
        #: A short, stable name for grouping in the DLQ and metrics (e.g. "smtp.4xx").
        self.error_class = error_class or type(self).__name__

    @property
    def message(self) -> str:
        return str(self)


class RetryableError(ProcessingError):
    """Transient: a timeout, a refused connection, a 4xx SMTP reply, an HTTP 5xx or 429."""


class PermanentError(ProcessingError):
    """Will never succeed as it is: invalid address, rendering error, unknown user or type."""


class EndpointRetryableError(RetryableError):
    """Transient, and the fault of one recipient's own endpoint (a user's webhook answering
    5xx, 429 or not at all), not of the channel's provider: retried through the tiers like any
    RetryableError, but it does not count toward the sender's breaker nor shrink its window,
    so one broken endpoint does not slow every other recipient's deliveries."""


class SkipDelivery(ProcessingError):
    """Not sent, by design rather than by failure (the recipient's endpoint was removed or
    disabled): the sender reports the delivery ``skipped``; no retry, no dead letter."""
