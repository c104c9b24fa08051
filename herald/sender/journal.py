"""The send journal: what a sender claimed and what its provider accepted, in PostgreSQL.

A sender claims a delivery before its provider is called and confirms it as soon as the
provider accepted it; a sender killed in between leaves the claim, and whoever consumes the
record again knows the outcome is unknown rather than sending blindly a second time. A
concurrent sender claims the deliveries it is about to send in one statement
(:meth:`PostgresJournal.claim_many`) and confirms those that completed together in one
(:meth:`PostgresJournal.confirm_many`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from herald.metrics import HEALTH, Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Delivery states after which a delivery must never be sent again.
DONE_STATUSES = ("sent", "delivered")

# The statements of a batch, in the driver's own form (``%(name)s``): run several times a
# second, they skip SQLAlchemy's ``text()`` parsing and compilation (a fifth of the email
# sender's Python time in the fan-out bench, issue 10).
STATES_SQL = (
    "SELECT id::text, 'recorded', provider_message_id, NULL::text"
    " FROM notification_delivery WHERE id = ANY(%(ids)s) AND status = ANY(%(done)s)"
    " UNION ALL SELECT delivery_id::text, state, provider_message_id,"
    " claim_token::text FROM send_journal WHERE delivery_id = ANY(%(ids)s)"
)
HOLDERS_SQL = (
    "SELECT delivery_id::text, claim_token FROM send_journal WHERE delivery_id = ANY(%(ids)s)"
)
CLAIM_MANY_SQL = (
    "INSERT INTO send_journal (delivery_id, channel, state, attempt, claim_token)"
    " SELECT c.id, %(channel)s, 'sending', c.attempt, c.token FROM unnest("
    "CAST(%(ids)s AS uuid[]), CAST(%(attempts)s AS integer[]), CAST(%(tokens)s AS uuid[])"
    ") AS c(id, attempt, token)"
    " ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id::text"
)
CONFIRM_MANY_SQL = (
    "UPDATE send_journal AS j SET state = 'sent', provider_message_id = c.provider,"
    " updated_at = now()"
    " FROM unnest(CAST(%(ids)s AS uuid[]), CAST(%(providers)s AS text[])) AS c(id, provider)"
    " WHERE j.delivery_id = c.id"
)
RELEASE_MANY_SQL = (
    "DELETE FROM send_journal AS j"
    " USING unnest(CAST(%(ids)s AS uuid[]), CAST(%(tokens)s AS uuid[])) AS c(id, token)"
    " WHERE j.delivery_id = c.id AND j.state = 'sending' AND j.claim_token = c.token"
)

JOURNAL_RETRIES = Counter(
    "herald_sender_journal_retries_total",
    "Send-journal statements tried again after the database connection was lost",
    ["service"],
)


class SendJournal(Protocol):
    """Where a sender records, durably and before anything else happens, what it sends.

    ``claim`` before the provider is called, ``confirm`` as soon as it accepted: a sender
    killed in between leaves the claim, and whoever consumes the record again knows the
    outcome is unknown rather than sending blindly a second time.
    """

    def states(self, delivery_ids: Collection[str]) -> dict[str, JournalEntry]:
        """The journal's entries for those of ``delivery_ids`` it knows (one query)."""
        ...

    def claim(
        self, delivery_id: str, channel: str, attempt: int, seen: JournalEntry | None = None
    ) -> bool:
        """Claim the delivery; False when someone else holds (or just took) the claim.

        ``seen`` is the entry :meth:`states` returned: with None the claim is taken only if
        there is none; with an unconfirmed (``sending``) entry, only if it is still that one.
        Two senders handling copies of one delivery therefore never both win.
        """
        ...

    def confirm(self, delivery_id: str, provider_message_id: str) -> None: ...

    def release(self, delivery_id: str) -> None:
        """Drop a claim whose send failed with a known outcome (nothing was sent)."""
        ...

    def claim_many(self, claims: Sequence[Claim], channel: str) -> set[str]:
        """:meth:`claim` for several deliveries (distinct ids); the ids whose claim was won."""
        ...

    def confirm_many(self, confirmed: Sequence[tuple[str, str]]) -> None:
        """:meth:`confirm` for several ``(delivery_id, provider_message_id)``."""
        ...

    def release_many(self, delivery_ids: Sequence[str]) -> None:
        """:meth:`release` for several deliveries."""
        ...


