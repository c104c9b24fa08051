"""herald.auth: token minting and verification, constant-time comparisons, the settings, and
the FastAPI dependencies' answers (no database: a tiny app with one route per dependency)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from herald import auth
from herald.auth import (
    LOCAL_ADMIN_API_KEY,
    LOCAL_USER_TOKEN_SECRET,
    SCOPES,
    Authenticator,
    AuthSettings,
    InsecureDefaults,
    Principal,
    RedactCredentials,
    check_exposure,
    check_user_id,
    constant_time_equals,
    install_auth,
    is_loopback,
    key_fingerprint,
    key_with,
    matching_admin_key,
    parse_api_keys,
    redact_credentials,
    user_or_key_with,
    user_token,
    verify_user_token,
)
from herald.limits import RateLimiter
from herald.webapi import Problem, install_problem_handlers

SECRET = "unit-test-secret-0123456789"
ADMIN = "unit-test-admin-key-0123456789"
OLD_ADMIN = "unit-test-old-admin-key-98765"


def settings(**changes: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "admin_api_keys": f"{ADMIN},{OLD_ADMIN}",
        "user_token_secret": SECRET,
        **changes,
    }
    return AuthSettings(**values)


# --- tokens ------------------------------------------------------------------------------------


def test_user_token_is_the_hex_hmac_sha256_of_the_user_id() -> None:
    expected = hmac.new(SECRET.encode(), b"user-42", hashlib.sha256).hexdigest()
    assert user_token("user-42", SECRET) == expected
    assert user_token("user-42", SECRET.encode()) == expected
    assert len(expected) == 64
    # Deterministic per (user, secret), different across users and secrets.
    assert user_token("user-42", SECRET) == user_token("user-42", SECRET)
    assert user_token("user-43", SECRET) != expected
    assert user_token("user-42", SECRET + "x") != expected


def test_user_tokens_of_non_ascii_ids_are_utf8_hmacs() -> None:
    expected = hmac.new(SECRET.encode(), "zoë-ü".encode(), hashlib.sha256).hexdigest()
    assert user_token("zoë-ü", SECRET) == expected


def test_verify_user_token() -> None:
    token = user_token("user-42", SECRET)
    assert verify_user_token("user-42", token, SECRET)
    # Clients may send upper-case hex or stray blanks.
    assert verify_user_token("user-42", f" {token.upper()} ", SECRET)
    assert not verify_user_token("user-43", token, SECRET)  # another user's token
    assert not verify_user_token("user-42", token[:-1] + "0", SECRET)  # forged
    assert not verify_user_token("user-42", token, "another-secret-0123456789")
    assert not verify_user_token("user-42", "", SECRET)
    # Anything a client can send is refused, never an exception.
    assert not verify_user_token("user-42", "ünïcode-✓", SECRET)
    assert not verify_user_token("user-42", "\udcff", SECRET)


def test_comparisons_go_through_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert verify_user_token("u", user_token("u", SECRET), SECRET)
    assert constant_time_equals("abc", b"abc")
    assert not constant_time_equals("abc", "abd")
    assert len(calls) == 3
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)


def test_matching_admin_key_compares_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = [ADMIN, OLD_ADMIN, "a-third-key-0123456789"]
    assert matching_admin_key(ADMIN, keys) == ADMIN
    # No early exit on a match: the time says nothing about which key matched.
    assert compared == [k.encode() for k in keys]
    assert matching_admin_key(OLD_ADMIN, keys) == OLD_ADMIN
    assert matching_admin_key("nope", keys) is None
    assert matching_admin_key(ADMIN, []) is None


def test_key_fingerprint_names_a_key_without_revealing_it() -> None:
    fingerprint = key_fingerprint(ADMIN)
    assert len(fingerprint) == 12
    assert fingerprint not in ADMIN
    assert fingerprint == key_fingerprint(ADMIN) != key_fingerprint(OLD_ADMIN)


def test_check_user_id() -> None:
    assert check_user_id("user-42") == "user-42"
    for bad in ("", "a b", "tab\there", "x" * 256, "nl\n"):
        with pytest.raises(ValueError):
            check_user_id(bad)


# --- settings ----------------------------------------------------------------------------------


def test_settings_read_comma_separated_keys_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HERALD_ADMIN_API_KEYS", f" {ADMIN} , {OLD_ADMIN},, ")
    monkeypatch.setenv("HERALD_USER_TOKEN_SECRET", SECRET)
    loaded = AuthSettings()
    assert loaded.admin_keys == (ADMIN, OLD_ADMIN)
    assert loaded.user_token_secret.get_secret_value() == SECRET
    assert not loaded.uses_local_defaults
    # Secrets stay out of reprs (and so out of logs).
    assert ADMIN not in repr(loaded) and SECRET not in repr(loaded)


def test_local_defaults_are_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HERALD_ADMIN_API_KEYS", raising=False)
    monkeypatch.delenv("HERALD_USER_TOKEN_SECRET", raising=False)
    defaults = AuthSettings()
    assert defaults.admin_keys == (LOCAL_ADMIN_API_KEY,)
    assert defaults.user_token_secret.get_secret_value() == LOCAL_USER_TOKEN_SECRET
    assert defaults.uses_local_defaults


def test_short_keys_and_secrets_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValidationError) as error:
        settings(admin_api_keys=f"{ADMIN},short-key")
    assert "key #2" in str(error.value)
    assert "short-key" not in str(error.value)
    with pytest.raises(ValidationError, match="at least 16"):
        settings(user_token_secret="tiny")
    assert settings(admin_api_keys="").admin_keys == ()


# --- the authenticator -------------------------------------------------------------------------


def refusal(call: Any) -> Problem:
    with pytest.raises(Problem) as error:
        call()
    return error.value


def test_admin_credentials() -> None:
    authenticator = Authenticator(settings())
    assert authenticator.key(ADMIN) == Principal("key", key_fingerprint(ADMIN), frozenset(SCOPES))
    assert authenticator.key(OLD_ADMIN).subject == key_fingerprint(OLD_ADMIN)
    missing = refusal(lambda: authenticator.key(None))
    wrong = refusal(lambda: authenticator.key("not-a-key"))
    assert (missing.status, wrong.status) == (401, 401)
    assert missing.headers == {"WWW-Authenticate": 'Bearer realm="herald"'}
    # A user token is not an admin key.
    assert refusal(lambda: authenticator.key(user_token("u", SECRET))).status == 401


def test_user_credentials() -> None:
    authenticator = Authenticator(settings())
    token = user_token("user-42", SECRET)
    assert authenticator.user("user-42", api_key=None, token=token) == Principal("user", "user-42")
    assert authenticator.user("user-42", api_key=ADMIN, token=None).is_key
    assert refusal(lambda: authenticator.user("user-42", api_key=None, token=None)).status == 401
    other = refusal(lambda: authenticator.user("user-43", api_key=None, token=token))
    forged = refusal(lambda: authenticator.user("user-42", api_key=None, token="f" * 64))
    # Another user's token and a forged one get the very same answer.
    assert (other.status, other.detail) == (forged.status, forged.detail) == (403, forged.detail)
    # An invalid admin key is refused even with a valid token beside it.
    bad_key = refusal(lambda: authenticator.user("user-42", api_key="wrong", token=token))
    assert bad_key.status == 401


def test_charge_answers_429_with_retry_after_when_the_bucket_is_empty() -> None:
    now = [0.0]
    authenticator = Authenticator(settings(), RateLimiter(0.5, 2, clock=lambda: now[0]))
    alice, bob = Principal("user", "alice"), Principal("user", "bob")
    authenticator.charge(alice)
    authenticator.charge(alice)
    limited = refusal(lambda: authenticator.charge(alice))
    assert limited.status == 429
    assert limited.headers == {"Retry-After": "2"}  # one token at 0.5/s
    authenticator.charge(bob)  # per caller
    now[0] = 2.0
    authenticator.charge(alice)
    # No limiter: never limited.
    unlimited = Authenticator(settings())
    for _ in range(1000):
        unlimited.charge(alice)


# --- FastAPI dependencies ----------------------------------------------------------------------


def tiny_app(
    limiter: RateLimiter | None = None, *, install: bool = True, **changes: Any
) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    if install:
        install_auth(app, Authenticator(settings(**changes), limiter))
    users = APIRouter(prefix="/users/{user_id}", dependencies=[user_or_key_with("inbox:read")])
    admin = APIRouter(prefix="/admin", dependencies=[key_with("admin")])
    streams = APIRouter(prefix="/streams/{user_id}")

    @users.get("/data")
    def data(user_id: str) -> dict[str, str]:
        return {"user_id": user_id}

    @admin.get("/things")
    def things() -> dict[str, str]:
        return {"ok": "yes"}

    @streams.get("")
    def stream(user_id: str, caller: auth.StreamCaller) -> dict[str, str]:
        return {"kind": caller.kind, "subject": caller.subject}

    for router in (users, admin, streams):
        app.include_router(router)
    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(tiny_app(), raise_server_exceptions=False) as test_client:
        yield test_client


def test_user_routes_accept_the_users_token_or_an_admin_key(client: TestClient) -> None:
    token = user_token("user-42", SECRET)
    assert client.get("/users/user-42/data", headers={"X-User-Token": token}).status_code == 200
    assert client.get("/users/user-42/data", headers={"X-API-Key": ADMIN}).status_code == 200
    bearer = {"Authorization": f"Bearer {OLD_ADMIN}"}
    assert client.get("/users/user-42/data", headers=bearer).status_code == 200
    # The query token is for streams only (URLs end up in logs and browser history).
    assert client.get("/users/user-42/data", params={"token": token}).status_code == 401
    assert client.get("/streams/user-42", params={"token": token}).json() == {
        "kind": "user",
        "subject": "user-42",
    }
    assert client.get("/streams/user-42", headers={"X-User-Token": token}).status_code == 200
    assert client.get("/streams/user-43", params={"token": token}).status_code == 403


def test_refusals_are_problems(client: TestClient) -> None:
    token = user_token("user-42", SECRET)
    cases = [
        ("/users/user-42/data", {}, 401),
        ("/users/user-43/data", {"X-User-Token": token}, 403),
        ("/users/user-42/data", {"X-API-Key": "wrong-key-0123456789"}, 401),
        ("/users/user-42/data", {"Authorization": "Bearer wrong-key-0123456789"}, 401),
        ("/admin/things", {}, 401),
        ("/admin/things", {"X-User-Token": token}, 401),
        ("/admin/things", {"X-API-Key": "wrong-key-0123456789"}, 401),
    ]
    for path, headers, status in cases:
        response = client.get(path, headers=headers)
        assert response.status_code == status, (path, headers)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
    assert client.get("/admin/things", headers={"X-API-Key": ADMIN}).json() == {"ok": "yes"}


def test_an_app_without_install_auth_fails_closed() -> None:
    with TestClient(tiny_app(install=False), raise_server_exceptions=False) as test_client:
        response = test_client.get("/admin/things", headers={"X-API-Key": ADMIN})
        assert response.status_code == 500
        assert "ok" not in response.text


def test_each_caller_has_its_own_bucket() -> None:
    app = tiny_app(RateLimiter(0.001, 2))
    token = user_token("user-42", SECRET)
    with TestClient(app) as test_client:
        statuses = [
            test_client.get("/users/user-42/data", headers={"X-User-Token": token}).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        limited = test_client.get("/users/user-42/data", headers={"X-User-Token": token})
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["type"] == "urn:herald:problem:rate-limited"
        # An admin key has a bucket of its own, even on the same user's routes.
        admin = test_client.get("/users/user-42/data", headers={"X-API-Key": ADMIN})
        assert admin.status_code == 200


def test_openapi_documents_the_credentials() -> None:
    schemes = tiny_app().openapi()["components"]["securitySchemes"]
    assert schemes["AdminApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key (HERALD_ADMIN_API_KEYS) holding the scopes the operation "
        "lists: events:write, admin, inbox:read, inbox:write, tokens:mint.",
    }
    assert schemes["UserToken"]["name"] == "X-User-Token"
    assert schemes["UserTokenQuery"]["in"] == "query"
    assert schemes["AdminBearer"]["scheme"] == "bearer"


# --- logs and the command line -----------------------------------------------------------------


def test_query_credentials_are_redacted_from_logs() -> None:
    assert (
        redact_credentials("GET /v1/users/u/stream?token=abc123&x=1 HTTP/1.1")
        == "GET /v1/users/u/stream?token=REDACTED&x=1 HTTP/1.1"
    )
    assert redact_credentials("/p?x=1&api_key=s3cret") == "/p?x=1&api_key=REDACTED"
    assert redact_credentials("/p?notatoken=1") == "/p?notatoken=1"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/v1/users/u/stream?token=deadbeef", "1.1", 200),
        None,
    )
    assert RedactCredentials().filter(record)
    assert "deadbeef" not in record.getMessage()
    assert "token=REDACTED" in record.getMessage()


def test_cli_mints_tokens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HERALD_USER_TOKEN_SECRET", SECRET)
    assert auth.main(["user-token", "user-42"]) == 0
    assert capsys.readouterr().out.strip() == user_token("user-42", SECRET)
    assert auth.main(["user-token", "a", "b"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"a\t{user_token('a', SECRET)}",
        f"b\t{user_token('b', SECRET)}",
    ]
    with pytest.raises(SystemExit):
        auth.main(["user-token", "has space"])


# --- scopes, failed attempts, exposure (issue 13) ----------------------------------------------

PUBLISHER = "unit-test-publisher-key-0123"
READER = "unit-test-inbox-reader-key-01"


def test_keys_carry_scopes_and_a_bare_key_has_every_scope() -> None:
    keys = parse_api_keys(f"{PUBLISHER}=events:write, {READER}=inbox:read tokens:mint,{ADMIN}")
    assert [key.scopes for key in keys] == [
        frozenset({"events:write"}),
        frozenset({"inbox:read", "tokens:mint"}),
        frozenset(SCOPES),
    ]
    assert PUBLISHER not in repr(keys)  # the secret stays out of reprs
    for bad, message in [
        (f"{PUBLISHER}=events:delete", "unknown scope 'events:delete'"),
        (f"{PUBLISHER}=", "'=' but no scopes"),
        ("tinykey7=admin", "key #1 is shorter than 16"),
        ("dGhpcyBpcyBiYXNlNjQgd2l0aCBwYWRkaW5n==", "unknown scope '='"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            parse_api_keys(bad)
        assert "tinykey7" not in str(error.value) and PUBLISHER not in str(error.value)


def test_a_key_without_the_routes_scope_is_403_and_one_with_it_passes() -> None:
    authenticator = Authenticator(settings(admin_api_keys=f"{PUBLISHER}=events:write,{ADMIN}"))
    assert authenticator.key(PUBLISHER, ["events:write"]).may("events:write")
    lacking = refusal(lambda: authenticator.key(PUBLISHER, ["admin"]))
    assert (lacking.status, lacking.extensions) == (403, {"required_scopes": ["admin"]})
    assert "insufficient-scope" in lacking.type
    # On a user's data too: the key needs inbox:read; the user's own token needs nothing.
    refused = refusal(
        lambda: authenticator.user("u", api_key=PUBLISHER, token=None, scopes=["inbox:read"])
    )
    assert refused.status == 403
    token = user_token("u", SECRET)
    assert authenticator.user("u", api_key=None, token=token, scopes=["inbox:read"]).kind == "user"


def test_scopes_are_checked_per_route_and_shown_in_openapi() -> None:
    app = tiny_app(admin_api_keys=f"{PUBLISHER}=events:write,{READER}=inbox:read")
    with TestClient(app) as client:
        assert client.get("/admin/things", headers={"X-API-Key": PUBLISHER}).status_code == 403
        assert client.get("/admin/things", headers={"X-API-Key": READER}).status_code == 403
        assert client.get("/users/u/data", headers={"X-API-Key": READER}).status_code == 200
        assert client.get("/users/u/data", headers={"X-API-Key": PUBLISHER}).status_code == 403
    operations = app.openapi()["paths"]
    assert {"AdminApiKey": ["admin"]} in operations["/admin/things"]["get"]["security"]
    assert {"AdminApiKey": ["inbox:read"]} in operations["/users/{user_id}/data"]["get"]["security"]


def test_failed_attempts_are_limited_per_address_before_credentials_are_checked() -> None:
    now = [0.0]
    failures = RateLimiter(1 / 60, 3, clock=lambda: now[0])
    authenticator = Authenticator(settings(), failures=failures)

    def attempt(key: str | None, client: str = "10.0.0.1") -> Problem | Principal:
        try:
            return authenticator.authenticate(client, lambda: authenticator.key(key))
        except Problem as problem:
            return problem

    # Missing credentials are not guesses: they do not count.
    for _ in range(10):
        assert getattr(attempt(None), "status", None) == 401
    for _ in range(3):
        assert getattr(attempt("wrong-key-0123456789"), "status", None) == 401
    limited = attempt(ADMIN)  # even the right key: the address is refused before checking
    assert isinstance(limited, Problem) and limited.status == 429
    assert limited.headers == {"Retry-After": "60"}
    assert isinstance(attempt(ADMIN, client="10.0.0.2"), Principal)  # per address
    now[0] = 61.0
    assert isinstance(attempt(ADMIN), Principal)


def test_failed_attempts_over_http_get_429_with_retry_after() -> None:
    app = tiny_app(auth_failure_burst=2, auth_failures_per_min=1)
    with TestClient(app) as client:
        wrong = {"X-API-Key": "wrong-key-0123456789"}
        assert [client.get("/admin/things", headers=wrong).status_code for _ in range(3)] == [
            401,
            401,
            429,
        ]
        forged = client.get("/users/u/data", headers={"X-User-Token": "0" * 64})
        assert forged.status_code == 429 and int(forged.headers["Retry-After"]) >= 1
        assert forged.json()["type"] == "urn:herald:problem:too-many-failed-attempts"


def test_is_loopback() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "example.com", ""):
        assert not is_loopback(host), host


def test_local_defaults_refuse_to_serve_other_machines() -> None:
    defaults = AuthSettings(admin_api_keys=SecretStr(LOCAL_ADMIN_API_KEY))
    check_exposure(defaults, "127.0.0.1", "the API")  # loopback: a developer's machine
    with pytest.raises(InsecureDefaults) as error:
        check_exposure(defaults, "0.0.0.0", "the API")
    message = str(error.value)
    assert "HERALD_ADMIN_API_KEYS and HERALD_USER_TOKEN_SECRET" in message
    assert "secrets.token_urlsafe" in message and "HERALD_ENV=local" in message
    # Keys set but the token secret forgotten: anyone could mint any user's token.
    half = AuthSettings(admin_api_keys=SecretStr(ADMIN))
    with pytest.raises(InsecureDefaults, match="HERALD_USER_TOKEN_SECRET holds"):
        check_exposure(half, "0.0.0.0", "the API")
    check_exposure(AuthSettings(admin_api_keys=SecretStr(ADMIN), env="local"), "0.0.0.0", "the API")
    with pytest.raises(InsecureDefaults, match="HERALD_ENV=production"):
        check_exposure(AuthSettings(env="production"), "127.0.0.1", "the API")
    check_exposure(settings(), "0.0.0.0", "the API")  # own secrets: anywhere
