"""Webhooks over HTTPS, against real TLS servers on loopback.

Each module run makes its own PKI with the ``openssl`` command line (Debian's
``ca-certificates`` depends on it): a test CA, a server certificate it signed for
``localhost``/127.0.0.1, an expired one, one it signed for another name, a self-signed one,
and a second CA with a certificate of its own. The servers answer with
examples/webhook_receiver.py's handler, so a 204 means the receiver checked the Standard
Webhooks signature.

The sender trusts what :func:`ssl.create_default_context` loads when its
:class:`~services.webhook_sender.client.EndpointHttp` is made: the system's CA file and CA
directory, ``SSL_CERT_FILE`` replacing the first and ``SSL_CERT_DIR`` the second (OpenSSL's
variables).
Most tests call the send function directly (no broker, no database); the last one runs the
real webhook sender process on the local stack.
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from examples.webhook_receiver import make_handler
from herald.errors import EndpointRetryableError, PermanentError
from herald.settings import DatabaseSettings, KafkaSettings
from herald.streaming import H_ERROR_CLASS
from herald.webhooks import new_secret
from schemas import Catalogue
from services.webhook_sender.client import EndpointHttp
from services.webhook_sender.endpoints import Endpoint, EndpointStore
from services.webhook_sender.service import EndpointSender
from tests.integration.delivery_util import (
    dead_letters,
    delivery_request,
    publish,
    wait_for,
    wait_for_statuses,
)
from tests.integration.services import ServiceProcess
from tests.integration.test_webhook_sender import add_endpoint, start, user

pytestmark = pytest.mark.integration

_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


@dataclass(frozen=True)
class Cert:
    pem: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Cert  # the CA the tests trust (SSL_CERT_FILE)
    server: Cert  # signed by ``ca`` for localhost and 127.0.0.1
    other_host: Cert  # signed by ``ca`` for wrong.example only
    self_signed: Cert  # for localhost and 127.0.0.1, signed by its own key
    expired: Cert  # signed by ``ca`` for localhost and 127.0.0.1, expired yesterday
    second_ca: Cert  # another CA (SSL_CERT_DIR in one test)
    second_server: Cert  # signed by ``second_ca`` for localhost and 127.0.0.1


def _openssl(directory: Path, *args: str | Path) -> None:
    subprocess.run(
        ["openssl", *map(str, args)], cwd=directory, check=True, capture_output=True, timeout=60
    )


def _make_ca(directory: Path, name: str) -> Cert:
    cert = Cert(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl(
        directory, "req", "-x509", *_EC_KEY, "-keyout", cert.key, "-out", cert.pem,
        "-days", "2", "-subj", f"/CN=Herald test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert


def _make_server(
    directory: Path, name: str, hosts: list[str], ca: Cert | None, days: int = 2
) -> Cert:
    """A server certificate for ``hosts`` (names or addresses) signed by ``ca``, or by its own
    key when ``ca`` is None, valid from now for ``days`` (-1: it expired yesterday)."""

    def alt_name(host: str) -> str:
        try:
            return f"IP:{ipaddress.ip_address(host)}"
        except ValueError:
            return f"DNS:{host}"

    cert = Cert(directory / f"{name}.pem", directory / f"{name}.key")
    extensions = (
        "-subj", f"/CN={hosts[0]}",
        "-addext", "subjectAltName=" + ",".join(map(alt_name, hosts)),
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "extendedKeyUsage=serverAuth",
    )  # fmt: skip
    if ca is None:
        _openssl(directory, "req", "-x509", *_EC_KEY, "-keyout", cert.key, "-out", cert.pem,
                 "-days", str(days), *extensions)  # fmt: skip
        return cert
    csr = directory / f"{name}.csr"
    _openssl(directory, "req", "-new", *_EC_KEY, "-keyout", cert.key, "-out", csr, *extensions)
    _openssl(
        directory, "x509", "-req", "-in", csr, "-CA", ca.pem, "-CAkey", ca.key,
        "-CAcreateserial", "-days", str(days), "-copy_extensions", "copy", "-out", cert.pem,
    )  # fmt: skip
    return cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.fail("these tests make their certificates with the openssl command (apt openssl)")
    directory = tmp_path_factory.mktemp("pki")
    loopback = ["localhost", "127.0.0.1"]
    ca, second_ca = _make_ca(directory, "ca"), _make_ca(directory, "second-ca")
    return Pki(
        ca=ca,
        server=_make_server(directory, "server", loopback, ca),
        other_host=_make_server(directory, "other-host", ["wrong.example"], ca),
        self_signed=_make_server(directory, "self-signed", loopback, None),
        expired=_make_server(directory, "expired", loopback, ca, days=-1),
        second_ca=second_ca,
        second_server=_make_server(directory, "second-server", loopback, second_ca),
    )


@pytest.fixture
def trust(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No CA setting from the environment the tests run in: each test sets its own."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return monkeypatch


class TlsReceiver:
    """examples/webhook_receiver.py's handler behind TLS on 127.0.0.1 (HTTP/1.1 keep-alive):
    what it answered to each request, the handshakes it completed and those that failed."""

    def __init__(self, secret: str, cert: Cert) -> None:
        #: (path, status answered, webhook-id) per request; 204: signature verified.
        self.answers: list[tuple[str, int, str | None]] = []
        #: Connections whose TLS handshake completed / failed (the error the server saw).
        self.connections = 0
        self.refused: list[str] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert.pem, cert.key)
        self.server = _TlsServer(self, context, _recording(make_handler(secret), self.answers))
        self.port = self.server.server_address[1]

    def url(self, host: str = "localhost", path: str = "/hooks/https") -> str:
        return f"https://{host}:{self.port}{path}"


def _recording(
    base: type[BaseHTTPRequestHandler], answers: list[tuple[str, int, str | None]]
) -> type[BaseHTTPRequestHandler]:
    """``base`` speaking HTTP/1.1, recording each answer, logging nothing."""

    def send_response(self: BaseHTTPRequestHandler, code: int, message: str | None = None) -> None:
        answers.append((self.path, code, self.headers.get("webhook-id")))
        base.send_response(self, code, message)
        if code != 204:
            self.send_header("Content-Length", "0")  # the example's 401 has no body

    def log_message(self: BaseHTTPRequestHandler, format: str, *args: Any) -> None:
        pass

    attributes = {
        "protocol_version": "HTTP/1.1",
        "send_response": send_response,
        "log_message": log_message,
    }
    return type("Recording", (base,), attributes)


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        receiver: TlsReceiver,
        context: ssl.SSLContext,
        handler: type[BaseHTTPRequestHandler],
    ) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.receiver = receiver
        self.context = context

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        sock.settimeout(5)
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
        except OSError as exc:  # ssl.SSLError included; socketserver drops the connection
            self.receiver.refused.append(str(exc))
            sock.close()
            raise
        self.receiver.connections += 1
        return tls, address


@contextmanager
def tls_receiver(secret: str, cert: Cert) -> Iterator[TlsReceiver]:
    receiver = TlsReceiver(secret, cert)
    thread = threading.Thread(
        target=receiver.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(5)


class FixedEndpoint(EndpointStore):
    """Every user's endpoint is ``url`` with ``secret``, without PostgreSQL."""

    def __init__(self, url: str, secret: str) -> None:
        self.endpoint = Endpoint(url, secret, True)

    def prefetch(self, user_ids: Iterable[str]) -> None:
        pass

    def get(self, user_id: str) -> Endpoint | None:
        return self.endpoint


