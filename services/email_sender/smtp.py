"""SMTP transports: one connection kept open across records and batches, and a pool of them.

Opening an SMTP session (TCP, greeting, EHLO, maybe TLS and AUTH) costs more than sending one
message, so the transport keeps its connection, checks it with NOOP after it sat idle, and
reconnects when the server dropped it. :class:`SmtpPool` holds several, one per message in
flight, each used by one thread at a time. Every failure is translated into a typed error by
:func:`smtp_error`: a 5xx reply is permanent, a 4xx reply or a network problem is retryable.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import smtplib
import ssl
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from herald.errors import PermanentError, ProcessingError, RetryableError

log = logging.getLogger(__name__)

_SCHEMES = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


@dataclass(frozen=True)
class SmtpEndpoint:
    """Where and how to connect, parsed from ``SMTP_URL``.

    ``smtp://host:port`` (plain), ``smtp+starttls://`` (STARTTLS required) or ``smtps://``
    (TLS from the start); ``user:password@`` in the URL logs in.
    """

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SmtpEndpoint:
        """Parse ``url``; ValueError for an unknown scheme or a missing host."""
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(f"SMTP_URL scheme must be one of {sorted(_SCHEMES)}: {url!r}")
        if not parts.hostname:
            raise ValueError(f"SMTP_URL has no host: {url!r}")
        return cls(
            scheme=parts.scheme,
            host=parts.hostname,
            port=parts.port or _SCHEMES[parts.scheme],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


def reply_error(code: int, text: bytes | str, what: str) -> ProcessingError:
    """The typed error for an SMTP reply: 5xx permanent, anything else retryable."""
    detail = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    message = f"{what}: {code} {detail}".strip()
    if 500 <= code < 600:
        return PermanentError(message, error_class="smtp.5xx")
    if 400 <= code < 500:
        return RetryableError(message, error_class="smtp.4xx")
    return RetryableError(message, error_class="smtp.unexpected_reply")


def smtp_error(exc: BaseException) -> ProcessingError:
    """Translate an smtplib/socket exception into a RetryableError or PermanentError."""
    # smtplib's exceptions are OSErrors: test them before the generic network errors.
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        # One recipient per message, so one refusal; its code decides.
        for recipient, (code, text) in exc.recipients.items():
            return reply_error(code, text, f"recipient {recipient} refused")
        return RetryableError("every recipient refused", error_class="smtp.unexpected_reply")
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return reply_error(exc.smtp_code, exc.smtp_error, f"sender {exc.sender} refused")
    if isinstance(exc, smtplib.SMTPDataError):
        return reply_error(exc.smtp_code, exc.smtp_error, "message refused")
    if isinstance(exc, smtplib.SMTPResponseException):
        return reply_error(exc.smtp_code, exc.smtp_error, type(exc).__name__)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentError(str(exc), error_class="smtp.not_supported")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return RetryableError(f"server disconnected: {exc}", error_class="smtp.disconnected")
    if isinstance(exc, TimeoutError):
        return RetryableError(f"timed out: {exc}", error_class="smtp.timeout")
    if isinstance(exc, ConnectionRefusedError):
        return RetryableError(f"connection refused: {exc}", error_class="smtp.connection_refused")
    if isinstance(exc, OSError):
        return RetryableError(f"{type(exc).__name__}: {exc}", error_class="smtp.connection")
    return RetryableError(f"{type(exc).__name__}: {exc}", error_class="smtp.error")


_LEADING_DOT = re.compile(rb"(?m)^\.")


def send_pipelined(smtp: smtplib.SMTP, sender: str, recipient: str, message: bytes) -> None:
    """``smtp.sendmail(sender, [recipient], message)`` in two round trips instead of four,
    for a relay that offers PIPELINING (RFC 2920): MAIL, RCPT and DATA go in one write and
    their three replies are read together, then the message and its final reply.

    Raises what ``sendmail`` raises (SMTPSenderRefused, SMTPRecipientsRefused, SMTPDataError)
    and leaves the session as it would: reset after a refusal, closed after a 421.
    ``sender`` and ``recipient`` are plain addresses (checked by the message builder).
    """
    size = f" SIZE={len(message)}" if smtp.has_extn("size") else ""
    smtp.send(f"MAIL FROM:<{sender}>{size}\r\nRCPT TO:<{recipient}>\r\nDATA\r\n")
    mail, rcpt, data = smtp.getreply(), smtp.getreply(), smtp.getreply()
    if data[0] == 354 and (mail[0] != 250 or rcpt[0] not in (250, 251)):
        # The relay opened DATA although the envelope failed (RFC 2920 allows it): end it
        # with no content; its reply does not matter, the refusal below does.
        smtp.send(b".\r\n")
        smtp.getreply()
    failure: smtplib.SMTPException | None = None
    if mail[0] != 250:
        failure = smtplib.SMTPSenderRefused(mail[0], mail[1], sender)
    elif rcpt[0] not in (250, 251):
        failure = smtplib.SMTPRecipientsRefused({recipient: rcpt})
    elif data[0] != 354:
        failure = smtplib.SMTPDataError(data[0], data[1])
    if failure is not None:
        _reset(smtp, 421 in (mail[0], rcpt[0], data[0]))
        raise failure
    body = _LEADING_DOT.sub(b"..", message)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    smtp.send(body + b".\r\n")
    code, reply = smtp.getreply()
    if code != 250:
        _reset(smtp, code == 421)
        raise smtplib.SMTPDataError(code, reply)


def _reset(smtp: smtplib.SMTP, closing: bool) -> None:
    """After a refusal, what ``sendmail`` does: close on 421 (the relay is closing), else RSET
    (a relay gone meanwhile only leaves the session closed)."""
    if closing:
        smtp.close()
        return
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        smtp.rset()


class SmtpTransport:
    """One SMTP connection, opened on first use and reused until it breaks."""

    def __init__(
        self,
        endpoint: SmtpEndpoint,
        *,
        timeout: float = 10.0,
        idle_check_seconds: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.idle_check_seconds = idle_check_seconds
        self._smtp: smtplib.SMTP | None = None
        self._last_used = 0.0
        #: How many sessions were opened (for tests and logs: reuse means few).
        self.connections_opened = 0

    def send(self, message: bytes, *, envelope_from: str, recipient: str) -> None:
        """Send ``message`` to ``recipient``; raise RetryableError/PermanentError on failure."""
        try:
            smtp = self._connection()
        except (OSError, smtplib.SMTPException) as exc:
            # No session (refused, timed out, TLS, a 421 or 554 greeting, a failed AUTH), so
            # nothing was sent: retryable whatever the reply (the relay, not the message, is
            # at fault), and certain, so another relay may take the message at once.
            self.close()
            raise RetryableError(
                f"relay unreachable: {smtp_error(exc).message}", error_class="smtp.unreachable"
            ) from exc
        try:
            if smtp.has_extn("pipelining"):
                send_pipelined(smtp, envelope_from, recipient, message)
            else:
                smtp.sendmail(envelope_from, [recipient], message)
        except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused) as exc:
            # A refusal leaves the session usable (smtplib sent RSET, or closed it on 421).
            raise smtp_error(exc) from exc
        except (OSError, smtplib.SMTPException) as exc:
            # Disconnect, timeout, TLS failure: the session's state is unknown; start afresh.
            self.close()
            raise smtp_error(exc) from exc
        finally:
            self._last_used = time.monotonic()

    def close(self) -> None:
        """Say QUIT (best effort) and forget the connection."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()

    def _connection(self) -> smtplib.SMTP:
        smtp = self._smtp
        if smtp is not None and smtp.sock is None:  # smtplib closed it (a 421 reply)
            smtp = self._smtp = None
        if smtp is not None and time.monotonic() - self._last_used > self.idle_check_seconds:
            try:
                alive = smtp.noop()[0] == 250
            except (OSError, smtplib.SMTPException):
                alive = False
            if not alive:
                log.info("SMTP connection went stale; reconnecting")
                self.close()
                smtp = None
        if smtp is None:
            smtp = self._smtp = self._connect()
        return smtp

    def _connect(self) -> smtplib.SMTP:
        endpoint = self.endpoint
        smtp: smtplib.SMTP
        if endpoint.scheme == "smtps":
            smtp = smtplib.SMTP_SSL(
                endpoint.host,
                endpoint.port,
                timeout=self.timeout,
                context=ssl.create_default_context(),
            )
        else:
            smtp = smtplib.SMTP(endpoint.host, endpoint.port, timeout=self.timeout)
        try:
            smtp.ehlo()
            if endpoint.scheme == "smtp+starttls":
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if endpoint.username:
                smtp.login(endpoint.username, endpoint.password or "")
        except BaseException:
            smtp.close()
            raise
        self.connections_opened += 1
        log.info("SMTP connected", extra={"host": endpoint.host, "port": endpoint.port})
        return smtp


class SmtpPool:
    """``size`` :class:`SmtpTransport` s to one endpoint, lent to one sending thread each.

    A connection is opened on its first use, so an idle pool holds no sessions.
    """

    def __init__(self, endpoint: SmtpEndpoint, size: int, **options: float) -> None:
        self.transports = [SmtpTransport(endpoint, **options) for _ in range(size)]
        self._free: queue.SimpleQueue[SmtpTransport] = queue.SimpleQueue()
        for transport in self.transports:
            self._free.put(transport)

    @property
    def connections_opened(self) -> int:
        return sum(transport.connections_opened for transport in self.transports)

    def send(self, message: bytes, *, envelope_from: str, recipient: str) -> None:
        """Send on a free connection (waiting for one); like :meth:`SmtpTransport.send`."""
        transport = self._free.get()
        try:
            transport.send(message, envelope_from=envelope_from, recipient=recipient)
        finally:
            self._free.put(transport)

    def close(self) -> None:
        """Close every connection."""
        for transport in self.transports:
            transport.close()
