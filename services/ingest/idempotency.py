"""``Idempotency-Key`` on ``POST /v1/events``, with the semantics Stripe documents.

A key is scoped to the calling API key (:attr:`Caller.name`, the key's fingerprint) and bound
to the request's body by its hash (:func:`request_hash`). Its row in ``idempotency_key`` goes
through three steps:

- **claim** (:func:`claim`), after the cheap checks of the request and before the event types
  are looked up: ``INSERT ... ON CONFLICT DO NOTHING`` in its own short transaction, so a
  concurrent request with the same key sees the row at once. A key already there is answered
  from it: the stored response (same body), 422 (another body), 409 (the first request is
  still in progress). A claim left in progress past the lock timeout (its process died) is
  taken over, compare-and-set on its ``claim_token``; a row older than the TTL counts as
  absent and is taken over too.
- **complete** (:func:`complete`), once Kafka acknowledged every event: the response is
  stored, and replays get it with ``Idempotent-Replayed: true``.
- **release** (:func:`release`), if the request failed (422 for an event type, 503 from Kafka,
  any exception): the row is deleted, so the client may retry with the same key.

The events of a keyed request get ids derived from (caller, key, request hash, index in the
request) (:meth:`KeyedRequest.event_id`): a retry after a crash between publishing and storing
the response, or after a 503, publishes the same ids, which the router deduplicates, while
another body never collides with an earlier one. Expired rows are deleted in the background
(:class:`Purger`), at most once a minute per process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal, cast

from pydantic import BaseModel
from sqlalchemy import Engine, Table, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError

from herald.db.models import IdempotencyKey
from herald.identity import HERALD_NAMESPACE
from herald.webapi import Problem

log = logging.getLogger(__name__)

IDEMPOTENCY = cast(Table, IdempotencyKey.__table__)

#: The header a replayed response carries (``true``).
REPLAYED_HEADER: Final = "Idempotent-Replayed"
#: Seconds a client is told to wait (``Retry-After``) when the key's request is in progress.
IN_USE_RETRY_AFTER_S: Final = 1
#: Namespace of the event ids derived for keyed requests.
KEYED_EVENT_NAMESPACE: Final = uuid.uuid5(HERALD_NAMESPACE, "idempotency-key")
# How many times a claim is tried when the row changes under it (released, purged, taken
# over) before the request is answered 409.
_CLAIM_ATTEMPTS = 5


def canonical_json(data: Any) -> str:
    """``data`` as JSON with sorted keys and no spaces: equal data, equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_hash(body: BaseModel) -> str:
    """sha256 (hex) of the canonical JSON of the parsed request body.

    Parsed, so what only differs in spelling (key order, ``3`` or ``"3"`` in a context, a time
    zone offset) is the same request; a single event and a batch of one are not.
    """
    text = canonical_json(body.model_dump(mode="json"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyedRequest:
    """A request sent with an ``Idempotency-Key``: who sent it, the key, its body's hash."""

    caller: str
    key: str
    request_hash: str

    def event_id(self, index: int) -> str:
        """The id of the request's ``index``-th event (when it brings none of its own)."""
        name = canonical_json([self.caller, self.key, self.request_hash, index])
        return str(uuid.uuid5(KEYED_EVENT_NAMESPACE, name))


@dataclass(frozen=True)
class Stored:
    """What ``idempotency_key`` holds for a key, judged by the database's clock."""

    request_hash: str
    claim_token: uuid.UUID
    #: NULL while the request is in progress.
    response_status: int | None
    response_body: dict[str, Any] | None
    #: Older than the TTL: the key counts as never used.
    expired: bool
    #: In progress for longer than the lock timeout: its process died.
    stale: bool


Verdict = Literal["take-over", "replay", "reused", "in-use"]


def verdict(stored: Stored, request_hash: str) -> Verdict:
    """What a request with ``request_hash`` does about the row already there for its key.

    An expired row is taken over whatever it holds; another body is refused (even one in
    progress or left by a crashed request, which may have published); the same body gets the
    stored response, or waits for the request in progress unless that one is stale.
    """
    if stored.expired:
        return "take-over"
    if stored.request_hash != request_hash:
        return "reused"
    if stored.response_status is not None:
        return "replay"
    return "take-over" if stored.stale else "in-use"


@dataclass(frozen=True)
class Claim:
    """A key this request holds: it publishes, then completes or releases the claim."""

    request: KeyedRequest
    token: uuid.UUID


@dataclass(frozen=True)
class Replay:
    """The response stored for the key: answer it again."""

    status: int
    body: dict[str, Any]


def claim(
    engine: Engine, request: KeyedRequest, *, ttl_s: float, lock_timeout_s: float
) -> Claim | Replay:
    """Claim ``request``'s key for this request, or the stored response to answer instead.

    Raises :class:`Problem`: 422 (``idempotency-key-reused``) if the key was used with another
    body, 409 (``idempotency-key-in-use``, ``Retry-After``) while a request with it is in
    progress. Each attempt is its own short transaction, committed before the caller goes on.
    """
    token = uuid.uuid4()
    same_key = (IDEMPOTENCY.c.caller == request.caller) & (IDEMPOTENCY.c.key == request.key)
    expired = IDEMPOTENCY.c.created_at < func.now() - timedelta(seconds=ttl_s)
    stale = IDEMPOTENCY.c.locked_at < func.now() - timedelta(seconds=lock_timeout_s)
    for _attempt in range(_CLAIM_ATTEMPTS):
        with engine.begin() as connection:
            inserted = connection.execute(
                insert(IDEMPOTENCY)
                .values(
                    caller=request.caller,
                    key=request.key,
                    request_hash=request.request_hash,
                    claim_token=token,
                )
                .on_conflict_do_nothing(index_elements=[IDEMPOTENCY.c.caller, IDEMPOTENCY.c.key])
                .returning(IDEMPOTENCY.c.claim_token)
            ).first()
            if inserted is not None:
                return Claim(request, token)
            row = connection.execute(
                select(
                    IDEMPOTENCY.c.request_hash,
                    IDEMPOTENCY.c.claim_token,
                    IDEMPOTENCY.c.response_status,
                    IDEMPOTENCY.c.response_body,
                    expired.label("expired"),
                    stale.label("stale"),
                ).where(same_key)
            ).first()
            if row is None:
                continue  # released or purged since the insert: claim it again
            stored = Stored(
                row.request_hash,
                row.claim_token,
                row.response_status,
                row.response_body,
                expired=bool(row.expired),
                stale=bool(row.stale),
            )
            match verdict(stored, request.request_hash):
                case "replay":
                    assert stored.response_status is not None and stored.response_body is not None
                    return Replay(stored.response_status, stored.response_body)
                case "reused":
                    raise _reused(request.key)
                case "in-use":
                    raise _in_use(request.key)
            # Take over: only if the row is still the one just read.
            taken = connection.execute(
                update(IDEMPOTENCY)
                .where(same_key, IDEMPOTENCY.c.claim_token == stored.claim_token)
                .values(
                    request_hash=request.request_hash,
                    claim_token=token,
                    response_status=None,
                    response_body=None,
                    locked_at=func.now(),
                    created_at=func.now() if stored.expired else IDEMPOTENCY.c.created_at,
                )
            )
            if taken.rowcount == 1:
                log.warning(
                    "Idempotency-Key %r of %s taken over (%s)",
                    request.key,
                    request.caller,
                    "expired" if stored.expired else "its request did not finish in time",
                )
                return Claim(request, token)
    raise _in_use(request.key)


def complete(engine: Engine, held: Claim, status: int, body: dict[str, Any]) -> bool:
    """Store the response of the claimed request; False if it could not be (the claim was
    taken over, or the database failed: logged, the events are published all the same)."""
    statement = (
        update(IDEMPOTENCY)
        .where(
            IDEMPOTENCY.c.caller == held.request.caller,
            IDEMPOTENCY.c.key == held.request.key,
            IDEMPOTENCY.c.claim_token == held.token,
            IDEMPOTENCY.c.response_status.is_(None),
        )
        .values(response_status=status, response_body=body)
    )
    try:
        with engine.begin() as connection:
            stored = connection.execute(statement).rowcount == 1
    except SQLAlchemyError:
        log.exception("could not store the response of Idempotency-Key %r", held.request.key)
        return False
    if not stored:
        log.warning(
            "Idempotency-Key %r of %s: the claim was taken over before the response was stored",
            held.request.key,
            held.request.caller,
        )
    return stored


def release(engine: Engine, held: Claim) -> None:
    """Forget the claim of a request that failed, so the client may retry with the key.

    Never raises (it runs while another error is on its way to the client); a claim that
    could not be deleted is taken over once the lock timeout passed.
    """
    statement = delete(IDEMPOTENCY).where(
        IDEMPOTENCY.c.caller == held.request.caller,
        IDEMPOTENCY.c.key == held.request.key,
        IDEMPOTENCY.c.claim_token == held.token,
        IDEMPOTENCY.c.response_status.is_(None),
    )
    try:
        with engine.begin() as connection:
            connection.execute(statement)
    except SQLAlchemyError:
        log.exception("could not release Idempotency-Key %r", held.request.key)


def purge_expired(engine: Engine, ttl_s: float, *, batch: int = 1000) -> int:
    """Delete the rows older than ``ttl_s`` (a short transaction per ``batch`` rows); how
    many were deleted."""
    expired = (
        select(IDEMPOTENCY.c.caller, IDEMPOTENCY.c.key)
        .where(IDEMPOTENCY.c.created_at < func.now() - timedelta(seconds=ttl_s))
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    statement = delete(IDEMPOTENCY).where(
        tuple_(IDEMPOTENCY.c.caller, IDEMPOTENCY.c.key).in_(expired)
    )
    total = 0
    while True:
        with engine.begin() as connection:
            deleted = connection.execute(statement).rowcount
        total += deleted
        if deleted < batch:
            return total


class Purger:
    """Deletes expired keys in a background thread, at most once every ``every_s`` seconds
    per engine; :meth:`maybe_purge` is cheap enough to call on every request."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._lock = threading.Lock()
        self._due: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()

    def maybe_purge(self, engine: Engine, ttl_s: float) -> threading.Thread | None:
        """Start a purge if none was started for ``engine`` in the last ``every_s`` seconds;
        its thread, or None."""
        now = time.monotonic()
        with self._lock:
            if now < self._due.get(engine, 0.0):
                return None
            self._due[engine] = now + self.every_s
        thread = threading.Thread(
            target=self._purge, args=(engine, ttl_s), name="idempotency-purge", daemon=True
        )
        thread.start()
        return thread

    @staticmethod
    def _purge(engine: Engine, ttl_s: float) -> None:
        try:
            deleted = purge_expired(engine, ttl_s)
        except SQLAlchemyError as exc:
            log.warning("could not delete expired Idempotency-Keys: %s", exc)
            return
        if deleted:
            log.info("deleted %d expired Idempotency-Keys", deleted)


#: The ingest process's purger.
PURGER: Final = Purger()


def _reused(key: str) -> Problem:
    return Problem(
        422,
        "Idempotency-Key reused",
        f"Idempotency-Key {key!r} was already used with a different request body; a key "
        "stands for one request: send a new key for a new request, or the same body to get "
        "the first response again",
        kind="idempotency-key-reused",
    )


def _in_use(key: str) -> Problem:
    return Problem(
        409,
        "Idempotency-Key in use",
        f"a request with Idempotency-Key {key!r} is still in progress; retry in "
        f"{IN_USE_RETRY_AFTER_S} s to get its response",
        kind="idempotency-key-in-use",
        headers={"Retry-After": str(IN_USE_RETRY_AFTER_S)},
    )
