"""Where Herald may send an HTTP request on a user's behalf (webhook and Slack endpoints).

An endpoint URL comes from a user, so a careless check would let anyone make Herald POST to
its own broker, database or a cloud metadata service (server-side request forgery). Outside
local mode (``HERALD_ENV=local``, a developer's machine, or
``HERALD_ENDPOINTS_ALLOW_PRIVATE=1``) an endpoint must be ``https``/``http``
to a host whose every address is public: not loopback, private (RFC 1918, RFC 4193), link-local
(169.254/16, the metadata service), shared (100.64/10), multicast, reserved or unspecified.

The check runs twice: when the endpoint is registered (:func:`check_endpoint_url`, a literal
address or a name that resolves to a blocked one is refused with a clear message), and when a
delivery is sent (:func:`resolve_public`, whose addresses the sender then connects to, so a
name re-pointed at 127.0.0.1 after registration — DNS rebinding — is refused too).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Networks no endpoint may reach outside local mode, beyond what ``ipaddress`` flags.
_EXTRA_BLOCKED = (
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT (shared address space)
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments
    ipaddress.ip_network("198.18.0.0/15"),  # benchmarking
)


class BlockedEndpoint(ValueError):
    """The URL is not one Herald may send to; the message says why."""


#: Allows endpoints on loopback and private networks without the rest of local mode
#: (``herald run`` sets it for the services of the embedded stack, whose webhook sink is on
#: 127.0.0.1).
ALLOW_PRIVATE_ENV = "HERALD_ENDPOINTS_ALLOW_PRIVATE"


def private_allowed() -> bool:
    """Whether endpoints may be on loopback or private networks: ``HERALD_ENV=local``, or
    ``HERALD_ENDPOINTS_ALLOW_PRIVATE=1`` (never with ``HERALD_ENV=production``)."""
    env = os.environ.get("HERALD_ENV", "").strip().lower()
    if env == "production":
        return False
    flag = os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")
    return env == "local" or flag


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address (IPv4-mapped IPv6 is read as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    ):
        return False
    return not any(address in network for network in _EXTRA_BLOCKED)


def split_endpoint(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an endpoint URL; BlockedEndpoint when it is not an
    ``http``/``https`` URL with a host and no user name or password in it."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BlockedEndpoint(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise BlockedEndpoint("the URL must start with https:// (or http://)")
    if not parts.hostname:
        raise BlockedEndpoint("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise BlockedEndpoint("the URL must not carry a user name or password")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _refuse(host: str, address: IPAddress) -> BlockedEndpoint:
    return BlockedEndpoint(
        f"{host} is {address}, a loopback, private or reserved address; endpoints must be "
        "public (HERALD_ENV=local allows private ones on a developer's machine)"
    )


def resolve_public(host: str, port: int, *, allow_private: bool | None = None) -> list[IPAddress]:
    """The addresses of ``host``, all of them public unless private ones are allowed.

    Raises :class:`BlockedEndpoint` when any address is blocked, and ``OSError`` when the
    name does not resolve (a transient fault for a sender).
    """
    allow = private_allowed() if allow_private is None else allow_private
    literal = _literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not allow:
        for address in addresses:
            if not is_public(address):
                raise _refuse(host, address)
    return addresses


def check_endpoint_url(url: str, *, allow_private: bool | None = None) -> str:
    """Check an endpoint URL at registration; return it unchanged or raise BlockedEndpoint.

    A literal address, or a name that resolves now, must be public (outside local mode). A
    name that does not resolve yet is accepted: it is checked again at every send.
    """
    _, host, port = split_endpoint(url)
    allow = private_allowed() if allow_private is None else allow_private
    if allow:
        return url
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(
        ".localhost"
    ):
        raise BlockedEndpoint(f"{host} is loopback; endpoints must be public")
    # A name that does not resolve today is refused at send time if it ever points inward.
    with contextlib.suppress(OSError):
        resolve_public(host, port, allow_private=False)
    return url