@dataclass(frozen=True)
class Claim:
    """A delivery a sender is about to send, with the journal entry it read (``seen``)."""

    delivery_id: str
    attempt: int
    seen: JournalEntry | None = None

    @property
    def takes_over(self) -> bool:
        """True when this claim replaces an unconfirmed one (its sender died mid-send)."""
        return self.seen is not None and self.seen.state == "sending"


@dataclass(frozen=True)
class JournalEntry:
    """``state``: ``sending`` (claimed, outcome unknown), ``sent`` (the provider accepted it)
    or ``recorded`` (its sent/delivered status is already in ``notification_delivery``)."""

    state: str
    provider_message_id: str | None = None
    #: The token of the claim (``sending``), compared when a sender takes the claim over.
    claim_token: str | None = None


class JournalStopped(RuntimeError):
    """The sender was stopped while the journal waited for its database."""


class PostgresJournal:
    """:class:`SendJournal` in PostgreSQL (``send_journal``), one autocommit statement per
    claim or confirmation, or per group of them (``claim_many``, ``confirm_many``,
    ``release_many``). Used from one thread only (the sender's batch thread).

    ``synchronous_commit`` is off for these statements: a sender killed at any point loses
    nothing (the server has the row), and only a crash of PostgreSQL itself within its
    ~0.6 s WAL-writer window could forget a claim. That trade keeps a send at two cheap round
    trips instead of two disk flushes.

    A lost connection (PostgreSQL restarting, a failover, ``AdminShutdown``) is never fatal:
    the statement is tried again on a new connection after a growing pause (``backoff``), for
    as long as it takes, with ``herald_service_degraded{reason="database"}`` set meanwhile;
    only ``stop`` (the loop's stop event) ends the wait, with :class:`JournalStopped` (the
    batch is then not committed). Claims are compare-and-set on a token per claim, so a claim
    whose answer was lost with the connection is recognised as ours when tried again.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        service: str = "sender",
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.engine = engine
        self.service = service
        self.backoff = backoff or Backoff(0.2, 10.0)
        self.stop = stop or threading.Event()
        self._connection: Connection | None = None
        #: The token of each claim this sender holds and has not confirmed or released.
        self._claims: dict[str, uuid.UUID] = {}

    def _conn(self) -> Connection:
        if self._connection is None or self._connection.closed:
            connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(text("SET synchronous_commit TO off"))
            self._connection = connection
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(DBAPIError):
                self._connection.close()
            self._connection = None

    def _retrying(self, work: Callable[[Connection], T], what: str) -> T:
        """Run ``work`` on the connection; on a lost connection, reconnect and run it again."""
        while True:
            try:
                result = work(self._conn())
            except DBAPIError as exc:
                if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
                    raise
                if self._connection is not None:
                    with contextlib.suppress(DBAPIError):
                        self._connection.invalidate()
                self.close()
                delay = self.backoff.next()
                detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                HEALTH.degraded(self.service, "database", detail)
                JOURNAL_RETRIES.labels(self.service).inc()
                log.warning(
                    "send journal: database unavailable; trying again",
                    extra={"statement": what, "error": detail, "retry_in_s": delay},
                )
                if self.stop.wait(delay):
                    raise JournalStopped(f"stopped while the database was away ({what})") from exc
                continue
            if self.backoff.current:
                self.backoff.reset()
                HEALTH.recovered(self.service, "database")
            return result

    def states(self, delivery_ids: Collection[str]) -> dict[str, JournalEntry]:
        if not delivery_ids:
            return {}
        ids = [uuid.UUID(delivery_id) for delivery_id in delivery_ids]
        rows = self._retrying(
            lambda conn: conn.exec_driver_sql(
                STATES_SQL, {"ids": ids, "done": list(DONE_STATUSES)}
            ).all(),
            "states",
        )
        found: dict[str, JournalEntry] = {}
        for delivery_id, state, provider_id, token in rows:
            if found.get(delivery_id, JournalEntry("")).state != "recorded":
                found[delivery_id] = JournalEntry(state, provider_id, token)
        return found

    def claim(
        self, delivery_id: str, channel: str, attempt: int, seen: JournalEntry | None = None
    ) -> bool:
        key = uuid.UUID(delivery_id)
        token = uuid.uuid4()
        params: dict[str, Any] = {"id": key, "channel": channel, "attempt": attempt, "token": token}
        if seen is None or seen.state != "sending":
            # Nobody had claimed it: take it only if that is still so.
            statement = text(
                "INSERT INTO send_journal (delivery_id, channel, state, attempt, claim_token)"
                " VALUES (:id, :channel, 'sending', :attempt, :token)"
                " ON CONFLICT (delivery_id) DO NOTHING RETURNING claim_token"
            )
        else:
            # Taking over an unconfirmed claim: only if it is still the one that was read.
            statement = text(
                "UPDATE send_journal SET attempt = :attempt, claim_token = :token,"
                " updated_at = now() WHERE delivery_id = :id AND state = 'sending'"
                " AND claim_token IS NOT DISTINCT FROM CAST(:seen AS uuid)"
                " RETURNING claim_token"
            )
            params["seen"] = seen.claim_token
        tried = [False]

        def take(conn: Connection) -> bool:
            if tried[0]:
                # The last try lost its connection: it may have gone through.
                holder = conn.execute(
                    text("SELECT claim_token FROM send_journal WHERE delivery_id = :id"),
                    {"id": key},
                ).scalar()
                if holder == token:
                    return True
            tried[0] = True
            return conn.execute(statement, params).first() is not None

        won = self._retrying(take, "claim")
        if won:
            self._claims[delivery_id] = token
        return won

    def confirm(self, delivery_id: str, provider_message_id: str) -> None:
        # A fact whoever holds the claim: the provider accepted it.
        self._claims.pop(delivery_id, None)
        self._retrying(
            lambda conn: conn.execute(
                text(
                    "UPDATE send_journal SET state = 'sent', provider_message_id = :provider,"
                    " updated_at = now() WHERE delivery_id = :id"
                ),
                {"id": uuid.UUID(delivery_id), "provider": provider_message_id},
            ),
            "confirm",
        )

    def release(self, delivery_id: str) -> None:
        token = self._claims.pop(delivery_id, None)
        if token is None:
            return  # not our claim: never release someone else's
        self._retrying(
            lambda conn: conn.execute(
                text(
                    "DELETE FROM send_journal WHERE delivery_id = :id AND state = 'sending'"
                    " AND claim_token = :token"
                ),
                {"id": uuid.UUID(delivery_id), "token": token},
            ),
            "release",
        )

    def claim_many(self, claims: Sequence[Claim], channel: str) -> set[str]:
        # Taking over a dead sender's claim is rare: one compare-and-set statement each.
        won = {c.delivery_id for c in claims if c.takes_over and self.claim(
            c.delivery_id, channel, c.attempt, c.seen)}  # fmt: skip
        fresh = [c for c in claims if not c.takes_over]
        if not fresh:
            return won
        tokens = {c.delivery_id: uuid.uuid4() for c in fresh}
        by_key = {str(uuid.UUID(c.delivery_id)): c.delivery_id for c in fresh}
        params: dict[str, Any] = {
            "ids": [uuid.UUID(c.delivery_id) for c in fresh],
            "attempts": [c.attempt for c in fresh],
            "tokens": [tokens[c.delivery_id] for c in fresh],
            "channel": channel,
        }
        tried = [False]

        def take(conn: Connection) -> set[str]:
            ours: set[str] = set()
            if tried[0]:
                # The last try lost its connection: some claims may have gone through.
                for key, holder in conn.exec_driver_sql(HOLDERS_SQL, {"ids": params["ids"]}):
                    if holder == tokens[by_key[key]]:
                        ours.add(by_key[key])
            tried[0] = True
            rows = conn.exec_driver_sql(CLAIM_MANY_SQL, params)
            return ours | {by_key[key] for (key,) in rows}

        taken = self._retrying(take, "claim_many")
        for delivery_id in taken:
            self._claims[delivery_id] = tokens[delivery_id]
        return won | taken

    def confirm_many(self, confirmed: Sequence[tuple[str, str]]) -> None:
        if not confirmed:
            return
        for delivery_id, _ in confirmed:
            self._claims.pop(delivery_id, None)
        params = {
            "ids": [uuid.UUID(delivery_id) for delivery_id, _ in confirmed],
            "providers": [provider for _, provider in confirmed],
        }
        self._retrying(
            lambda conn: conn.exec_driver_sql(CONFIRM_MANY_SQL, params),
            "confirm_many",
        )

    def release_many(self, delivery_ids: Sequence[str]) -> None:
        ours = [(d, self._claims.pop(d)) for d in delivery_ids if d in self._claims]
        if not ours:
            return  # never release someone else's claim
        params = {
            "ids": [uuid.UUID(delivery_id) for delivery_id, _ in ours],
            "tokens": [token for _, token in ours],
        }
        self._retrying(
            lambda conn: conn.exec_driver_sql(RELEASE_MANY_SQL, params),
            "release_many",
        )
