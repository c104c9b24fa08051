"""``herald topics create``: the catalogue's topics, retry tiers and dead-letter topics."""

from __future__ import annotations

import typer
from confluent_kafka import KafkaException

from herald.settings import get_settings
from herald.topics import create_topics

app = typer.Typer(
    help="Kafka topics from the catalogue in schemas/topics.toml.", no_args_is_help=True
)


@app.command()
def create(
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be created."),
    prefix: str | None = typer.Option(None, help="Prefix every name (default KAFKA_TOPIC_PREFIX)."),
) -> None:
    """Create every catalogue topic that does not exist yet; existing ones are left alone."""
    settings = get_settings()
    try:
        results = create_topics(settings.kafka, prefix=prefix, dry_run=dry_run)
    except KafkaException as exc:
        typer.secho(
            f"error: Kafka at {settings.kafka.bootstrap_servers}: {exc}",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1) from None
    for result in results:
        typer.echo(f"{result.outcome:<13} {result.name}")
    created = sum(r.outcome == "created" for r in results)
    typer.echo(f"{created} created, {len(results) - created} unchanged")
