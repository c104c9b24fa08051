"""The in-app store process: Kafka batches in, one PostgreSQL transaction per batch.

:class:`InappStore` is the thin adapter around the pure parts: ``herald.streaming.BatchLoop``
consumes a batch, :func:`~services.inapp_store.batch.plan_batch` turns it into rows,
:func:`~services.inapp_store.store.write_rows` writes them in one transaction, and only then
does the loop produce the batch's records (``delivered`` statuses, dead letters) and commit its
offsets. A crash anywhere before that commit replays the batch; every write is idempotent.

Database failures are told apart by their SQLSTATE (:func:`is_data_error`):

- A lost connection (PostgreSQL restarting, a failover, a terminated backend, too many
  connections, a deadlock) is transient: the batch is tried again with exponential backoff
  for as long as it takes. The batch stays uncommitted and its partitions stall; the service
  never exits for it. Past ``INAPP_STORE_DB_RETRY_SECONDS`` it reports itself degraded
  (``herald_service_degraded{reason="database"}``, ``/readyz`` 503) until a write succeeds. If
  the wait outlasts the consumer's ``max.poll.interval.ms`` the group takes the partitions
  away; the batch's commit is then refused and its records come again (idempotent upserts).
- A data error (classes 22 data exception, 23 integrity violation, 54 program limit, e.g. a
  ``user_id`` too long for a btree index row) is a property of a record, not of the database:
  the batch is written again one record per transaction, the records PostgreSQL refuses go to
  their topic's DLQ with the reason (``db.<condition>``) and the rest are stored.
- Anything else (a schema that was never migrated, a bug) propagates: the loop stops without
  committing and the process exits non-zero for its supervisor to restart it.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg.errors
from confluent_kafka import Message
from prometheus_client import Counter, Histogram

from herald.db import search_path_options
from herald.logs import configure
from herald.metrics import DELIVERIES, ERRORS, HEALTH, serve_metrics
from herald.observability import (
    DELIVERY_LATENCY,
    KafkaMetrics,
    dlq_topics_of,
    observe_published,
)
from herald.settings import DatabaseSettings, Settings, get_settings
from herald.streaming import BatchLoop, Outgoing
from schemas import CATALOGUE, Catalogue
from services.inapp_store.batch import INAPP, BatchPlan, _refuse, plan_batch
from services.inapp_store.settings import SERVICE, InappStoreSettings
from services.inapp_store.store import BatchRows, InvalidRecord, TableCounts, write_rows

log = logging.getLogger("services.inapp_store")

ROWS_WRITTEN = Counter(
    "herald_inapp_store_rows_written_total", "Rows inserted or updated, by table", ["table"]
)
ROWS_UNCHANGED = Counter(
    "herald_inapp_store_rows_unchanged_total",
    "Rows of a batch that changed nothing (duplicates, statuses outranked by the stored one)",
    ["table"],
)
TRANSACTION_SECONDS = Histogram(
    "herald_inapp_store_transaction_seconds",
    "Time to write and commit one batch's rows",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DB_RETRIES = Counter(
    "herald_inapp_store_db_retries_total",
    "Batch transactions retried after the database connection was lost",
)

#: First and longest pause between attempts to write a batch after a lost connection.
RETRY_INITIAL_SECONDS = 0.2
RETRY_MAX_SECONDS = 10.0


#: SQLSTATE classes that describe the data, not the connection: retrying cannot help.
DATA_ERROR_CLASSES = ("22", "23", "54")


class DatabaseUnavailableError(RuntimeError):
    """The service was stopped while it waited for the database to come back."""


def is_data_error(exc: psycopg.Error) -> bool:
    """Whether PostgreSQL refused the data itself (see :data:`DATA_ERROR_CLASSES`).

    psycopg maps class 54 (program limit exceeded, e.g. an index row too large) to
    ``OperationalError``, the same class as a lost connection; only the SQLSTATE tells them
    apart. A connection failure on the client side has no SQLSTATE.
    """
    return bool(exc.sqlstate) and str(exc.sqlstate)[:2] in DATA_ERROR_CLASSES


class TooManyInvalidRecordsError(RuntimeError):
    """The input is nothing but invalid records: a broken producer or schema, not bad luck."""


def application_name(database: DatabaseSettings) -> str:
    """How this service's connections appear in ``pg_stat_activity`` (schema included, so an
    operator, or a test, can tell instances writing different schemas apart)."""
    return f"herald-{SERVICE}:{database.database_schema}"[:63]  # PostgreSQL's NAMEDATALEN


class Database:
    """One psycopg connection, opened on first use and reopened after it is lost."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self._conn: psycopg.Connection[Any] | None = None

    def connection(self) -> psycopg.Connection[Any]:
        """The open connection (autocommit: transactions are explicit blocks)."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.settings.libpq_url,
                options=search_path_options(self.settings.database_schema),
                application_name=application_name(self.settings),
                autocommit=True,
                connect_timeout=10,
            )
        return self._conn

    def close(self) -> None:
        """Close the connection (harmless if it is already closed or broken)."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def _snake(name: str) -> str:
    """``ProgramLimitExceeded`` → ``program_limit_exceeded``."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


class InappStore:
    """The service: a batch loop over the three topics, writing each batch to PostgreSQL."""

    def __init__(
        self,
        settings: Settings,
        config: InappStoreSettings,
        catalogue: Catalogue | None = None,
    ) -> None:
        self.config = config
        self.catalogue = catalogue or CATALOGUE.with_prefix(settings.kafka.topic_prefix)
        self.db = Database(settings.database)
        self.invalid_streak = 0
        DELIVERY_LATENCY.labels(INAPP, "delivered")  # graphed from the start, not the first one
        DELIVERIES.labels(INAPP, "delivered")  # 0 from the start: the first increase is a rate
        self.loop = BatchLoop(
            service=SERVICE,
            kafka=settings.kafka,
            topics=[
                self.catalogue.notifications.name,
                self.catalogue.for_channel(INAPP).name,
                self.catalogue.delivery_status.name,
            ],
            handler=self.handle,
            # Groups are isolated by the topic prefix like the topics themselves.
            group_id=settings.kafka.topic_prefix + SERVICE,
            batch_size=config.batch_size,
            poll_timeout=config.poll_timeout_ms / 1000,
        )

    def handle(self, messages: list[Message]) -> list[Outgoing]:
        """The batch handler: plan, write and commit the rows, return what to produce."""
        plan = plan_batch(
            messages, self.catalogue, now=datetime.now(UTC), invalid_streak=self.invalid_streak
        )
        self._report_invalid(plan)
        limit = self.config.max_consecutive_invalid
        if limit and plan.longest_invalid_run >= limit:
            raise TooManyInvalidRecordsError(
                f"{plan.longest_invalid_run} invalid records in a row (limit {limit}); "
                "stopping without committing: fix the producer or the schema, then restart"
            )
        if plan.rows:
            try:
                self.write(plan.rows)
            except psycopg.Error as exc:
                if not is_data_error(exc):
                    raise
                log.warning(
                    "PostgreSQL refused the batch's data; writing it one record at a time",
                    extra={"error": str(exc).strip()[:300], "sqlstate": exc.sqlstate},
                )
                return self._handle_one_by_one(messages)
        self.invalid_streak = plan.invalid_streak
        if plan.delivered:
            DELIVERIES.labels(INAPP, "delivered").inc(plan.delivered)
            observe_published(INAPP, "delivered", plan.published)
        return plan.outgoing

    def _handle_one_by_one(self, messages: list[Message]) -> list[Outgoing]:
        """Write each record in its own transaction; a record whose rows PostgreSQL refuses
        as data goes to its topic's DLQ (or is reported and skipped where there is none)."""
        outgoing: list[Outgoing] = []
        for message in messages:
            plan = plan_batch(
                [message], self.catalogue, now=datetime.now(UTC), invalid_streak=self.invalid_streak
            )
            if plan.rows:
                try:
                    self.write(plan.rows)
                except psycopg.Error as exc:
                    if not is_data_error(exc):
                        raise
                    name = type(exc).__name__
                    error = InvalidRecord(
                        f"PostgreSQL refused the record ({exc.sqlstate} {name}): "
                        f"{str(exc).strip()[:500]}",
                        error_class=f"db.{_snake(name)}",
                    )
                    plan = BatchPlan(invalid_streak=self.invalid_streak + 1)
                    _refuse(plan, message, error, self.catalogue)
            self._report_invalid(plan)
            self.invalid_streak = plan.invalid_streak
            if plan.delivered:
                DELIVERIES.labels(INAPP, "delivered").inc(plan.delivered)
                observe_published(INAPP, "delivered", plan.published)
            outgoing.extend(plan.outgoing)
        return outgoing

    def write(self, rows: BatchRows) -> dict[str, TableCounts]:
        """Write ``rows`` in one transaction, retrying a lost connection with backoff for as
        long as it takes (data errors propagate at once: see the module docstring)."""
        degraded_after = time.monotonic() + self.config.db_retry_seconds
        delay = RETRY_INITIAL_SECONDS
        while True:
            started = time.perf_counter()
            try:
                conn = self.db.connection()
                with conn.transaction():
                    counts = write_rows(conn, rows)
            except psycopg.OperationalError as exc:
                if is_data_error(exc):
                    raise
                # Connection-level trouble (and deadlocks/serialization failures, which psycopg
                # also classes as operational): the transaction did not commit, or may have,
                # which is fine too since every write is idempotent. Try the batch again.
                self.db.close()
                if self.loop.stop_event.is_set():
                    raise DatabaseUnavailableError(f"stopped; batch not written: {exc}") from exc
                if time.monotonic() >= degraded_after:
                    HEALTH.degraded(SERVICE, "database", str(exc).strip()[:300])
                DB_RETRIES.inc()
                log.warning(
                    "database unavailable, retrying the batch",
                    extra={"error": str(exc).strip(), "retry_in_s": delay},
                )
                # Waiting on the stop event lets SIGTERM end the wait at once.
                self.loop.stop_event.wait(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            TRANSACTION_SECONDS.observe(time.perf_counter() - started)
            if delay > RETRY_INITIAL_SECONDS:
                HEALTH.recovered(SERVICE, "database")
            for table, (submitted, written) in counts.items():
                ROWS_WRITTEN.labels(table).inc(written)
                ROWS_UNCHANGED.labels(table).inc(submitted - written)
            return counts

    def _report_invalid(self, plan: BatchPlan) -> None:
        for invalid in plan.invalid:
            ERRORS.labels(SERVICE, invalid.error.error_class).inc()
            log.warning(
                "invalid record " + ("sent to the DLQ" if invalid.sent_to else "skipped"),
                extra={
                    "topic": invalid.topic,
                    "partition": invalid.partition,
                    "offset": invalid.offset,
                    "error_class": invalid.error.error_class,
                    "error": invalid.error.message[:500],
                    "dlq": invalid.sent_to,
                },
            )

    def run(self) -> None:
        """Consume until stopped (SIGTERM/SIGINT finish the batch, commit and return)."""
        self.loop.install_signal_handlers()
        try:
            self.loop.run()
        finally:
            self.db.close()


def main() -> None:
    """Entry point of ``python -m services.inapp_store``."""
    config = InappStoreSettings()
    configure(config.log_level)
    settings = get_settings()
    store = InappStore(settings, config)
    serve_metrics(config.metrics_port)
    # herald_consumer_lag and herald_dlq_depth of this service's group and DLQs, when served.
    KafkaMetrics.start_for(
        settings.kafka,
        group=settings.kafka.topic_prefix + SERVICE,
        topics=store.loop.topics,
        dlq_topics=dlq_topics_of(store.catalogue, store.loop.topics),
        enabled=config.metrics_port != 0,
    )
    log.info(
        "inapp_store starting",
        extra={
            "topics": store.loop.topics,
            "group": settings.kafka.topic_prefix + SERVICE,
            "schema": settings.database.database_schema,
            "batch_size": config.batch_size,
            "metrics_port": config.metrics_port,
        },
    )
    try:
        store.run()
    except DatabaseUnavailableError:
        log.info("inapp_store stopped while waiting for the database; the batch is not committed")
        return
    except Exception:
        # Offsets of the failed batch were not committed: a restart replays it.
        log.exception("inapp_store stopped on an error; the last batch is not committed")
        sys.exit(1)
    log.info("inapp_store stopped")