@contextmanager
def webhook_sender(url: str, secret: str) -> Iterator[EndpointSender]:
    """The webhook send function to ``url``, its client made now (so it trusts what the
    environment says now), local mode (loopback allowed)."""
    http = EndpointHttp("webhook", timeout=5, connect_timeout=5, allow_private=True)
    try:
        yield EndpointSender("webhook", FixedEndpoint(url, secret), http)
    finally:
        http.close()


def test_a_signed_webhook_reaches_an_https_endpoint_whose_ca_is_in_ssl_cert_file(
    pki: Pki, trust: pytest.MonkeyPatch
) -> None:
    trust.setenv("SSL_CERT_FILE", str(pki.ca.pem))
    secret = new_secret()
    with tls_receiver(secret, pki.server) as receiver:
        requests = [delivery_request("webhook", receiver.url(), body_text=f"{i}") for i in range(3)]
        with webhook_sender(receiver.url(), secret) as send:
            sent = [send(request) for request in requests]
        by_address = delivery_request("webhook", receiver.url("127.0.0.1", "/hooks/by-address"))
        with webhook_sender(receiver.url("127.0.0.1", "/hooks/by-address"), secret) as send:
            sent.append(send(by_address))
        # A receiver holding another secret answers 401: the 204s above were verified.
        forged = delivery_request("webhook", receiver.url(path="/hooks/forged"))
        with (
            webhook_sender(receiver.url(path="/hooks/forged"), new_secret()) as send,
            pytest.raises(PermanentError) as refused,
        ):
            send(forged)

    ids = [request["delivery_id"] for request in [*requests, by_address]]
    assert [(s.message_id, s.provider) for s in sent] == [(i, "webhook") for i in ids]
    assert receiver.answers == [
        *(("/hooks/https", 204, i) for i in ids[:3]),
        ("/hooks/by-address", 204, ids[3]),
        ("/hooks/forged", 401, forged["delivery_id"]),
    ]
    assert refused.value.error_class == "webhook.4xx"
    # One handshake per client: the three posts to localhost shared a keep-alive connection.
    assert (receiver.connections, receiver.refused) == (3, [])


