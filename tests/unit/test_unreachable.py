"""Failover on real sockets: a provider that cannot be reached (refused, or accepting TCP but
never answering the greeting or the connect) is certain not to have the message, so the chain
sends through the next provider at once; a provider that took the request and then went
silent may have it, so the delivery stays pinned to it. No broker: the SMTP relay is an
in-process aiosmtpd server, the SMS provider a thread answering HTTP by hand."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from herald.devstack.process import free_port
from herald.errors import RetryableError
from herald.sender.pool import Sent
from herald.sender.providers import ProviderChain
from herald.settings import SmsSettings
from services.email_sender.service import EmailSender
from services.email_sender.service import uncertain as smtp_uncertain
from services.email_sender.smtp import SmtpEndpoint, SmtpTransport
from services.sms_sender.client import SmsApi
from services.sms_sender.service import SmsSender
from services.sms_sender.service import uncertain as sms_uncertain
from tests.samples import SAMPLES

FROM = "Herald <notifications@herald.local>"


def request(channel: str, destination: str) -> dict[str, Any]:
    return {
        **SAMPLES["herald.DeliveryRequest"],
        "channel": channel,
        "delivery_id": str(uuid.uuid4()),
        "destination": destination,
    }


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung relay or provider)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


class Relay:
    """An SMTP server's handler that keeps what it was given."""

    def __init__(self) -> None:
        self.messages: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 accepted"


@pytest.fixture
def relay() -> Iterator[tuple[Relay, int]]:
    handler = Relay()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def smtp_send(port: int, timeout: float = 0.5) -> EmailSender:
    transport = SmtpTransport(SmtpEndpoint("smtp", "127.0.0.1", port), timeout=timeout)
    return EmailSender(transport, FROM)


def test_a_relay_that_never_greets_is_unreachable_and_certain(silent_server: int) -> None:
    with pytest.raises(RetryableError) as caught:
        smtp_send(silent_server)(request("email", "ada@example.com"))
    assert caught.value.error_class == "smtp.unreachable"
    assert not smtp_uncertain(caught.value)


@pytest.mark.parametrize("primary", ["silent", "closed"])
def test_email_fails_over_when_the_primary_relay_cannot_be_reached(
    primary: str, silent_server: int, relay: tuple[Relay, int]
) -> None:
    handler, port = relay
    primary_port = silent_server if primary == "silent" else free_port()
    chain = ProviderChain(
        "email",
        [("smtp-a", smtp_send(primary_port)), ("smtp-b", smtp_send(port))],
        uncertain=smtp_uncertain,
    )
    sent = chain(request("email", "ada@example.com"))
    assert isinstance(sent, Sent) and sent.provider == "smtp-b"
    assert [env.rcpt_tos for env in handler.messages] == [["ada@example.com"]]


def sms_api(port: int, *, timeout: float = 0.5, connect_timeout: float = 0.5) -> SmsApi:
    settings = SmsSettings(sms_api_url=f"http://127.0.0.1:{port}")
    return SmsApi(settings, timeout=timeout, connect_timeout=connect_timeout)


def test_sms_to_a_closed_port_is_unreachable_and_certain() -> None:
    api = sms_api(free_port())
    with pytest.raises(RetryableError) as caught:
        api.create_message(to="+491701234567", body="hi", idempotency_key="k")
    api.close()
    assert caught.value.error_class == "sms.unreachable"
    assert not sms_uncertain(caught.value)


def test_sms_without_an_answer_after_the_request_is_uncertain(silent_server: int) -> None:
    # The provider took the request and went quiet: it may have sent the SMS.
    api = sms_api(silent_server)
    with pytest.raises(RetryableError) as caught:
        api.create_message(to="+491701234567", body="hi", idempotency_key="k")
    api.close()
    assert caught.value.error_class == "sms.timeout"
    assert sms_uncertain(caught.value)


@pytest.fixture
def sms_provider() -> Iterator[tuple[list[bytes], int]]:
    """A one-request-per-connection HTTP server answering like Twilio."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    requests: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except TimeoutError:
                continue
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(body) < length:
                    body += conn.recv(65536)
                requests.append(body)
                answer = b'{"sid": "SM1", "status": "queued"}'
                conn.sendall(
                    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: "
                    + str(len(answer)).encode()
                    + b"\r\n\r\n"
                    + answer
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield requests, server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def test_sms_fails_over_from_a_closed_port_but_not_from_a_silent_provider(
    silent_server: int, sms_provider: tuple[list[bytes], int]
) -> None:
    received, port = sms_provider
    apis = [sms_api(free_port()), sms_api(port)]
    chain = ProviderChain(
        "sms",
        [("sms-a", SmsSender(apis[0], 10)), ("sms-b", SmsSender(apis[1], 10))],
        uncertain=sms_uncertain,
    )
    sent = chain(request("sms", "+491701234567"))
    assert isinstance(sent, Sent) and sent.provider == "sms-b"
    assert len(received) == 1

    silent = [sms_api(silent_server), sms_api(port)]
    pinned = ProviderChain(
        "sms",
        [("sms-a", SmsSender(silent[0], 10)), ("sms-b", SmsSender(silent[1], 10))],
        uncertain=sms_uncertain,
    )
    with pytest.raises(RetryableError) as caught:
        pinned(request("sms", "+491701234567"))
    assert caught.value.error_class == "sms.timeout"
    assert len(received) == 1  # not sent through sms-b: sms-a may have it
    for api in (*apis, *silent):
        api.close()
