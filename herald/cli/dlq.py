"""``herald dlq list|show|replay|purge``: dead letters, for operators."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer
from confluent_kafka import KafkaException

from herald import dlq
from herald.producer import AckedProducer
from herald.settings import get_settings
from herald.streaming import producer_config
from schemas import CATALOGUE, Catalogue

app = typer.Typer(
    help="Dead-letter topics: what failed and why, replay once the cause is fixed, or purge."
    " Topics default to every DLQ of the catalogue (with KAFKA_TOPIC_PREFIX).",
    no_args_is_help=True,
)

TopicOpt = typer.Option(
    [], "--topic", "-t", help="A DLQ topic (e.g. herald.deliveries.sms.v1.dlq); repeatable."
)
SinceOpt = typer.Option(None, help="Only records at or after: ISO time or age (30m, 2h, 7d).")
UntilOpt = typer.Option(None, help="Only records at or before: ISO time or age.")
ErrorOpt = typer.Option([], "--error-class", help="Only this x-error-class; repeatable.")
TypeOpt = typer.Option([], "--event-type", help="Only this event type code; repeatable.")
DeliveryOpt = typer.Option([], "--delivery-id", help="Only this delivery id; repeatable.")
LimitOpt = typer.Option(None, min=1, help="At most this many records.")


def _catalogue() -> Catalogue:
    return CATALOGUE.with_prefix(get_settings().kafka.topic_prefix)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _letters(topics: list[str]) -> list[dlq.DeadLetter]:
    settings = get_settings()
    try:
        return list(dlq.scan(settings.kafka, dlq.dlq_topics(_catalogue(), topics)))
    except dlq.DlqError as exc:
        raise _fail(str(exc)) from None
    except KafkaException as exc:
        raise _fail(f"Kafka at {settings.kafka.bootstrap_servers}: {exc}") from None


def _filter(
    since: str | None,
    until: str | None,
    error_class: list[str],
    event_type: list[str],
    delivery_id: list[str],
    limit: int | None,
) -> dlq.Filter:
    try:
        return dlq.Filter(
            since=dlq.parse_time(since) if since else None,
            until=dlq.parse_time(until) if until else None,
            error_classes=set(error_class),
            event_types=set(event_type),
            delivery_ids=set(delivery_id),
            limit=limit,
        )
    except dlq.DlqError as exc:
        raise _fail(str(exc)) from None


@app.command("list")
def list_(
    topic: list[str] = TopicOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Count dead letters by topic, error class and event type, with their ages."""
    rows = dlq.summarize(_letters(topic))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no dead letters")
        return
    typer.echo(f"{'count':>6}  {'oldest':>8}  {'newest':>8}  topic / error class / event type")
    for row in rows:
        typer.echo(
            f"{row['count']:>6}  {_age(row['oldest_age_s']):>8}  {_age(row['newest_age_s']):>8}"
            f"  {row['topic']}  {row['error_class']}  {row['event_type']}"
        )


@app.command()
def show(
    topic: list[str] = TopicOpt,
    since: str | None = SinceOpt,
    until: str | None = UntilOpt,
    error_class: list[str] = ErrorOpt,
    event_type: list[str] = TypeOpt,
    delivery_id: list[str] = DeliveryOpt,
    limit: int | None = typer.Option(20, min=1, help="At most this many records."),
) -> None:
    """Print matching dead letters: where they are, every header, the decoded record."""
    criteria = _filter(since, until, error_class, event_type, delivery_id, limit)
    for letter in dlq.select(_letters(topic), criteria):
        when = datetime.fromtimestamp(letter.timestamp, UTC).isoformat()
        typer.echo(f"== {letter.where}  {when}")
        for name, value in sorted(letter.headers.items()):
            typer.echo(f"   {name}: {value}")
        body: Any = letter.record if letter.record is not None else letter.decode_error
        typer.echo("   record: " + json.dumps(body, default=str, indent=2).replace("\n", "\n   "))


