"""Who may call Herald's HTTP APIs: admin API keys and per-user tokens.

Two kinds of credentials, both checked in constant time:

- **API keys** (``HERALD_ADMIN_API_KEYS``, comma-separated so keys can be rotated: add the
  new one, move clients over, drop the old one), each with its **scopes**: ``key=scope scope``
  (space-separated), or a bare ``key`` for every scope. Sent as ``X-API-Key: <key>`` or
  ``Authorization: Bearer <key>``. The scopes (:data:`SCOPES`):

  ``events:write``  publish events (``POST /v1/events``): what a product backend needs;
  ``admin``         event types, users and preferences (the ingest API's admin routes), and
                    the details of ``/readyz``;
  ``inbox:read``    read any user's inbox, notifications, delivery status and stream;
  ``inbox:write``   change any user's read and archive state;
  ``tokens:mint``   mint user tokens (``POST /v1/users/{user_id}/token``).

  A key without the scope a route needs is ``403`` (``insufficient-scope``). Keys must not
  contain ``=``, ``,`` or white space: ``python -c "import secrets;
  print(secrets.token_urlsafe(32))"`` makes a good one.
- **User tokens**: ``hex(HMAC-SHA256(HERALD_USER_TOKEN_SECRET, user_id))``, the "subscriber
  hash" of Novu and Knock. The product's backend, which knows the secret (or asks the read
  API's admin endpoint), hands each signed-in user their token; the front end sends it as
  ``X-User-Token: <token>`` (or ``?token=<token>`` on the real-time stream, because a
  browser's ``EventSource`` cannot send headers). A token opens exactly one user's data. It
  does not expire: rotating the secret revokes every token at once.
- **Session tokens**, for browsers: ``hs1.<base64url(JSON {"sub", "exp", "iat"})>.<base64url(
  HMAC-SHA256 of what precedes the last dot)>``, signed with the first of
  ``HERALD_SESSION_SECRETS`` (comma-separated; every one verifies, for rotation; default: the
  user-token secret) and valid ``HERALD_SESSION_TTL_S`` seconds (default 3600). The read API's
  ``POST /v1/users/{user_id}/session`` exchanges a user token (or a ``tokens:mint`` key) for
  one. Accepted wherever a user token is; expired: ``401`` with problem type
  ``urn:herald:problem:session-expired``; a bad signature is ``403`` like a forged user token.

Mint a token from a shell (the secret comes from ``HERALD_USER_TOKEN_SECRET``)::

    python -m herald.auth user-token user-42

or in Python: ``herald.auth.user_token("user-42", secret)``.

Local defaults (:data:`LOCAL_ADMIN_API_KEY`, :data:`LOCAL_USER_TOKEN_SECRET`) make the local
stack work out of the box. They are well known (the README prints them), so an API refuses to
start with either unless it listens only on loopback or ``HERALD_ENV=local`` says the machine
is a developer's (:func:`check_exposure`); ``HERALD_ENV=production`` refuses them everywhere.

Failed authentication (a missing or unknown key, a forged token) is limited per client
address (``HERALD_AUTH_FAILURE_BURST`` at once, ``HERALD_AUTH_FAILURES_PER_MIN`` after that):
past it, every request from that address that carries credentials is ``429`` with
``Retry-After`` before they are even checked, so guessing keys or tokens stays slow.

Refusals never depend on stored data: the decision is made from the credential and the path
alone, before any database read, so the answer for another user's id is the same whether that
user exists or not. Missing or unknown credentials are ``401``; a user token presented for
another user's path is ``403`` (a forged token looks exactly the same); a key without the
route's scope is ``403`` too.

FastAPI wiring: :func:`install_auth` puts an :class:`Authenticator` on the app; routes take
one dependency each, with the scope a key needs (shown in the OpenAPI document's security
requirements): ``Security(require_key, scopes=["admin"])`` for key-only routes,
``Security(require_user, scopes=["inbox:read"])`` for routes under ``/users/{user_id}``
(the user's token, or a key with that scope), and ``require_user_stream`` where ``?token=``
is accepted too. Every authenticated
request is charged to its caller's rate-limit bucket (:class:`herald.limits.RateLimiter`);
an empty bucket is ``429`` with ``Retry-After``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, get_args

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import (
    APIKeyHeader,
    APIKeyQuery,
    HTTPAuthorizationCredentials,
    HTTPBearer,
    SecurityScopes,
)
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from herald.identity import MAX_ID_LENGTH
from herald.limits import RateLimiter, retry_after
from herald.metrics import AUTH_FAILURES, AUTH_FAILURES_REFUSED
from herald.webapi import Problem

log = logging.getLogger(__name__)

#: The admin API key of the local stack (documented in the README; never use it elsewhere).
LOCAL_ADMIN_API_KEY: Final = "herald-local-admin-key"
#: The user-token secret of the local stack (likewise).
LOCAL_USER_TOKEN_SECRET: Final = "herald-local-user-token-secret"
#: Shortest admin key and token secret accepted: guessing must stay out of reach.
MIN_SECRET_LENGTH: Final = 16

#: Default life of a session token (``HERALD_SESSION_TTL_S``).
DEFAULT_SESSION_TTL_S: Final = 3600
#: What every session token starts with (its format's version).
SESSION_PREFIX: Final = "hs1."
#: Longest session token looked at (a 255-character user id makes one of about 500).
MAX_SESSION_TOKEN_LENGTH: Final = 2048
#: The problem type of an expired session token.
SESSION_EXPIRED_KIND: Final = "session-expired"

#: Longest user id accepted in a user path: the one id limit of herald.identity.
MAX_USER_ID_LENGTH: Final = MAX_ID_LENGTH

API_KEY_HEADER: Final = "X-API-Key"
USER_TOKEN_HEADER: Final = "X-User-Token"
#: Query parameter carrying a user token where headers cannot be sent (EventSource).
TOKEN_QUERY: Final = "token"
#: The path parameter naming the user whose data a route serves.
USER_PATH_PARAM: Final = "user_id"

#: What an API key may be allowed to do (see the module's documentation).
Scope = Literal["events:write", "admin", "inbox:read", "inbox:write", "tokens:mint"]
SCOPES: Final[tuple[str, ...]] = get_args(Scope)
#: How to make a secret, for error messages.
GENERATE_HINT: Final = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"

#: Host names that mean this machine only.
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class ApiKey:
    """One configured API key and what it may do."""

    secret: str = field(repr=False)
    scopes: frozenset[str]

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.secret)


def parse_api_keys(value: str) -> tuple[ApiKey, ...]:
    """``HERALD_ADMIN_API_KEYS``: comma-separated entries, each ``key=scope scope`` or a bare
    ``key`` (every scope). ``ValueError`` naming the entry by position (never the key) for a
    short key, an unknown scope, or ``=`` without scopes."""
    keys: list[ApiKey] = []
    for n, entry in enumerate(split_keys(value), 1):
        secret, has_scopes, scope_text = entry.partition("=")
        secret = secret.strip()
        where = f"HERALD_ADMIN_API_KEYS: key #{n}"
        if len(secret) < MIN_SECRET_LENGTH:
            # Never echo the key itself.
            raise ValueError(
                f"{where} is shorter than {MIN_SECRET_LENGTH} characters (make one with "
                f"{GENERATE_HINT})"
            )
        scopes = scope_text.split() if has_scopes else list(SCOPES)
        if not scopes:
            raise ValueError(f"{where} has '=' but no scopes; scopes are {', '.join(SCOPES)}")
        unknown = [scope for scope in scopes if scope not in SCOPES]
        if unknown:
            raise ValueError(
                f"{where} names unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)} "
                "(a key itself must not contain '=', ',' or white space)"
            )
        keys.append(ApiKey(secret, frozenset(scopes)))
    return tuple(keys)


class AuthSettings(BaseSettings):
    """Credentials the APIs accept and how failed attempts are limited (environment prefix
    ``HERALD_``, shared by every API)."""

    # hide_input_in_errors: a refused value must not reach the start-up error (and the logs).
    model_config = SettingsConfigDict(
        env_prefix="HERALD_", extra="ignore", hide_input_in_errors=True
    )

    #: Comma-separated API keys, each ``key=scope scope`` or a bare ``key`` (every scope);
    #: each key at least 16 characters. Empty: no key access.
    admin_api_keys: SecretStr = SecretStr(LOCAL_ADMIN_API_KEY)
    #: The server secret user tokens are HMACs with; at least 16 characters.
    user_token_secret: SecretStr = SecretStr(LOCAL_USER_TOKEN_SECRET)
    #: ``local``: a developer's machine (the well-known local credentials are allowed on any
    #: interface); ``production``: never allowed; unset: allowed on loopback only.
    env: Literal["local", "production"] | None = None
    #: Comma-separated secrets session tokens are signed with: the first signs, every one
    #: verifies (rotation: put the new one first, drop the old one after the longest session
    #: has expired); each at least 16 characters. Unset: the user-token secret.
    session_secrets: SecretStr | None = None
    #: Longest life of a session token, in seconds (one minute to one day).
    session_ttl_s: int = Field(default=DEFAULT_SESSION_TTL_S, ge=60, le=86_400)
    #: Failed authentications allowed per client address at once, then at the rate below.
    auth_failure_burst: int = Field(default=20, ge=1, le=100_000)
    #: Failed authentications per minute per client address after the burst (0: no limit).
    auth_failures_per_min: float = Field(default=10.0, ge=0)

    @field_validator("admin_api_keys")
    @classmethod
    def _keys_valid(cls, value: SecretStr) -> SecretStr:
        parse_api_keys(value.get_secret_value())
        return value

    @field_validator("user_token_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"HERALD_USER_TOKEN_SECRET must have at least {MIN_SECRET_LENGTH} characters "
                f"(make one with {GENERATE_HINT})"
            )
        return value

    @field_validator("session_secrets")
    @classmethod
    def _session_secrets_valid(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secrets = split_keys(value.get_secret_value())
        if not secrets:
            raise ValueError("HERALD_SESSION_SECRETS is empty; leave it unset for the default")
        for n, secret in enumerate(secrets, 1):
            if len(secret) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"HERALD_SESSION_SECRETS: secret #{n} is shorter than {MIN_SECRET_LENGTH} "
                    f"characters (make one with {GENERATE_HINT})"
                )
        return value

    @property
    def session_secret_list(self) -> tuple[str, ...]:
        """The secrets session tokens are signed (the first) and verified (every one) with."""
        if self.session_secrets is None:
            return (self.user_token_secret.get_secret_value(),)
        return split_keys(self.session_secrets.get_secret_value())

    @property
    def api_keys(self) -> tuple[ApiKey, ...]:
        """The API keys with their scopes, in the order given."""
        return parse_api_keys(self.admin_api_keys.get_secret_value())

    @property
    def admin_keys(self) -> tuple[str, ...]:
        """The API keys themselves, in the order given."""
        return tuple(key.secret for key in self.api_keys)

    @property
    def local_defaults_in_use(self) -> list[str]:
        """The variables still holding the local stack's well-known values."""
        names = []
        if LOCAL_ADMIN_API_KEY in self.admin_keys:
            names.append("HERALD_ADMIN_API_KEYS")
        if self.user_token_secret.get_secret_value() == LOCAL_USER_TOKEN_SECRET:
            names.append("HERALD_USER_TOKEN_SECRET")
        if self.session_secrets is not None and (
            LOCAL_USER_TOKEN_SECRET in self.session_secret_list
        ):
            names.append("HERALD_SESSION_SECRETS")
        return names

    @property
    def uses_local_defaults(self) -> bool:
        """Whether the local stack's well-known key or secret is in use."""
        return bool(self.local_defaults_in_use)

    def failure_limiter(self) -> RateLimiter:
        """The per-address limiter of failed authentications these settings describe."""
        return RateLimiter(self.auth_failures_per_min / 60, self.auth_failure_burst)


