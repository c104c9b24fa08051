"""Who may call Herald's HTTP APIs: admin API keys and per-user tokens.

Two kinds of credentials, both checked in constant time:

- **Admin API keys** (``HERALD_ADMIN_API_KEYS``, comma-separated so keys can be rotated: add
  the new one, move clients over, drop the old one). Sent as ``X-API-Key: <key>`` or
  ``Authorization: Bearer <key>``. An admin key may do everything, including reading any
  user's inbox (a back office, the product's backend).
- **User tokens**: ``hex(HMAC-SHA256(HERALD_USER_TOKEN_SECRET, user_id))``, the "subscriber
  hash" of Novu and Knock. The product's backend, which knows the secret (or asks the read
  API's admin endpoint), hands each signed-in user their token; the front end sends it as
  ``X-User-Token: <token>`` (or ``?token=<token>`` on the real-time stream, because a
  browser's ``EventSource`` cannot send headers). A token opens exactly one user's data. It
  does not expire: rotating the secret revokes every token at once.

Mint a token from a shell (the secret comes from ``HERALD_USER_TOKEN_SECRET``)::

    python -m herald.auth user-token user-42

or in Python: ``herald.auth.user_token("user-42", secret)``.

Local defaults (:data:`LOCAL_ADMIN_API_KEY`, :data:`LOCAL_USER_TOKEN_SECRET`) make the local
stack work out of the box; a process using them logs a warning, and a deployment must set its
own.

Refusals never depend on stored data: the decision is made from the credential and the path
alone, before any database read, so the answer for another user's id is the same whether that
user exists or not. Missing or unknown credentials are ``401``; a user token presented for
another user's path is ``403`` (a forged token looks exactly the same).

FastAPI wiring: :func:`install_auth` puts an :class:`Authenticator` on the app; routers take
one dependency each: ``dependencies=[Depends(require_admin)]`` for admin routers,
``[Depends(require_user)]`` for routers under ``/users/{user_id}``, and
``[Depends(require_user_stream)]`` where ``?token=`` is accepted too. Every authenticated
request is charged to its caller's rate-limit bucket (:class:`herald.limits.RateLimiter`);
an empty bucket is ``429`` with ``Retry-After``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import (
    APIKeyHeader,
    APIKeyQuery,
    HTTPAuthorizationCredentials,
    HTTPBearer,
)
from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from herald.identity import MAX_ID_LENGTH
from herald.limits import RateLimiter, retry_after
from herald.webapi import Problem

log = logging.getLogger(__name__)

#: The admin API key of the local stack (documented in the README; never use it elsewhere).
LOCAL_ADMIN_API_KEY: Final = "herald-local-admin-key"
#: The user-token secret of the local stack (likewise).
LOCAL_USER_TOKEN_SECRET: Final = "herald-local-user-token-secret"
#: Shortest admin key and token secret accepted: guessing must stay out of reach.
MIN_SECRET_LENGTH: Final = 16

#: Longest user id accepted in a user path: the one id limit of herald.identity.
MAX_USER_ID_LENGTH: Final = MAX_ID_LENGTH

API_KEY_HEADER: Final = "X-API-Key"
USER_TOKEN_HEADER: Final = "X-User-Token"
#: Query parameter carrying a user token where headers cannot be sent (EventSource).
TOKEN_QUERY: Final = "token"
#: The path parameter naming the user whose data a route serves.
USER_PATH_PARAM: Final = "user_id"


class AuthSettings(BaseSettings):
    """Credentials the APIs accept (environment prefix ``HERALD_``, shared by every API)."""

    # hide_input_in_errors: a refused value must not reach the start-up error (and the logs).
    model_config = SettingsConfigDict(
        env_prefix="HERALD_", extra="ignore", hide_input_in_errors=True
    )

    #: Comma-separated admin API keys; each at least 16 characters. Empty: no admin access.
    admin_api_keys: SecretStr = SecretStr(LOCAL_ADMIN_API_KEY)
    #: The server secret user tokens are HMACs with; at least 16 characters.
    user_token_secret: SecretStr = SecretStr(LOCAL_USER_TOKEN_SECRET)

    @field_validator("admin_api_keys")
    @classmethod
    def _keys_long_enough(cls, value: SecretStr) -> SecretStr:
        for n, key in enumerate(split_keys(value.get_secret_value()), 1):
            if len(key) < MIN_SECRET_LENGTH:
                # Never echo the key itself.
                raise ValueError(
                    f"HERALD_ADMIN_API_KEYS: key #{n} is shorter than {MIN_SECRET_LENGTH} "
                    "characters"
                )
        return value

    @field_validator("user_token_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"HERALD_USER_TOKEN_SECRET must have at least {MIN_SECRET_LENGTH} characters"
            )
        return value

    @property
    def admin_keys(self) -> tuple[str, ...]:
        """The admin API keys, in the order given."""
        return split_keys(self.admin_api_keys.get_secret_value())

    @property
    def uses_local_defaults(self) -> bool:
        """Whether the local stack's well-known key or secret is in use."""
        return (
            LOCAL_ADMIN_API_KEY in self.admin_keys
            or self.user_token_secret.get_secret_value() == LOCAL_USER_TOKEN_SECRET
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
    """Who a request was authenticated as: an admin key (by fingerprint) or a user."""

    kind: Literal["admin", "user"]
    #: The key's fingerprint for admins, the user id for users.
    subject: str

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    @property
    def rate_key(self) -> str:
        """The rate-limit bucket this caller's requests are charged to."""
        return f"{self.kind}:{self.subject}"


def _unauthenticated(detail: str) -> Problem:
    return Problem(
        401,
        "Unauthorized",
        detail,
        kind="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="herald"'},
    )


def _forbidden() -> Problem:
    # One answer for a forged token, another user's token and a token for a user who does
    # not exist: nothing here depends on stored data.
    return Problem(
        403,
        "Forbidden",
        "the user token does not open this user's data",
        kind="forbidden",
    )


class Authenticator:
    """Checks credentials against the settings and charges callers' rate-limit buckets."""

    def __init__(self, settings: AuthSettings, limiter: RateLimiter | None = None) -> None:
        self.settings = settings
        self._keys = settings.admin_keys
        self._secret = settings.user_token_secret.get_secret_value()
        self.limiter = limiter

    def admin(self, api_key: str | None) -> Principal:
        """The admin principal of ``api_key``; ``401`` if it is missing or unknown."""
        if not api_key:
            raise _unauthenticated(
                f"this endpoint needs an admin API key: send {API_KEY_HEADER}: <key> "
                "or Authorization: Bearer <key>"
            )
        key = matching_admin_key(api_key, self._keys)
        if key is None:
            raise _unauthenticated("the API key is not valid")
        return Principal("admin", key_fingerprint(key))

    def user(self, user_id: str, *, api_key: str | None, token: str | None) -> Principal:
        """The principal allowed to act on ``user_id``'s data: an admin key, or that user's
        token. ``401`` without credentials or with an unknown key; ``403`` for a token that
        is not ``user_id``'s."""
        if api_key:
            return self.admin(api_key)
        if not token:
            raise _unauthenticated(
                f"send the user's token as {USER_TOKEN_HEADER}: <token> "
                f"(or an admin key as {API_KEY_HEADER})"
            )
        if not verify_user_token(user_id, token, self._secret):
            raise _forbidden()
        return Principal("user", user_id)

    def token_for(self, user_id: str) -> str:
        """``user_id``'s token under this authenticator's secret."""
        return user_token(user_id, self._secret)

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
    """Make ``authenticator`` the one :func:`require_admin`/:func:`require_user` use."""
    app.state.authenticator = authenticator
    if authenticator.settings.uses_local_defaults:
        log.warning(
            "using the local stack's well-known admin API key or user-token secret; "
            "set HERALD_ADMIN_API_KEYS and HERALD_USER_TOKEN_SECRET outside local development"
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


# Security schemes: they document the credentials in OpenAPI (the "Authorize" button of
# /docs) and read them; auto_error=False so that every refusal is one of ours.
_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="AdminApiKey",
    description="An admin API key (HERALD_ADMIN_API_KEYS).",
    auto_error=False,
)
_bearer = HTTPBearer(
    scheme_name="AdminBearer",
    description="An admin API key as a bearer token.",
    auto_error=False,
)
_user_token_header = APIKeyHeader(
    name=USER_TOKEN_HEADER,
    scheme_name="UserToken",
    description="The user's token: hex(HMAC-SHA256(HERALD_USER_TOKEN_SECRET, user_id)).",
    auto_error=False,
)
_user_token_query = APIKeyQuery(
    name=TOKEN_QUERY,
    scheme_name="UserTokenQuery",
    description="The user's token in the query, for EventSource clients that cannot send headers.",
    auto_error=False,
)

_ApiKey = Annotated[str | None, Security(_api_key_header)]
_Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
_HeaderToken = Annotated[str | None, Security(_user_token_header)]
_QueryToken = Annotated[str | None, Security(_user_token_query)]


def _admin_key(api_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    return api_key or (bearer.credentials if bearer is not None else None)


async def require_admin(request: Request, api_key: _ApiKey, bearer: _Bearer) -> Principal:
    """Dependency: an admin API key (``401`` otherwise), charged to the key's bucket."""
    authenticator = get_authenticator(request)
    principal = authenticator.admin(_admin_key(api_key, bearer))
    authenticator.charge(principal)
    return principal


async def require_user(
    request: Request, api_key: _ApiKey, bearer: _Bearer, token: _HeaderToken
) -> Principal:
    """Dependency for routes under ``{user_id}``: that user's token or an admin key."""
    authenticator = get_authenticator(request)
    principal = authenticator.user(
        _path_user(request), api_key=_admin_key(api_key, bearer), token=token
    )
    authenticator.charge(principal)
    return principal


async def require_user_stream(
    request: Request,
    api_key: _ApiKey,
    bearer: _Bearer,
    token: _HeaderToken,
    query_token: _QueryToken,
) -> Principal:
    """:func:`require_user`, also accepting ``?token=`` (EventSource cannot send headers)."""
    authenticator = get_authenticator(request)
    principal = authenticator.user(
        _path_user(request), api_key=_admin_key(api_key, bearer), token=token or query_token
    )
    authenticator.charge(principal)
    return principal


AdminCaller = Annotated[Principal, Depends(require_admin)]
UserCaller = Annotated[Principal, Depends(require_user)]
StreamCaller = Annotated[Principal, Depends(require_user_stream)]

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
    args = parser.parse_args(argv)
    secret = AuthSettings().user_token_secret.get_secret_value()
    for user_id in args.user_ids:
        try:
            check_user_id(user_id)
        except ValueError as exc:
            parser.error(f"{user_id!r}: {exc}")
        token = user_token(user_id, secret)
        print(token if len(args.user_ids) == 1 else f"{user_id}\t{token}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