@app.command()
def replay(
    topic: list[str] = TopicOpt,
    since: str | None = SinceOpt,
    until: str | None = UntilOpt,
    error_class: list[str] = ErrorOpt,
    event_type: list[str] = TypeOpt,
    delivery_id: list[str] = DeliveryOpt,
    limit: int | None = LimitOpt,
    max_replays: int = typer.Option(
        dlq.DEFAULT_MAX_REPLAYS, min=1, help="Refuse records already replayed this often."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be replayed."),
    purge_replayed: bool = typer.Option(
        False,
        "--purge",
        help="Then delete the dead letters whose replay Kafka acknowledged (never the others).",
    ),
    timeout: float = typer.Option(
        30.0, min=1, help="Seconds Kafka has to acknowledge each replayed record."
    ),
) -> None:
    """Re-publish matching dead letters to the first retry tier of their source topic.

    Headers are kept; x-replay-count goes up by one and x-attempt starts again at 1.
    A delivery that was meanwhile sent is not sent again (senders check their journal).

    A letter counts as replayed only when Kafka acknowledged its copy. Copies it refused (or
    did not acknowledge within --timeout) are listed with the broker's reason, the command
    exits 1, and those dead letters stay where they are: fix the cause and run it again.
    With --purge, exactly the acknowledged letters are deleted afterwards (as far as Kafka can
    delete: a partition's records only up to the first one that must stay).

    Error class sender.outcome_unknown: a sender died while sending that email, so it may
    have arrived; a replay sends it again. Check with the recipient first.

    Example: herald dlq replay --error-class sms.5xx --since 2h --dry-run
    """
    criteria = _filter(since, until, error_class, event_type, delivery_id, limit)
    letters = _letters(topic)
    chosen = dlq.select(letters, criteria)
    settings = get_settings()
    producer = None
    if not dry_run:
        config = producer_config(settings.kafka, **{"message.timeout.ms": int(timeout * 1000)})
        producer = AckedProducer(config)
    with typer.progressbar(length=len(chosen), label="replaying", file=None) as bar:
        report = dlq.replay(
            _catalogue(),
            chosen,
            None if producer is None else producer.deliver,
            max_replays=max_replays,
            progress=bar.update,
        )
    if producer is not None:
        producer.close(5)
    verb = "would replay" if dry_run else "replayed"
    summary = f"{report.matched} matched, {verb} {report.replayed}, refused {len(report.refused)}"
    if report.failed:
        summary += f", NOT acknowledged by Kafka {len(report.failed)}"
    typer.echo(summary)
    for target, count in sorted(report.targets.items()):
        typer.echo(f"  {count} → {target}")
    for reason in report.refused:
        typer.echo(f"  refused: {reason}")
    for reason in report.failed[:50]:
        typer.echo(f"  not replayed: {reason}")
    if purge_replayed and not dry_run and report.acknowledged:
        plan, kept = dlq.purge_plan(letters, report.acknowledged)
        dlq.purge(settings.kafka, plan)
        typer.echo(
            f"deleted {len(report.acknowledged) - len(kept)} replayed dead letters;"
            f" {len(kept)} stay (a letter that was not replayed precedes them)"
        )
    if report.failed:
        typer.secho(
            f"error: Kafka did not acknowledge {len(report.failed)} replayed records; their dead"
            " letters are still on the DLQ. Do not purge them: fix the cause, then replay again.",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)


@app.command()
def purge(
    topic: list[str] = TopicOpt,
    since: str | None = SinceOpt,
    until: str | None = UntilOpt,
    error_class: list[str] = ErrorOpt,
    event_type: list[str] = TypeOpt,
    delivery_id: list[str] = DeliveryOpt,
    limit: int | None = LimitOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be deleted."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete matching dead letters for good.

    Kafka deletes only the oldest records of a partition, so a matching record that sits
    after a non-matching one is kept (and listed); nothing the filter did not select is lost.
    """
    letters = _letters(topic)
    chosen = dlq.select(letters, _filter(since, until, error_class, event_type, delivery_id, limit))
    plan, kept = dlq.purge_plan(letters, chosen)
    deleting = len(chosen) - len(kept)
    typer.echo(f"{len(chosen)} matched; {deleting} can be deleted, {len(kept)} must stay")
    for where in kept[:20]:
        typer.echo(f"  stays (an unmatched record precedes it): {where}")
    if dry_run or not plan:
        return
    if not yes:
        typer.confirm(f"Delete {deleting} dead letters for good?", abort=True)
    dlq.purge(get_settings().kafka, plan)
    typer.echo(f"deleted {deleting}")


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