@pytest.mark.parametrize(
    ("case", "trusted", "host", "reason"),
    [
        ("server", None, "localhost", "unable to get local issuer certificate"),
        ("self_signed", "ca", "localhost", "self-signed certificate"),
        ("expired", "ca", "localhost", "certificate has expired"),
        ("other_host", "ca", "localhost", "Hostname mismatch"),
        ("other_host", "ca", "127.0.0.1", "IP address mismatch"),
    ],
    ids=["ca-not-trusted", "self-signed", "expired", "wrong-host-name", "wrong-address"],
)
def test_a_certificate_the_sender_does_not_trust_is_not_sent_to(
    pki: Pki, trust: pytest.MonkeyPatch, case: str, trusted: str | None, host: str, reason: str
) -> None:
    if trusted is not None:
        trust.setenv("SSL_CERT_FILE", str(pki.ca.pem))
    secret = new_secret()
    with tls_receiver(secret, getattr(pki, case)) as receiver:
        url = receiver.url(host)
        with webhook_sender(url, secret) as send, pytest.raises(EndpointRetryableError) as failed:
            send(delivery_request("webhook", url))
        wait_for(lambda: receiver.refused, 5, "the server to see the handshake fail")

    # Retryable (the next tier, then the DLQ as dead), not counted toward the sender's breaker
    # (an EndpointRetryableError), and classed as a certificate failure (webhook.tls).
    error = failed.value
    assert (error.error_class, error.provider) == ("webhook.tls", "webhook")
    assert "certificate" in error.message and reason in error.message
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
    # Nothing went over the connection: no request reached the receiver.
    assert (receiver.answers, receiver.connections, len(receiver.refused)) == ([], 0, 1)


def test_ssl_cert_file_and_ssl_cert_dir_add_up_and_are_read_when_the_client_is_made(
    pki: Pki, trust: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # SSL_CERT_DIR: a directory of CA certificates named by subject hash (``openssl rehash``).
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pki.second_ca.pem)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    shutil.copy(pki.second_ca.pem, cert_dir / f"{subject_hash}.0")
    secret = new_secret()
    with (
        tls_receiver(secret, pki.server) as first,
        tls_receiver(secret, pki.second_server) as second,
    ):
        # Made before the variables are set: it keeps the system's store.
        with webhook_sender(first.url(), secret) as before:
            trust.setenv("SSL_CERT_FILE", str(pki.ca.pem))
            trust.setenv("SSL_CERT_DIR", str(cert_dir))
            with pytest.raises(EndpointRetryableError, match=r"certificate of .* was refused"):
                before(delivery_request("webhook", first.url()))
        for receiver in (first, second):  # a CA from the file, a CA from the directory
            with webhook_sender(receiver.url(), secret) as send:
                request = delivery_request("webhook", receiver.url())
                assert send(request).message_id == request["delivery_id"]
                assert receiver.answers == [("/hooks/https", 204, request["delivery_id"])]


def test_the_sender_service_trusts_ssl_cert_file_and_retries_a_bad_certificate_to_the_dlq(
    pki: Pki,
    trust: pytest.MonkeyPatch,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    good_secret, bad_secret, good_user, bad_user = new_secret(), new_secret(), user(), user()
    with (
        tls_receiver(good_secret, pki.server) as good,
        tls_receiver(bad_secret, pki.other_host) as bad,
    ):
        add_endpoint(db_settings, good_user, "webhook", good.url(), good_secret)
        add_endpoint(db_settings, bad_user, "webhook", bad.url(), bad_secret)
        to_good = delivery_request("webhook", good.url(), user_id=good_user, subject="Hello")
        to_bad = delivery_request("webhook", bad.url(), user_id=bad_user, subject="Hello")
        publish(kafka_settings, topics.deliveries_webhook.name, [to_good, to_bad])
        sender = start(run_service, kafka_settings, db_settings, SSL_CERT_FILE=str(pki.ca.pem))
        grouped = wait_for_statuses(
            kafka_settings, topics, {to_good["delivery_id"]: "sent", to_bad["delivery_id"]: "dead"}
        )
        tiers = topics.deliveries_webhook.retry_topic_names
        attempts = len(tiers) + 1
        wait_for(lambda: len(bad.refused) >= attempts, 10, "every attempt's handshake")
        assert sender.proc.poll() is None

    (sent,) = grouped[to_good["delivery_id"]]
    assert (sent["status"], sent["attempt"], sent["provider"]) == ("sent", 1, "webhook")
    assert good.answers == [("/hooks/https", 204, to_good["delivery_id"])]
    # Every attempt was refused in the handshake, so nothing reached the other server; the
    # failure is retried through every tier, then parked as dead.
    failures = grouped[to_bad["delivery_id"]]
    assert [(e["status"], e["attempt"]) for e in failures] == [
        *(("retrying", n) for n in range(1, attempts)),
        ("dead", attempts),
    ]
    assert {e["error_class"] for e in failures} == {"webhook.tls"}
    assert all("Hostname mismatch" in e["error_message"] for e in failures)
    assert (bad.answers, bad.connections, len(bad.refused)) == ([], 0, attempts)
    ((parked, headers),) = dead_letters(kafka_settings, topics.deliveries_webhook.dlq_name)
    assert parked["delivery_id"] == to_bad["delivery_id"]
    assert headers[H_ERROR_CLASS] == "webhook.tls"
