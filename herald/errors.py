"""Typed processing errors. Processing functions raise them; the Kafka adapter routes them:
a retryable error goes to the next retry tier, a permanent one to the dead-letter topic."""

from __future__ import annotations


class ProcessingError(Exception):
    """Base of the errors a processing function may raise for one record."""

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
