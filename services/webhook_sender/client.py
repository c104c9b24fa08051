"""POSTs to users' endpoints: keep-alive connections, each to an address netguard allowed.

Every send resolves the endpoint's host with :func:`herald.netguard.resolve_public` and
connects to the first address it returns (TLS still verifies the certificate for, and sends
SNI and ``Host`` with, the name), so a name re-pointed at a private address after the
endpoint was registered is refused (``endpoint.blocked``) instead of reached. Redirects are
never followed.

Each sending thread keeps its own keep-alive connections (``http.client``: a tenth of httpx's
CPU per request, see services/sms_sender/client.py), keyed by scheme, name, port and address,
at most :data:`MAX_CONNECTIONS_PER_THREAD` of them (the least recently used is closed). A
request that fails on a reused connection the server had closed is tried once more on a new
one (the receiver de-duplicates on ``webhook-id`` anyway).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from herald.errors import EndpointRetryableError, PermanentError
from herald.netguard import BlockedEndpoint, resolve_public, split_endpoint

MAX_CONNECTIONS_PER_THREAD = 8
#: Bytes of an answer read (the sender needs its status; the rest is dropped with the
#: connection).
MAX_ANSWER_BYTES = 64 * 1024
BLOCKED = "endpoint.blocked"

_Key = tuple[str, str, int, str]


@dataclass(frozen=True)
class Answer:
    status: int
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes


class _Pinned(http.client.HTTPConnection):
    """HTTP to ``address`` with ``Host`` = the name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedTls(http.client.HTTPSConnection):
    """HTTPS to ``address``; SNI, ``Host`` and the certificate check use the name."""

    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.address = address
        self.tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


class EndpointHttp:
    """A client for users' endpoints; one per process, safe to use from many threads.

    ``kind`` (``webhook``, ``slack``) prefixes the error classes of transport failures.
    """

    def __init__(
        self,
        kind: str,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        allow_private: bool | None = None,
    ) -> None:
        self.kind = kind
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        #: None: :func:`herald.netguard.private_allowed` (``HERALD_ENV=local`` or
        #: ``HERALD_ENDPOINTS_ALLOW_PRIVATE=1``) decides.
        self.allow_private = allow_private
        self._tls = ssl.create_default_context()
        self._local = threading.local()
        self._all: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST ``body`` to ``url``; the answer, whatever its status.

        Raises PermanentError ``endpoint.blocked`` (not an allowed URL or address) or
        EndpointRetryableError (does not resolve, no connection, timed out).
        """
        try:
            scheme, host, port = split_endpoint(url)
            addresses = resolve_public(host, port, allow_private=self.allow_private)
        except BlockedEndpoint as exc:
            raise PermanentError(str(exc), error_class=BLOCKED) from None
        except OSError as exc:
            raise EndpointRetryableError(
                f"{host} does not resolve: {exc}", error_class=f"{self.kind}.dns"
            ) from None
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key: _Key = (scheme, host, port, str(addresses[0]))
        while True:
            connection, reused = self._connection(key)
            try:
                if connection.sock is None:
                    connection.connect()  # within connect_timeout; then the answer's timeout
                    sock: Any = connection.sock
                    sock.settimeout(self.timeout)
                connection.request("POST", target, body, dict(headers))
                response = connection.getresponse()
                content = response.read(MAX_ANSWER_BYTES)
            except TimeoutError as exc:
                self._drop(key, connection)
                raise EndpointRetryableError(
                    f"{host} timed out: {exc!r}", error_class=f"{self.kind}.timeout"
                ) from exc
            except ssl.SSLCertVerificationError as exc:
                # Nothing was sent (the handshake failed). Retryable: the endpoint's owner
                # may renew an expired certificate, the operator add a private CA
                # (SSL_CERT_FILE) and restart; a class of its own so it can be alerted on and
                # replayed apart from endpoints that are down.
                self._drop(key, connection)
                raise EndpointRetryableError(
                    f"the certificate of {host} was refused: {exc.verify_message}",
                    error_class=f"{self.kind}.tls",
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop(key, connection)
                if reused and isinstance(
                    exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
                ):
                    continue  # the server closed the idle connection: once more, on a new one
                raise EndpointRetryableError(
                    f"{host} unreachable: {exc!r}", error_class=f"{self.kind}.connection"
                ) from exc
            if response.will_close or not response.isclosed():
                self._drop(key, connection)  # closing, or an answer longer than we read
            answer_headers = {name.lower(): value for name, value in response.getheaders()}
            return Answer(response.status, answer_headers, content)

    def _connections(self) -> OrderedDict[_Key, http.client.HTTPConnection]:
        connections: OrderedDict[_Key, http.client.HTTPConnection] | None = getattr(
            self._local, "connections", None
        )
        if connections is None:
            connections = self._local.connections = OrderedDict()
        return connections

    def _connection(self, key: _Key) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection for ``key``, and whether it was used before."""
        connections = self._connections()
        connection = connections.get(key)
        if connection is not None:
            connections.move_to_end(key)
            return connection, True
        scheme, host, port, address = key
        if scheme == "https":
            connection = _PinnedTls(host, port, address, self.connect_timeout, self._tls)
        else:
            connection = _Pinned(host, port, address, self.connect_timeout)
        connections[key] = connection
        with self._lock:
            self._all.add(connection)
        while len(connections) > MAX_CONNECTIONS_PER_THREAD:
            oldest_key = next(iter(connections))
            self._drop(oldest_key, connections[oldest_key])
        return connection, False

    def _drop(self, key: _Key, connection: http.client.HTTPConnection) -> None:
        connection.close()
        connections = self._connections()
        if connections.get(key) is connection:
            del connections[key]
        with self._lock:
            self._all.discard(connection)

    def close(self) -> None:
        """Close every thread's connections."""
        with self._lock:
            connections, self._all = self._all, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.close()
