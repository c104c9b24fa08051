"""Retention: delete what Herald no longer needs, oldest first, in short batches.

Ages come from :class:`RetentionSettings` (environment prefix ``RETENTION_``); a limit of 0
keeps that data for ever. Each rule deletes rows older than its cutoff (``now`` minus its
days, fixed when the run starts), ``batch_size`` rows per transaction, each batch picking its
rows ``FOR UPDATE SKIP LOCKED`` on the age index (migration 0008): no transaction holds more
than one batch's row locks, and rows a service is writing are left for the next run.

=======================  ==========================================  ===========================
rule                     deletes                                     setting (default)
=======================  ==========================================  ===========================
``deliveries``           ``notification_delivery`` rows created      ``notifications_days``
                         before the cutoff                           (180)
``notifications``        ``notification`` rows (the inbox)           ``notifications_days``
                         created before the cutoff                   (180)
``attempts``             ``delivery_attempt`` rows older than the    ``attempts_days`` (30)
                         cutoff whose delivery is final (sent,
                         delivered, skipped, failed, dead) since
                         before the cutoff, or gone
``journal``              ``send_journal`` rows last updated before   ``journal_days`` (30)
                         the cutoff
=======================  ==========================================  ===========================

The router's leader runs it on ``RETENTION_CRON``; ``herald retention run [--dry-run]`` runs
it now. Idempotency keys expire on their own (``INGEST_IDEMPOTENCY_TTL_S``); held deliveries
are deleted when released.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, text

from herald.db import make_engine
from herald.settings import DatabaseSettings, cron_expression
from herald.status import FINAL_STATUSES

log = logging.getLogger(__name__)


class RetentionSettings(BaseSettings):
    """How long Herald keeps what (days; 0: for ever) and how it deletes."""

    model_config = SettingsConfigDict(env_prefix="RETENTION_", extra="ignore")

    #: Notifications (the inbox) and their deliveries, by creation time.
    notifications_days: int = Field(default=180, ge=0)
    #: Delivery attempts, once their delivery's final status is this old.
    attempts_days: int = Field(default=30, ge=0)
    #: The senders' send journal, by last update (a claim is never needed after the retry
    #: tiers, minutes long, are over).
    journal_days: int = Field(default=30, ge=0)
    #: Rows deleted per transaction.
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    #: Pause between batches (gives the table's writers room on a busy database).
    pause_ms: int = Field(default=0, ge=0, le=60_000)
    #: When the router's leader runs it (cron, UTC). Empty: never (``herald retention run``).
    cron: str = "15 3 * * *"

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return cron_expression(value, "RETENTION_CRON")


@dataclass(frozen=True)
class Rule:
    """One kind of row retention deletes: ``condition`` (on ``:cutoff``) picks them."""

    name: str
    table: str
    key: str
    age: str
    condition: str


_FINAL = ", ".join(f"'{status}'" for status in FINAL_STATUSES)

RULES: Final = (
    Rule(
        "deliveries",
        "notification_delivery",
        "id",
        "created_at",
        "created_at < :cutoff",
    ),
    Rule("notifications", "notification", "id", "created_at", "created_at < :cutoff"),
    Rule(
        "attempts",
        "delivery_attempt",
        "id",
        "occurred_at",
        "occurred_at < :cutoff AND NOT EXISTS (SELECT 1 FROM notification_delivery d"
        " WHERE d.id = delivery_attempt.delivery_id"
        f" AND (d.status NOT IN ({_FINAL}) OR d.updated_at >= :cutoff))",
    ),
    Rule("journal", "send_journal", "delivery_id", "updated_at", "updated_at < :cutoff"),
)


def _days(settings: RetentionSettings, rule: Rule) -> int:
    if rule.name in ("deliveries", "notifications"):
        return settings.notifications_days
    return settings.attempts_days if rule.name == "attempts" else settings.journal_days


@dataclass
class Outcome:
    """What one rule did (or, in a dry run, would do)."""

    rule: str
    table: str
    cutoff: datetime | None
    rows: int = 0
    batches: int = 0
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Report:
    """A retention run, rule by rule."""

    now: datetime
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(outcome.rows for outcome in self.outcomes)


def _delete_batch(engine: Engine, rule: Rule, cutoff: datetime, batch: int) -> int:
    sql = text(
        f"DELETE FROM {rule.table} WHERE {rule.key} IN ("
        f"SELECT {rule.key} FROM {rule.table} WHERE {rule.condition}"
        f" ORDER BY {rule.age} LIMIT :n FOR UPDATE SKIP LOCKED)"
    )
    with engine.begin() as connection:
        return int(connection.execute(sql, {"cutoff": cutoff, "n": batch}).rowcount)


def _count(engine: Engine, rule: Rule, cutoff: datetime) -> int:
    sql = text(f"SELECT count(*) FROM {rule.table} WHERE {rule.condition}")
    with engine.connect() as connection:
        return int(connection.execute(sql, {"cutoff": cutoff}).scalar_one())


def apply(
    engine: Engine, settings: RetentionSettings, now: datetime, *, dry_run: bool = False
) -> Report:
    """Apply every rule with cutoffs from ``now`` (a dry run counts instead of deleting)."""
    report = Report(now=now, dry_run=dry_run)
    for rule in RULES:
        days = _days(settings, rule)
        outcome = Outcome(rule.name, rule.table, now - timedelta(days=days) if days else None)
        report.outcomes.append(outcome)
        if outcome.cutoff is None:
            continue
        started = time.perf_counter()
        if dry_run:
            outcome.rows = _count(engine, rule, outcome.cutoff)
        else:
            while True:
                deleted = _delete_batch(engine, rule, outcome.cutoff, settings.batch_size)
                if deleted:
                    outcome.batches += 1
                    outcome.rows += deleted
                if deleted < settings.batch_size:
                    break
                if settings.pause_ms:
                    time.sleep(settings.pause_ms / 1000)
        outcome.seconds = time.perf_counter() - started
        log.info(
            "retention rule applied",
            extra={
                "rule": rule.name,
                "rows": outcome.rows,
                "batches": outcome.batches,
                "seconds": round(outcome.seconds, 3),
                "dry_run": dry_run,
            },
        )
    return report


def run_retention(
    database: DatabaseSettings,
    now: datetime,
    settings: RetentionSettings | None = None,
    *,
    dry_run: bool = False,
) -> Report:
    """:func:`apply` on a short-lived engine for ``database``."""
    engine = make_engine(database, pool_size=1, max_overflow=0)
    try:
        return apply(engine, settings or RetentionSettings(), now, dry_run=dry_run)
    finally:
        engine.dispose()
