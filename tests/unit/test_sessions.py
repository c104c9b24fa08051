"""Session tokens (herald.auth): their format, signing and verification, rotation of the
secrets, expiry and tampering, the settings, and how the user dependencies answer them; and
the read API's ``POST /v1/users/{user_id}/session`` (no database: it reads none)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from herald import auth
from herald.auth import (
    LOCAL_USER_TOKEN_SECRET,
    SESSION_PREFIX,
    Authenticator,
    AuthSettings,
    SessionExpired,
    SessionInvalid,
    install_auth,
    session_token,
    user_or_key_with,
    user_token,
    verify_session_token,
)
from herald.settings import Settings
from herald.webapi import install_problem_handlers
from services.inapp_store.api.app import create_app
from services.inapp_store.api.settings import ReadApiSettings

SECRET = "unit-test-user-secret-0123456789"
NEW = "unit-test-session-new-0123456789"
OLD = "unit-test-session-old-0123456789"
ADMIN = "unit-test-admin-key-0123456789"
MINTER = "unit-test-minter-key-0123456789"
READER = "unit-test-reader-key-0123456789"
EXPIRED = "urn:herald:problem:session-expired"


def settings(**changes: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "admin_api_keys": f"{ADMIN},{MINTER}=tokens:mint,{READER}=inbox:read",
        "user_token_secret": SECRET,
        **changes,
    }
    return AuthSettings(**values)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- the token ---------------------------------------------------------------------------------


def test_format_is_prefix_claims_and_hmac_of_what_precedes_the_signature() -> None:
    token, expires = session_token("user-42", NEW, 600, now=1_700_000_000)
    assert expires == 1_700_000_600
    prefix, claims_text, signature_text = token.split(".")
    assert f"{prefix}." == SESSION_PREFIX == "hs1."
    assert json.loads(unb64(claims_text)) == {
        "sub": "user-42",
        "exp": 1_700_000_600,
        "iat": 1_700_000_000,
    }
    signed = token.rpartition(".")[0].encode()
    assert unb64(signature_text) == hmac.new(NEW.encode(), signed, hashlib.sha256).digest()
    # URL-safe as it is (it goes in ?token=), no padding.
    assert all(c.isalnum() or c in "-_." for c in token)
    claims = verify_session_token(token, [NEW], now=1_700_000_599)
    assert (claims.user_id, claims.issued_at, claims.expires_at) == (
        "user-42",
        1_700_000_000,
        1_700_000_600,
    )


def test_any_user_id_round_trips() -> None:
    for user_id in ("ü-ser", "a" * 255, "x/y?z=1&token=2", "名前"):
        token, _ = session_token(user_id, NEW, 60)
        assert verify_session_token(token, [NEW]).user_id == user_id
        assert len(token) <= auth.MAX_SESSION_TOKEN_LENGTH


def test_expiry_is_exclusive() -> None:
    token, expires = session_token("u", NEW, 60, now=1000)
    verify_session_token(token, [NEW], now=expires - 1)
    with pytest.raises(SessionExpired):
        verify_session_token(token, [NEW], now=expires)
    # Real time: a 1-second token is dead two seconds later.
    short, _ = session_token("u", NEW, 1)
    time.sleep(1.1)
    with pytest.raises(SessionExpired):
        verify_session_token(short, [NEW])


def test_rotation_signs_with_the_first_and_verifies_with_every_secret() -> None:
    old_token, _ = session_token("u", OLD, 60)
    new_token, _ = session_token("u", NEW, 60)
    for token in (old_token, new_token):
        assert verify_session_token(token, [NEW, OLD]).user_id == "u"
    with pytest.raises(SessionInvalid):
        verify_session_token(old_token, [NEW])  # the old secret dropped: its tokens die
    rotating = Authenticator(settings(session_secrets=f"{NEW}, {OLD}"))
    minted, _ = rotating.session_for("u")
    assert verify_session_token(minted, [NEW]).user_id == "u"
    with pytest.raises(SessionInvalid):
        verify_session_token(minted, [OLD])


def forge(claims: dict[str, Any], secret: str = NEW) -> str:
    signed = SESSION_PREFIX + b64(json.dumps(claims).encode())
    return f"{signed}.{b64(hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest())}"


def test_tampering_is_refused() -> None:
    token, _ = session_token("alice", NEW, 600)
    prefix, claims_text, signature = token.split(".")
    claims = json.loads(unb64(claims_text))
    bob = b64(json.dumps({**claims, "sub": "bob"}).encode())
    longer = b64(json.dumps({**claims, "exp": claims["exp"] + 10**6}).encode())
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    tampered = [
        f"{prefix}.{bob}.{signature}",  # another subject, the old signature
        f"{prefix}.{longer}.{signature}",  # a later expiry
        f"{prefix}.{claims_text}.{flipped}",
        f"{prefix}.{claims_text}.",
        f"{prefix}.{claims_text}",
        f"hs2.{claims_text}.{signature}",
        f"{prefix}.{claims_text}.{signature}.x",
        f"{prefix}.{claims_text}.{signature}==",
        f"{prefix}.{claims_text}.{signature}\x00",
        token + "A" * 3000,
        forge(claims, secret=OLD),  # signed with a secret not in use
        forge({"sub": "alice", "exp": "never", "iat": 0}),  # signed right, claims wrong
        forge({"sub": 42, "exp": 2**40, "iat": 0}),
        forge({"sub": "alice", "exp": True, "iat": 0}),
        SESSION_PREFIX + b64(b"[1]") + "." + forge({})[-43:],
        "",
        "hs1.",
        "hs1..",
    ]
    for bad in tampered:
        with pytest.raises(SessionInvalid):
            verify_session_token(bad, [NEW])
    # An array of claims signed right is still refused.
    signed = SESSION_PREFIX + b64(b"[1]")
    array = f"{signed}.{b64(hmac.new(NEW.encode(), signed.encode(), hashlib.sha256).digest())}"
    with pytest.raises(SessionInvalid):
        verify_session_token(array, [NEW])


# --- settings ----------------------------------------------------------------------------------


def test_settings_default_to_the_user_token_secret_and_an_hour(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HERALD_SESSION_SECRETS", "HERALD_SESSION_TTL_S", "HERALD_USER_TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    assert AuthSettings().session_secret_list == (LOCAL_USER_TOKEN_SECRET,)
    assert AuthSettings().session_ttl_s == 3600
    monkeypatch.setenv("HERALD_SESSION_SECRETS", f" {NEW} ,{OLD},")
    monkeypatch.setenv("HERALD_SESSION_TTL_S", "900")
    configured = AuthSettings()
    assert configured.session_secret_list == (NEW, OLD)
    assert configured.session_ttl_s == 900


@pytest.mark.parametrize(
    "changes",
    [
        {"session_secrets": "short"},
        {"session_secrets": f"{NEW},short"},
        {"session_secrets": " , "},
        {"session_ttl_s": 59},
        {"session_ttl_s": 86_401},
    ],
)
def test_bad_session_settings_are_refused_without_echoing_secrets(changes: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(**changes)
    assert "short," not in str(caught.value) and NEW not in str(caught.value)


def test_the_local_secret_as_a_session_secret_counts_as_a_local_default() -> None:
    assert (
        "HERALD_SESSION_SECRETS"
        in settings(session_secrets=f"{NEW},{LOCAL_USER_TOKEN_SECRET}").local_defaults_in_use
    )
    assert settings(session_secrets=NEW).local_defaults_in_use == []
    # Unset, it is the user-token secret, which is reported (and refused) as such.
    assert AuthSettings(
        admin_api_keys=SecretStr(ADMIN), user_token_secret=SecretStr(LOCAL_USER_TOKEN_SECRET)
    ).local_defaults_in_use == ["HERALD_USER_TOKEN_SECRET"]
    with pytest.raises(auth.InsecureDefaults, match="HERALD_SESSION_SECRETS"):
        auth.check_exposure(
            settings(session_secrets=LOCAL_USER_TOKEN_SECRET), "0.0.0.0", "the read API"
        )


def test_authenticator_mints_within_the_configured_ttl() -> None:
    authenticator = Authenticator(settings(session_ttl_s=600))
    before = int(time.time())
    token, expires = authenticator.session_for("u")
    assert before + 600 <= expires <= int(time.time()) + 600
    assert authenticator.session_for("u", 5)[1] <= int(time.time()) + 5
    for ttl in (0, 601):
        with pytest.raises(ValueError, match="1 to 600"):
            authenticator.session_for("u", ttl)
    principal = authenticator.user("u", api_key=None, token=token)
    assert principal.kind == "user" and principal.subject == "u"
    assert principal.is_session and principal.session_expires_at == expires
    assert not authenticator.user("u", api_key=None, token=user_token("u", SECRET)).is_session


# --- the dependencies --------------------------------------------------------------------------


def tiny_app(**changes: Any) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    install_auth(app, Authenticator(settings(**changes)))
    users = APIRouter(prefix="/users/{user_id}", dependencies=[user_or_key_with("inbox:read")])
    streams = APIRouter(prefix="/streams/{user_id}")

    @users.get("/data")
    def data(user_id: str) -> dict[str, str]:
        return {"user_id": user_id}

    @streams.get("")
    def stream(user_id: str, caller: auth.StreamCaller) -> dict[str, str]:
        return {"subject": caller.subject}

    app.include_router(users)
    app.include_router(streams)
    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(tiny_app(session_secrets=f"{NEW},{OLD}")) as test_client:
        yield test_client


def test_a_session_token_opens_its_users_data_wherever_a_user_token_does(
    client: TestClient,
) -> None:
    token, _ = session_token("user-42", NEW, 60)
    old, _ = session_token("user-42", OLD, 60)
    for credential in (token, old):
        header = {"X-User-Token": credential}
        assert client.get("/users/user-42/data", headers=header).status_code == 200
        assert client.get("/streams/user-42", params={"token": credential}).json() == {
            "subject": "user-42"
        }
    # Not in the query outside the stream, as for user tokens.
    assert client.get("/users/user-42/data", params={"token": token}).status_code == 401


def test_another_users_path_a_forgery_and_an_expiry_are_refused(client: TestClient) -> None:
    token, _ = session_token("user-42", NEW, 60)
    other = client.get("/users/user-43/data", headers={"X-User-Token": token})
    assert other.status_code == 403 and other.json()["type"] == "urn:herald:problem:forbidden"
    forged, _ = session_token("user-42", "not-our-secret-0123456789", 60)
    bad = client.get("/streams/user-42", params={"token": forged})
    assert bad.status_code == 403 and bad.json()["type"] == "urn:herald:problem:forbidden"
    expired, _ = session_token("user-42", NEW, 60, now=time.time() - 61)
    for response in (
        client.get("/users/user-42/data", headers={"X-User-Token": expired}),
        client.get("/streams/user-42", params={"token": expired}),
    ):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == EXPIRED
        assert "expired" in response.json()["detail"]


def test_forged_session_tokens_count_as_failed_attempts_and_expired_ones_do_not() -> None:
    app = tiny_app(session_secrets=NEW, auth_failure_burst=2, auth_failures_per_min=0.001)
    expired, _ = session_token("u", NEW, 60, now=time.time() - 61)
    forged, _ = session_token("u", OLD, 60)
    with TestClient(app) as test_client:
        for _ in range(5):
            response = test_client.get("/users/u/data", headers={"X-User-Token": expired})
            assert response.status_code == 401
        statuses = [
            test_client.get("/users/u/data", headers={"X-User-Token": forged}).status_code
            for _ in range(3)
        ]
    assert statuses == [403, 403, 429]


# --- the read API's session endpoint -----------------------------------------------------------


@pytest.fixture
def read_api() -> Iterator[TestClient]:
    app = create_app(
        Settings(),
        ReadApiSettings(),
        settings(session_secrets=f"{NEW},{OLD}", session_ttl_s=900),
    )
    # No lifespan (no database): the session endpoint reads nothing.
    yield TestClient(app)


def test_the_session_endpoint_exchanges_a_user_token_or_a_minting_key(
    read_api: TestClient,
) -> None:
    for headers in (
        {"X-User-Token": user_token("user-42", SECRET)},
        {"X-API-Key": MINTER},
        {"Authorization": f"Bearer {ADMIN}"},
    ):
        response = read_api.post("/v1/users/user-42/session", headers=headers)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["user_id"] == "user-42"
        claims = verify_session_token(body["token"], [NEW])
        assert claims.user_id == "user-42"
        assert claims.expires_at - claims.issued_at == 900
        assert body["expires_at"].startswith(time.strftime("%Y-", time.gmtime(claims.expires_at)))
    shorter = read_api.post(
        "/v1/users/user-42/session",
        headers={"X-API-Key": MINTER},
        json={"ttl_s": 1},
    ).json()
    claims = verify_session_token(shorter["token"], [NEW])
    assert claims.expires_at - claims.issued_at == 1


def test_the_session_endpoint_refuses(read_api: TestClient) -> None:
    user = {"X-User-Token": user_token("user-42", SECRET)}
    session, _ = session_token("user-42", NEW, 60)
    cases = [
        ({}, None, 401, "unauthorized"),
        ({"X-User-Token": user_token("user-43", SECRET)}, None, 403, "forbidden"),
        ({"X-API-Key": READER}, None, 403, "insufficient-scope"),
        # A session cannot renew itself: a leaked one would never expire.
        ({"X-User-Token": session}, None, 403, "forbidden"),
        (user, {"ttl_s": 901}, 422, "validation-error"),
        (user, {"ttl_s": 0}, 422, "validation-error"),
        (user, {"ttl_s": "long"}, 422, "validation-error"),
        (user, {"ttl": 5}, 422, "validation-error"),
    ]
    for headers, body, status, kind in cases:
        response = read_api.post("/v1/users/user-42/session", headers=headers, json=body)
        assert response.status_code == status, (headers, body, response.text)
        assert response.json()["type"] == f"urn:herald:problem:{kind}", response.text


def test_the_command_line_mints_session_tokens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HERALD_USER_TOKEN_SECRET", SECRET)
    monkeypatch.setenv("HERALD_SESSION_SECRETS", NEW)
    monkeypatch.delenv("HERALD_SESSION_TTL_S", raising=False)
    assert auth.main(["session-token", "user-42", "--ttl", "120"]) == 0
    printed = capsys.readouterr().out.strip()
    claims = verify_session_token(printed, [NEW])
    assert claims.user_id == "user-42" and claims.expires_at - claims.issued_at == 120
    with pytest.raises(SystemExit):
        auth.main(["session-token", "user-42", "--ttl", "99999"])
