"""The email sender's pure parts (message building, address checks, SMTP reply mapping) and
its SMTP transport against an in-process SMTP server (aiosmtpd; no broker)."""

from __future__ import annotations

import smtplib
import socket
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from herald.devstack.process import free_port
from herald.errors import PermanentError, RetryableError
from services.email_sender import smtp as smtp_module
from services.email_sender.message import (
    build_message,
    envelope_sender,
    message_id,
    validate_address,
)
from services.email_sender.service import EmailSender
from services.email_sender.settings import EmailSenderSettings
from services.email_sender.smtp import SmtpEndpoint, SmtpTransport, smtp_error
from tests.samples import SAMPLES

FROM = "Herald <notifications@herald.local>"


def request(**changes: Any) -> dict[str, Any]:
    return {**SAMPLES["herald.DeliveryRequest"], "delivery_id": str(uuid.uuid4()), **changes}


def parsed(message: bytes) -> EmailMessage:
    """The message as a receiver sees it after the wire."""
    result = message_from_bytes(message, policy=default)
    assert isinstance(result, EmailMessage)
    return result


def test_multipart_message_with_text_and_html() -> None:
    req = request(subject="Café news ☕", body_text="Hello\nworld", body_html="<p>Hello</p>")
    raw = build_message(req, from_header=FROM)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert raw.isascii()  # no relay needs 8BITMIME or SMTPUTF8
    received = parsed(raw)
    assert not received.defects
    assert received["Message-ID"] == f"<{req['delivery_id']}@herald>"
    assert received["From"] == FROM and received["To"] == req["destination"]
    assert received["Subject"] == "Café news ☕"
    assert received["Auto-Submitted"] == "auto-generated"
    assert received.get_content_type() == "multipart/alternative"
    text = received.get_body(("plain",))
    html = received.get_body(("html",))
    assert text is not None and html is not None
    # Bodies travel with CRLF line ends; a receiver reads them as lines.
    assert text.get_content().splitlines() == ["Hello", "world"]
    assert html.get_content().splitlines() == ["<p>Hello</p>"]


def test_text_only_message_without_html() -> None:
    received = parsed(build_message(request(body_html=None), from_header=FROM))
    assert received.get_content_type() == "text/plain"
    assert not received.is_multipart()


@pytest.mark.parametrize(
    "body",
    [
        "plain ascii",
        "Grüße aus Köln ☕\nzweite Zeile",
        "x" * 2_000,  # longer than a line may be: base64
        "a\r\nb\rc\nd\n",
        ".leading dot\n.\nend",  # SMTP dot-stuffing is the transport's job
        "",
    ],
)
def test_bodies_survive_the_wire(body: str) -> None:
    received = parsed(build_message(request(body_text=body, body_html=None), from_header=FROM))
    assert not received.defects
    text = received.get_body(("plain",))
    assert text is not None
    assert text.get_content().splitlines() == body.splitlines()


def test_headers_are_encoded_and_folded() -> None:
    subject = "Ein sehr langer Betreff über Kaffee ☕ " * 6
    raw = build_message(
        request(subject=subject, locale="de"), from_header="Zoë Herald <n@herald.local>"
    )
    assert all(len(line) <= 78 for line in raw.split(b"\r\n")[:20] if b":" in line[:30])
    received = parsed(raw)
    assert received["Subject"] == subject
    assert received["From"].addresses[0].display_name == "Zoë Herald"
    assert received["From"].addresses[0].addr_spec == "n@herald.local"
    assert received["Content-Language"] == "de"


def test_message_id_is_the_delivery_id() -> None:
    assert message_id("abc") == "<abc@herald>"


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "Hi\r\nBcc: victim@example.test"},
        {"subject": "Hi\nX-Evil: 1"},
        {"destination": "a@example.test\r\nBcc: victim@example.test"},
        {"locale": "en\nX-Evil: 1"},
    ],
)
def test_header_injection_is_refused(changes: dict[str, str]) -> None:
    with pytest.raises(PermanentError, match="header injection") as caught:
        build_message(request(**changes), from_header=FROM)
    assert caught.value.error_class == "email.header_injection"


def test_header_injection_in_from_is_refused() -> None:
    with pytest.raises(PermanentError, match="header injection"):
        build_message(request(), from_header="Herald <a@b.test>\r\nBcc: x@y.test")


@pytest.mark.parametrize(
    "address",
    ["ada@example.com", "t-1f2e@example.test", "first.last+tag@mail.example.co.uk", "a@b.io"],
)
def test_valid_addresses(address: str) -> None:
    assert validate_address(address) == address