class InsecureDefaults(Exception):
    """An API was about to serve other machines with the local stack's well-known secrets."""


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only (``127.0.0.1``, ``::1``,
    ``localhost``); ``0.0.0.0``, ``::`` and every other address do not."""
    if host.strip().lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: AuthSettings, host: str, service: str) -> None:
    """Refuse (:class:`InsecureDefaults`, whose message says what to set and how) to serve
    ``host`` with a well-known local credential, unless ``host`` is loopback and
    ``HERALD_ENV`` is not ``production``, or ``HERALD_ENV=local``. Call before listening."""
    defaults = settings.local_defaults_in_use
    if not defaults or settings.env == "local":
        return
    if settings.env != "production" and is_loopback(host):
        return
    where = "HERALD_ENV=production" if settings.env == "production" else f"it listens on {host}"
    raise InsecureDefaults(
        f"{service} refuses to start: {' and '.join(defaults)} "
        f"{'hold' if len(defaults) > 1 else 'holds'} the local stack's well-known default "
        f"(printed in the README) and {where}, so anyone could use it. Set "
        f"{' and '.join(defaults)} to a secret of your own (make one with {GENERATE_HINT}; "
        "keys may carry scopes: key=events:write), or listen on 127.0.0.1, or set "
        "HERALD_ENV=local on a developer's machine nobody else can reach."
    )


def check_user_id(user_id: str) -> str:
    """A user id a token can be minted for: 1 to 255 printable characters without white
    space (the ingest API's rule); ``ValueError`` otherwise."""
    if not 1 <= len(user_id) <= MAX_USER_ID_LENGTH:
        raise ValueError(f"a user id has 1 to {MAX_USER_ID_LENGTH} characters, got {len(user_id)}")
    if not user_id.isprintable() or any(c.isspace() for c in user_id):
        raise ValueError("a user id must not contain white space or control characters")
    return user_id


def split_keys(value: str) -> tuple[str, ...]:
    """A comma-separated list of keys (blanks around them and empty entries dropped)."""
    return tuple(key.strip() for key in value.split(",") if key.strip())


def _bytes(value: str | bytes) -> bytes:
    # surrogateescape: any str a client sent can be compared (and fails), never raises.
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def constant_time_equals(given: str | bytes, expected: str | bytes) -> bool:
    """Whether two secrets are equal, in time that does not depend on where they differ."""
    return hmac.compare_digest(_bytes(given), _bytes(expected))


def user_token(user_id: str, secret: str | bytes) -> str:
    """The token that opens ``user_id``'s data: ``hex(HMAC-SHA256(secret, user_id))``.

    The same computation as Novu's and Knock's "subscriber hash", so a backend can mint tokens
    with any HMAC library: ``hmac.new(secret, user_id.encode(), "sha256").hexdigest()``.
    """
    return hmac.new(_bytes(secret), user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_user_token(user_id: str, token: str, secret: str | bytes) -> bool:
    """Whether ``token`` is ``user_id``'s token (constant-time comparison)."""
    return constant_time_equals(token.strip().lower(), user_token(user_id, secret))


class SessionInvalid(ValueError):
    """A session token that is not one of ours: malformed, or signed with no secret in use."""


class SessionExpired(ValueError):
    """A session token with a good signature whose expiry has passed."""


@dataclass(frozen=True)
class SessionClaims:
    """What a verified session token says: whose it is, and when it was issued and expires
    (Unix seconds)."""

    user_id: str
    issued_at: int
    expires_at: int


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or not set(text) <= _B64URL:
        raise SessionInvalid("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SessionInvalid("not base64url") from exc


_B64URL: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _session_signature(signed: str, secret: str | bytes) -> bytes:
    return hmac.new(_bytes(secret), signed.encode("ascii"), hashlib.sha256).digest()


def is_session_token(token: str) -> bool:
    """Whether ``token`` has the session token's form (as opposed to a user token)."""
    return token.strip().startswith(SESSION_PREFIX)


def session_token(
    user_id: str, secret: str | bytes, ttl_s: int, *, now: float | None = None
) -> tuple[str, int]:
    """A session token for ``user_id`` valid for ``ttl_s`` seconds from ``now``, and its
    expiry (Unix seconds): ``hs1.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>``, the
    HMAC taken over everything before the last dot."""
    issued = int(time.time() if now is None else now)
    expires = issued + int(ttl_s)
    claims = {"sub": user_id, "exp": expires, "iat": issued}
    payload = json.dumps(claims, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    signed = SESSION_PREFIX + _b64encode(payload.encode("utf-8"))
    return f"{signed}.{_b64encode(_session_signature(signed, secret))}", expires


def verify_session_token(
    token: str, secrets: Sequence[str | bytes], *, now: float | None = None
) -> SessionClaims:
    """The session ``token`` carries if one of ``secrets`` signed it: :class:`SessionInvalid`
    for a malformed or forged token, :class:`SessionExpired` for one signed right but past
    its expiry. Every secret is tried (no early exit)."""
    token = token.strip()
    if len(token) > MAX_SESSION_TOKEN_LENGTH or not token.startswith(SESSION_PREFIX):
        raise SessionInvalid("not a session token")
    signed, dot, signature_text = token.rpartition(".")
    if not dot or signed.count(".") != 1:
        raise SessionInvalid("not a session token")
    signature = _b64decode(signature_text)
    good = False
    for secret in secrets:
        if hmac.compare_digest(signature, _session_signature(signed, secret)):
            good = True
    if not good:
        raise SessionInvalid("the signature does not match")
    try:
        claims = json.loads(_b64decode(signed[len(SESSION_PREFIX) :]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SessionInvalid("the claims are not JSON") from exc
    if not isinstance(claims, dict):
        raise SessionInvalid("the claims are not an object")
    sub, exp, iat = claims.get("sub"), claims.get("exp"), claims.get("iat")
    if not isinstance(sub, str) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in (exp, iat)
    ):
        raise SessionInvalid("the claims lack sub, exp or iat")
    assert isinstance(exp, int) and isinstance(iat, int)
    if (time.time() if now is None else now) >= exp:
        raise SessionExpired(f"the session expired at {exp}")
    return SessionClaims(sub, iat, exp)


def matching_admin_key(given: str, keys: Sequence[str]) -> str | None:
    """The admin key equal to ``given``, or None. Every key is compared (no early exit), so
    the time taken says nothing about which key came close."""
    found: str | None = None
    for key in keys:
        if constant_time_equals(given, key):
            found = key
    return found


def key_fingerprint(key: str) -> str:
    """A short, non-reversible name for an API key (logs, rate-limit buckets)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Principal:
    """Who a request was authenticated as: an API key (by fingerprint, with its scopes) or a
    user (by their token)."""

    kind: Literal["key", "user"]
    #: The key's fingerprint for keys, the user id for users.
    subject: str
    #: What a key may do (a user token opens its own user's data, and has no scopes).
    scopes: frozenset[str] = frozenset()
    #: For a user who came with a session token: when it expires (Unix seconds).
    session_expires_at: int | None = None

    @property
    def is_session(self) -> bool:
        """Whether this user came with a session token (not their long-lived token)."""
        return self.session_expires_at is not None

    @property
    def is_key(self) -> bool:
        return self.kind == "key"

    def may(self, scope: str) -> bool:
        """Whether this is a key holding ``scope``."""
        return self.is_key and scope in self.scopes

    @property
    def rate_key(self) -> str:
        """The rate-limit bucket this caller's requests are charged to."""
        return f"{self.kind}:{self.subject}"


class BadCredential(Problem):
    """A credential was presented and is wrong: an unknown key or a forged token. Counted
    against the client address's failure budget."""


def _unauthenticated(detail: str, *, presented: bool = False) -> Problem:
    kind = BadCredential if presented else Problem
    return kind(
        401,
        "Unauthorized",
        detail,
        kind="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="herald"'},
    )


def _forbidden() -> Problem:
    # One answer for a forged token, another user's token and a token for a user who does
    # not exist: nothing here depends on stored data.
    return BadCredential(
        403,
        "Forbidden",
        "the user token does not open this user's data",
        kind="forbidden",
    )


def _session_expired() -> Problem:
    # Not a failed attempt: the token was ours; the client should fetch a new one.
    return Problem(
        401,
        "Session expired",
        "the session token has expired; ask the application's backend for a new one "
        "(POST /v1/users/{user_id}/session)",
        kind=SESSION_EXPIRED_KIND,
        headers={"WWW-Authenticate": 'Bearer realm="herald", error="invalid_token"'},
    )


def _insufficient_scope(missing: Sequence[str]) -> Problem:
    return Problem(
        403,
        "Forbidden",
        f"this API key lacks the scope {' and '.join(missing)} this endpoint needs; use a key "
        "configured with it (HERALD_ADMIN_API_KEYS: key=scope scope)",
        kind="insufficient-scope",
        required_scopes=list(missing),
    )


class Authenticator:
    """Checks credentials against the settings, limits failed attempts per client address,
    and charges callers' rate-limit buckets."""

    def __init__(
        self,
        settings: AuthSettings,
        limiter: RateLimiter | None = None,
        failures: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self._keys = {key.secret: key for key in settings.api_keys}
        self._secret = settings.user_token_secret.get_secret_value()
        self._session_secrets = settings.session_secret_list
        self.limiter = limiter
        self.failures = failures if failures is not None else settings.failure_limiter()

    def key(self, api_key: str | None, scopes: Sequence[str] = ()) -> Principal:
        """The principal of ``api_key`` if it holds every one of ``scopes``: ``401`` if it is
        missing or unknown, ``403`` if it lacks a scope."""
        if not api_key:
            raise _unauthenticated(
                f"this endpoint needs an API key: send {API_KEY_HEADER}: <key> "
                "or Authorization: Bearer <key>"
            )
        secret = matching_admin_key(api_key, tuple(self._keys))
        if secret is None:
            raise _unauthenticated("the API key is not valid", presented=True)
        key = self._keys[secret]
        missing = [scope for scope in scopes if scope not in key.scopes]
        if missing:
            raise _insufficient_scope(missing)
        return Principal("key", key.fingerprint, key.scopes)

    def user(
        self,
        user_id: str,
        *,
        api_key: str | None,
        token: str | None,
        scopes: Sequence[str] = (),
    ) -> Principal:
        """The principal allowed to act on ``user_id``'s data: that user's token, or a key
        holding ``scopes``. ``401`` without credentials or with an unknown key; ``403`` for a
        token that is not ``user_id``'s or a key without the scopes."""
        if api_key:
            return self.key(api_key, scopes)
        if not token:
            raise _unauthenticated(
                f"send the user's token as {USER_TOKEN_HEADER}: <token> "
                f"(or an API key as {API_KEY_HEADER})"
            )
        if is_session_token(token):
            try:
                session = verify_session_token(token, self._session_secrets)
            except SessionExpired:
                raise _session_expired() from None
            except SessionInvalid:
                raise _forbidden() from None
            if not constant_time_equals(session.user_id, user_id):
                raise _forbidden()
            return Principal("user", user_id, session_expires_at=session.expires_at)
        if not verify_user_token(user_id, token, self._secret):
            raise _forbidden()
        return Principal("user", user_id)

    def token_for(self, user_id: str) -> str:
        """``user_id``'s token under this authenticator's secret."""
        return user_token(user_id, self._secret)

    def session_for(self, user_id: str, ttl_s: int | None = None) -> tuple[str, int]:
        """A new session token for ``user_id``, signed with the first session secret, valid
        for ``ttl_s`` seconds (default and ceiling: ``HERALD_SESSION_TTL_S``); and its expiry
        (Unix seconds)."""
        longest = self.settings.session_ttl_s
        ttl = longest if ttl_s is None else ttl_s
        if not 1 <= ttl <= longest:
            raise ValueError(f"a session lasts 1 to {longest} seconds, not {ttl}")
        return session_token(user_id, self._session_secrets[0], ttl)

    def authenticate(self, client: str, attempt: Callable[[], Principal]) -> Principal:
        """Run ``attempt`` (a credential check) for a request from address ``client``: ``429``
        without checking if the address has used up its failed attempts, and a wrong
        credential counted against it."""
        wait = self.failures.wait(client)
        if wait > 0:
            AUTH_FAILURES_REFUSED.inc()
            raise Problem(
                429,
                "Too Many Requests",
                f"too many failed authentication attempts from this address; retry in {wait:.0f} s",
                kind="too-many-failed-attempts",
                headers={"Retry-After": retry_after(wait)},
            )
        try:
            return attempt()
        except BadCredential:
            AUTH_FAILURES.inc()
            self.failures.acquire(client)
            raise

    def charge(self, principal: Principal) -> None:
        """Take one request from the caller's bucket; ``429`` with ``Retry-After`` if empty."""
        if self.limiter is None:
            return
        wait = self.limiter.acquire(principal.rate_key)
        if wait > 0:
            raise Problem(
                429,
                "Too Many Requests",
                f"rate limit of {self.limiter.rate_per_s:g} requests/s "
                f"(bursts of {self.limiter.burst}) exceeded; retry in {wait:.1f} s",
                kind="rate-limited",
                headers={"Retry-After": retry_after(wait)},
            )


def install_auth(app: FastAPI, authenticator: Authenticator) -> None:
    """Make ``authenticator`` the one :func:`require_key`/:func:`require_user` use."""
    app.state.authenticator = authenticator
    defaults = authenticator.settings.local_defaults_in_use
    if defaults:
        log.warning(
            "using the local stack's well-known %s; set your own outside local development",
            " and ".join(defaults),
        )


def get_authenticator(request: Request) -> Authenticator:
    """Dependency: the app's :class:`Authenticator` (see :func:`install_auth`)."""
    authenticator = getattr(request.app.state, "authenticator", None)
    if not isinstance(authenticator, Authenticator):
        # Fail closed: a route wired without install_auth answers 500, never serves data.
        raise RuntimeError("herald.auth.install_auth was not called for this app")
    return authenticator


def _path_user(request: Request) -> str:
    user_id = request.path_params.get(USER_PATH_PARAM)
    if not isinstance(user_id, str):
        raise RuntimeError(f"a user route needs a {{{USER_PATH_PARAM}}} path parameter")
    return user_id


def client_address(request: Request) -> str:
    """The address a request came from (the proxy's, unless uvicorn is told to trust its
    ``X-Forwarded-For``: ``FORWARDED_ALLOW_IPS``)."""
    return request.client.host if request.client is not None else "unknown"


def _required(security_scopes: SecurityScopes) -> list[str]:
    if not security_scopes.scopes:
        # Fail closed: a key route must say what a key needs.
        raise RuntimeError("an API-key route must declare its scope: Security(..., scopes=[...])")
    return list(security_scopes.scopes)


# Security schemes: they document the credentials in OpenAPI (the "Authorize" button of
# /docs) and read them; auto_error=False so that every refusal is one of ours.
_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="AdminApiKey",
    description="An API key (HERALD_ADMIN_API_KEYS) holding the scopes the operation lists: "
    + ", ".join(SCOPES)
    + ".",
    auto_error=False,
)
_bearer = HTTPBearer(
    scheme_name="AdminBearer",
    description="An API key as a bearer token (the same scopes).",
    auto_error=False,
)
_user_token_header = APIKeyHeader(
    name=USER_TOKEN_HEADER,
    scheme_name="UserToken",
    description="The user's token: hex(HMAC-SHA256(HERALD_USER_TOKEN_SECRET, user_id)), or a "
    "session token (hs1.…, POST /v1/users/{user_id}/session) until it expires; opens that "
    "user's own data whatever the scopes listed.",
    auto_error=False,
)
_user_token_query = APIKeyQuery(
    name=TOKEN_QUERY,
    scheme_name="UserTokenQuery",
    description="The user's token or session token in the query, for EventSource clients that "
    "cannot send headers.",
    auto_error=False,
)

_ApiKey = Annotated[str | None, Security(_api_key_header)]
_Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
_HeaderToken = Annotated[str | None, Security(_user_token_header)]
_QueryToken = Annotated[str | None, Security(_user_token_query)]


def _admin_key(api_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    return api_key or (bearer.credentials if bearer is not None else None)


async def require_key(
    request: Request, security_scopes: SecurityScopes, api_key: _ApiKey, bearer: _Bearer
) -> Principal:
    """Dependency: an API key holding the route's scopes (``401``/``403`` otherwise), charged
    to the key's bucket. Use as ``Security(require_key, scopes=["admin"])``."""
    authenticator = get_authenticator(request)
    needed = _required(security_scopes)
    principal = authenticator.authenticate(
        client_address(request), lambda: authenticator.key(_admin_key(api_key, bearer), needed)
    )
    authenticator.charge(principal)
    return principal


async def require_user(
    request: Request,
    security_scopes: SecurityScopes,
    api_key: _ApiKey,
    bearer: _Bearer,
    token: _HeaderToken,
) -> Principal:
    """Dependency for routes under ``{user_id}``: that user's token, or a key holding the
    route's scopes. Use as ``Security(require_user, scopes=["inbox:read"])``."""
    authenticator = get_authenticator(request)
    needed = _required(security_scopes)
    principal = authenticator.authenticate(
        client_address(request),
        lambda: authenticator.user(
            _path_user(request), api_key=_admin_key(api_key, bearer), token=token, scopes=needed
        ),
    )
    authenticator.charge(principal)
    return principal


async def require_user_stream(
    request: Request,
    security_scopes: SecurityScopes,
    api_key: _ApiKey,
    bearer: _Bearer,
    token: _HeaderToken,
    query_token: _QueryToken,
) -> Principal:
    """:func:`require_user`, also accepting ``?token=`` (EventSource cannot send headers)."""
    authenticator = get_authenticator(request)
    needed = _required(security_scopes)
    principal = authenticator.authenticate(
        client_address(request),
        lambda: authenticator.user(
            _path_user(request),
            api_key=_admin_key(api_key, bearer),
            token=token or query_token,
            scopes=needed,
        ),
    )
    authenticator.charge(principal)
    return principal


async def optional_key(request: Request, api_key: _ApiKey, bearer: _Bearer) -> Principal | None:
    """Dependency: the API key's principal if one is sent (a wrong one is ``401`` and counts
    as a failed attempt), None for an anonymous request."""
    given = _admin_key(api_key, bearer)
    if not given:
        return None
    authenticator = get_authenticator(request)
    principal = authenticator.authenticate(
        client_address(request), lambda: authenticator.key(given)
    )
    authenticator.charge(principal)
    return principal


def key_with(scope: Scope) -> Any:
    """``Security(require_key, scopes=[scope])``: a route or router dependency."""
    return Security(require_key, scopes=[scope])


def user_or_key_with(scope: Scope) -> Any:
    """``Security(require_user, scopes=[scope])``: the user's token or a key with ``scope``."""
    return Security(require_user, scopes=[scope])


#: The caller of a route under ``{user_id}`` reading the inbox (token, or ``inbox:read``).
InboxReader = Annotated[Principal, Security(require_user, scopes=["inbox:read"])]
#: The caller of a real-time stream (``?token=`` too, or a key with ``inbox:read``).
StreamCaller = Annotated[Principal, Security(require_user_stream, scopes=["inbox:read"])]
#: An anonymous caller or a key (``/readyz``).
OptionalKey = Annotated[Principal | None, Depends(optional_key)]


# ``token=...`` (and ``api_key=``/``key=``) in a logged URL: a query-string credential must
# not end up in access logs.
_QUERY_CREDENTIAL = re.compile(r"(?i)([?&](?:token|api_key|key)=)[^&\s\"]*")


def redact_credentials(text: str) -> str:
    """``text`` with query-string credentials replaced by ``REDACTED``."""
    return _QUERY_CREDENTIAL.sub(r"\1REDACTED", text)


class RedactCredentials(logging.Filter):
    """A log filter that redacts query-string credentials from messages and their args
    (uvicorn's access log passes the request path, query included, as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_credentials(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        if isinstance(record.msg, str):
            record.msg = redact_credentials(record.msg)
        return True


def redact_access_log(logger_name: str = "uvicorn.access") -> None:
    """Install :class:`RedactCredentials` on ``logger_name`` (once)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactCredentials) for f in logger.filters):
        logger.addFilter(RedactCredentials())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m herald.auth user-token USER_ID...``: print each user's token."""
    parser = argparse.ArgumentParser(
        prog="python -m herald.auth",
        description="Herald credentials. The secret is read from HERALD_USER_TOKEN_SECRET "
        "(the local stack's default when unset).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    mint = commands.add_parser(
        "user-token",
        help="print the token of each user (send it as X-User-Token, or ?token= on /stream)",
    )
    mint.add_argument("user_ids", nargs="+", metavar="USER_ID")
    session = commands.add_parser(
        "session-token",
        help="print a session token for each user (HERALD_SESSION_SECRETS, HERALD_SESSION_TTL_S)",
    )
    session.add_argument("user_ids", nargs="+", metavar="USER_ID")
    session.add_argument("--ttl", type=int, default=None, help="seconds (default: the TTL)")
    args = parser.parse_args(argv)
    settings = AuthSettings()
    authenticator = Authenticator(settings)
    for user_id in args.user_ids:
        try:
            check_user_id(user_id)
            if args.command == "session-token":
                token, _ = authenticator.session_for(user_id, args.ttl)
            else:
                token = user_token(user_id, settings.user_token_secret.get_secret_value())
        except ValueError as exc:
            parser.error(f"{user_id!r}: {exc}")
        print(token if len(args.user_ids) == 1 else f"{user_id}\t{token}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
