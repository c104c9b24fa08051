"""``herald publish``: put one domain event on ``herald.events.v1``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import typer

from herald.producer import AckedProducer
from herald.serde import encode
from herald.settings import get_settings
from herald.streaming import Outgoing, producer_config
from schemas import CATALOGUE


def publish(
    event_type: str = typer.Argument(..., help="Event type code, e.g. comment.created."),
    to: list[str] = typer.Option(..., "--to", help="A recipient user id; repeatable."),
    context: list[str] = typer.Option([], "--context", "-c", help="key=value; repeatable."),
    actor: str | None = typer.Option(None, help="The acting user (not notified)."),
    event_id: str | None = typer.Option(None, help="Event id (default: a new uuid4)."),
    timeout: float = typer.Option(15.0, min=1, help="Seconds Kafka has to acknowledge it."),
) -> None:
    """Publish one event, as an application would; prints its id once Kafka acknowledged it
    (exit 1 with the broker's reason when it did not)."""
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
    producer = AckedProducer(
        producer_config(settings.kafka, **{"message.timeout.ms": int(timeout * 1000)})
    )
    refused = producer.deliver([Outgoing(topic, event_id, encode("herald.Event", event))])
    producer.close(5)
    if refused:
        typer.secho(
            f"error: Kafka at {settings.kafka.bootstrap_servers} did not acknowledge event"
            f" {event_id} for {topic}: {refused[0].error} ({refused[0].error_class})",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"published {event_id} to {topic}")
