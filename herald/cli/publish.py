"""``herald publish``: put one domain event on ``herald.events.v1``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import typer
from confluent_kafka import Producer

from herald.serde import encode
from herald.settings import get_settings
from herald.streaming import producer_config
from schemas import CATALOGUE


def publish(
    event_type: str = typer.Argument(..., help="Event type code, e.g. comment.created."),
    to: list[str] = typer.Option(..., "--to", help="A recipient user id; repeatable."),
    context: list[str] = typer.Option([], "--context", "-c", help="key=value; repeatable."),
    actor: str | None = typer.Option(None, help="The acting user (not notified)."),
    event_id: str | None = typer.Option(None, help="Event id (default: a new uuid4)."),
) -> None:
    """Publish one event, as an application would; prints its id."""
    values = {}
    for item in context:
        key, sep, value = item.partition("=")
        if not sep or not key:
            typer.secho(f"error: --context takes key=value, not {item!r}", fg="red", err=True)
            raise typer.Exit(2)
        values[key] = value
    settings = get_settings()
    event_id = event_id or str(uuid.uuid4())
    event = {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": datetime.now(UTC),
        "producer": "herald-cli",
        "actor_id": actor,
        "recipients": to,
        "context": values,
        "metadata": {},
    }
    topic = CATALOGUE.with_prefix(settings.kafka.topic_prefix).events.name
    producer = Producer(producer_config(settings.kafka))
    producer.produce(topic, key=event_id, value=encode("herald.Event", event))
    if producer.flush(15):
        typer.secho(
            f"error: Kafka at {settings.kafka.bootstrap_servers} did not acknowledge",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"published {event_id} to {topic}")