@pytest.mark.parametrize(
    "address",
    [
        "",
        "ada",
        "ada@",
        "@example.com",
        "ada@localhost",
        "ada@@example.com",
        "ada example@example.com",
        ".ada@example.com",
        "ada..b@example.com",
        "ada@-example.com",
        "ada@example..com",
        "ada@1.2.3.4",
        "Ada <ada@example.com>",
        "a" * 65 + "@example.com",
        "ada@" + "a" * 250 + ".com",
        "adä@example.com",
    ],
)
def test_invalid_addresses(address: str) -> None:
    with pytest.raises(PermanentError) as caught:
        validate_address(address)
    assert caught.value.error_class == "email.invalid_address"


def test_envelope_sender_is_the_bare_from_address() -> None:
    assert envelope_sender(FROM) == "notifications@herald.local"
    assert envelope_sender("n@herald.local") == "n@herald.local"
    with pytest.raises(PermanentError):
        envelope_sender("Herald <not an address>")


@pytest.mark.parametrize(
    ("exc", "kind", "error_class"),
    [
        (smtplib.SMTPRecipientsRefused({"a@x.test": (550, b"no such user")}), PermanentError,
         "smtp.5xx"),
        (smtplib.SMTPRecipientsRefused({"a@x.test": (451, b"try later")}), RetryableError,
         "smtp.4xx"),
        (smtplib.SMTPRecipientsRefused({"a@x.test": (421, b"closing")}), RetryableError,
         "smtp.4xx"),
        (smtplib.SMTPSenderRefused(553, b"bad sender", "n@h.test"), PermanentError, "smtp.5xx"),
        (smtplib.SMTPDataError(552, b"too big"), PermanentError, "smtp.5xx"),
        (smtplib.SMTPDataError(452, b"no space"), RetryableError, "smtp.4xx"),
        (smtplib.SMTPAuthenticationError(535, b"bad credentials"), PermanentError, "smtp.5xx"),
        (smtplib.SMTPServerDisconnected("gone"), RetryableError, "smtp.disconnected"),
        (ConnectionRefusedError(111, "refused"), RetryableError, "smtp.connection_refused"),
        (TimeoutError("timed out"), RetryableError, "smtp.timeout"),
        (ConnectionResetError(104, "reset"), RetryableError, "smtp.connection"),
        (smtplib.SMTPNotSupportedError("SMTPUTF8"), PermanentError, "smtp.not_supported"),
    ],
)  # fmt: skip
def test_smtp_errors_are_typed(exc: Exception, kind: type, error_class: str) -> None:
    error = smtp_error(exc)
    assert type(error) is kind
    assert error.error_class == error_class


def test_smtp_reply_text_is_kept() -> None:
    error = smtp_error(smtplib.SMTPRecipientsRefused({"a@x.test": (550, b"5.1.1 no such user")}))
    assert (
        "550" in error.message and "no such user" in error.message and "a@x.test" in error.message
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://127.0.0.1:12525", SmtpEndpoint("smtp", "127.0.0.1", 12525)),
        ("smtp://mail.example.com", SmtpEndpoint("smtp", "mail.example.com", 25)),
        ("smtps://u%40x:p%2Fw@mail.example.com", SmtpEndpoint("smtps", "mail.example.com", 465,
                                                             "u@x", "p/w")),
        ("smtp+starttls://mail.example.com", SmtpEndpoint("smtp+starttls", "mail.example.com",
                                                          587)),
    ],
)  # fmt: skip
def test_smtp_url(url: str, expected: SmtpEndpoint) -> None:
    assert SmtpEndpoint.from_url(url) == expected


@pytest.mark.parametrize("url", ["http://mail.example.com", "smtp://", "mail.example.com"])
def test_bad_smtp_url(url: str) -> None:
    with pytest.raises(ValueError):
        SmtpEndpoint.from_url(url)


def test_settings_defaults_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert EmailSenderSettings().metrics_port == 9102
    monkeypatch.setenv("EMAIL_SENDER_BATCH_SIZE", "0")
    with pytest.raises(ValueError):
        EmailSenderSettings()


# --- the transport against a real (in-process) SMTP server -------------------------------------


class Recorder:
    """An SMTP server's handler: counts sessions, refuses listed recipients, keeps messages."""

    def __init__(self, pipelining: bool = False) -> None:
        self.sessions = 0
        self.refuse: dict[str, str] = {}
        self.refuse_data: str | None = None
        self.messages: list[Envelope] = []
        self.pipelining = pipelining

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list:
        self.sessions += 1
        session.host_name = hostname
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse_data:
            return self.refuse_data
        self.messages.append(envelope)
        return "250 accepted"


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelined"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[tuple[Recorder, SmtpEndpoint]]:
    """A relay without PIPELINING (smtplib's sendmail) and one with it (send_pipelined)."""
    recorder = Recorder(pipelining=request.param)
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield recorder, SmtpEndpoint("smtp", "127.0.0.1", port)
    finally:
        controller.stop()


