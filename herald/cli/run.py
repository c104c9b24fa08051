"""``herald run``: the main job on the local stack (what ``make run`` calls)."""

from __future__ import annotations

import signal
import threading

import typer

from herald.db import migrate
from herald.devstack import stack
from herald.devstack.process import StackError
from herald.settings import get_settings
from herald.topics import create_topics


def run() -> None:
    """Bring up the stack, create topics, migrate the database, then serve until Ctrl-C.

    Stops, on the way out, exactly what it started.
    """
    settings = get_settings()
    try:
        started = stack.up(settings)
    except StackError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    try:
        results = create_topics(settings.kafka)
        typer.echo(f"topics: {sum(r.outcome == 'created' for r in results)} created,"
                   f" {len(results)} in the catalogue")  # fmt: skip
        migrate.upgrade(settings.database)
        typer.echo(f"database: migrated to {migrate.current(settings.database)}")
        for part in stack.status(settings):
            typer.echo(f"  {part.name:<9} {part.address:<40} {part.detail}")
        typer.echo("Herald's local stack is serving. Press Ctrl-C to stop.")
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
    finally:
        typer.echo("stopping...")
        stack.down(settings, only=started)
