"""herald.netguard: which endpoint URLs Herald may POST to (SSRF)."""

from __future__ import annotations

import ipaddress

import pytest

from herald.netguard import (
    ALLOW_PRIVATE_ENV,
    BlockedEndpoint,
    check_endpoint_url,
    is_public,
    private_allowed,
    resolve_public,
    split_endpoint,
)

BLOCKED = [
    "http://127.0.0.1/x",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://[::1]/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://224.0.0.1/",
    "http://localhost:8080/",
    "http://api.localhost/",
]


@pytest.mark.parametrize("url", BLOCKED)
def test_inward_addresses_are_refused_outside_local_mode(url: str) -> None:
    with pytest.raises(BlockedEndpoint):
        check_endpoint_url(url, allow_private=False)
    assert check_endpoint_url(url, allow_private=True) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/", "https://"),
        ("https:///path", "no host"),
        ("https://user:pw@example.com/", "user name or password"),
        ("https://example.com:99999/", "not a valid URL"),
    ],
)
def test_malformed_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(BlockedEndpoint, match=reason):
        check_endpoint_url(url, allow_private=True)


def test_public_literals_pass_and_ports_default_by_scheme() -> None:
    assert check_endpoint_url("https://93.184.216.34/h", allow_private=False)
    assert split_endpoint("https://example.com/x") == ("https", "example.com", 443)
    assert split_endpoint("http://example.com:8080/x") == ("http", "example.com", 8080)
    assert is_public(ipaddress.ip_address("8.8.8.8"))
    assert not is_public(ipaddress.ip_address("::ffff:10.0.0.1"))


def test_resolution_at_send_time_refuses_an_inward_literal() -> None:
    with pytest.raises(BlockedEndpoint, match=r"10\.0\.0\.1"):
        resolve_public("10.0.0.1", 80, allow_private=False)
    assert resolve_public("10.0.0.1", 80, allow_private=True) == [ipaddress.ip_address("10.0.0.1")]


@pytest.mark.parametrize(
    ("env", "flag", "allowed"),
    [
        (None, None, False),
        ("local", None, True),
        (None, "1", True),
        ("production", "1", False),
        ("production", None, False),
        (None, "0", False),
    ],
)
def test_private_allowed_only_in_local_mode_or_by_flag_and_never_in_production(
    monkeypatch: pytest.MonkeyPatch, env: str | None, flag: str | None, allowed: bool
) -> None:
    for name, value in (("HERALD_ENV", env), (ALLOW_PRIVATE_ENV, flag)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert private_allowed() is allowed