def test_transport_reuses_one_connection(smtp_server: tuple[Recorder, SmtpEndpoint]) -> None:
    recorder, endpoint = smtp_server
    transport = SmtpTransport(endpoint, timeout=5, idle_check_seconds=60)
    send = EmailSender(transport, FROM)
    requests = [request(destination=f"r{n}@example.test") for n in range(3)]
    ids = [send(req) for req in requests]
    transport.close()
    assert ids == [f"<{req['delivery_id']}@herald>" for req in requests]
    assert transport.connections_opened == 1 and recorder.sessions == 1
    assert [env.rcpt_tos for env in recorder.messages] == [[r["destination"]] for r in requests]
    assert {env.mail_from for env in recorder.messages} == {"notifications@herald.local"}


def test_transport_keeps_the_connection_after_a_refusal(
    smtp_server: tuple[Recorder, SmtpEndpoint],
) -> None:
    recorder, endpoint = smtp_server
    recorder.refuse = {"busy@example.test": "451 4.3.0 try later", "gone@example.test": "550 no"}
    transport = SmtpTransport(endpoint, timeout=5, idle_check_seconds=60)
    send = EmailSender(transport, FROM)
    with pytest.raises(RetryableError) as busy:
        send(request(destination="busy@example.test"))
    with pytest.raises(PermanentError) as gone:
        send(request(destination="gone@example.test"))
    send(request(destination="fine@example.test"))
    transport.close()
    assert (busy.value.error_class, gone.value.error_class) == ("smtp.4xx", "smtp.5xx")
    assert transport.connections_opened == 1
    assert [env.rcpt_tos for env in recorder.messages] == [["fine@example.test"]]


def test_a_refused_message_leaves_the_session_usable(
    smtp_server: tuple[Recorder, SmtpEndpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, endpoint = smtp_server
    pipelined: list[str] = []
    real = smtp_module.send_pipelined

    def spy(smtp: smtplib.SMTP, sender: str, recipient: str, message: bytes) -> None:
        pipelined.append(recipient)
        real(smtp, sender, recipient, message)

    monkeypatch.setattr(smtp_module, "send_pipelined", spy)
    transport = SmtpTransport(endpoint, timeout=5, idle_check_seconds=60)
    send = EmailSender(transport, FROM)
    recorder.refuse_data = "554 5.6.0 message refused"
    with pytest.raises(PermanentError) as refused:
        send(request(destination="one@example.test"))
    recorder.refuse_data = None
    body = ".starts with a dot\n..two\n.\nend"
    send(request(destination="two@example.test", body_text=body, body_html=None))
    transport.close()
    assert refused.value.error_class == "smtp.5xx"
    assert transport.connections_opened == 1
    # Pipelined exactly when the relay offers it.
    assert pipelined == (["one@example.test", "two@example.test"] if recorder.pipelining else [])
    (kept,) = recorder.messages
    assert kept.rcpt_tos == ["two@example.test"]
    text = parsed(kept.original_content or b"").get_body(("plain",))
    assert text is not None and text.get_content().splitlines() == body.splitlines()


def test_transport_reconnects_after_the_connection_broke(
    smtp_server: tuple[Recorder, SmtpEndpoint],
) -> None:
    recorder, endpoint = smtp_server
    transport = SmtpTransport(endpoint, timeout=5, idle_check_seconds=0)
    send = EmailSender(transport, FROM)
    send(request(destination="one@example.test"))
    # The connection dies under the transport (a server restart, an idle timeout, NAT).
    smtp = transport._smtp
    assert smtp is not None and smtp.sock is not None
    smtp.sock.shutdown(socket.SHUT_RDWR)
    send(request(destination="two@example.test"))  # NOOP notices; a new session sends it
    transport.close()
    assert transport.connections_opened == 2
    assert [env.rcpt_tos for env in recorder.messages] == [
        ["one@example.test"],
        ["two@example.test"],
    ]


def test_transport_failure_without_server_is_retryable() -> None:
    transport = SmtpTransport(SmtpEndpoint("smtp", "127.0.0.1", free_port()), timeout=2)
    with pytest.raises(RetryableError) as caught:
        EmailSender(transport, FROM)(request())
    assert caught.value.error_class == "smtp.unreachable"
