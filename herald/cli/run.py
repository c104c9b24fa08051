"""``herald run``: the main job on the local stack (what ``make run`` calls)."""

from __future__ import annotations

import signal
import threading

import typer

from herald.db import migrate
from herald.devstack import stack
from herald.devstack.process import StackError
from herald.settings import get_settings
from herald.supervisor import SERVICES, ServiceProcess, start_service, stop_all
from herald.topics import create_topics


def run(
    services: bool = typer.Option(True, help="Start Herald's services (off: only the stack)."),
) -> None:
    """Bring up the stack, create topics, migrate the database, start every service, and
    serve until Ctrl-C. Stops, on the way out, exactly what it started."""
    settings = get_settings()
    try:
        started = stack.up(settings)
    except StackError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    running: list[ServiceProcess] = []
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        results = create_topics(settings.kafka)
        created = sum(r.outcome == "created" for r in results)
        typer.echo(f"topics: {created} created, {len(results)} in the catalogue")
        migrate.upgrade(settings.database)
        typer.echo(f"database: migrated to {migrate.current(settings.database)}")
        log_dir = settings.local.local_dir / "services"
        if services:
            for module in SERVICES:
                running.append(start_service(module, {}, log_dir))
            typer.echo(f"services: {', '.join(s.name for s in running)} (logs in {log_dir})")
        for part in stack.status(settings):
            typer.echo(f"  {part.name:<9} {part.address:<40} {part.detail}")
        typer.echo(f"  ingest    http://127.0.0.1:{settings.local.ingest_port}/docs")
        typer.echo(f"  read API  http://127.0.0.1:{settings.local.read_api_port}/docs")
        typer.echo("Herald is serving. Press Ctrl-C to stop.")
        while not stop.wait(1.0):
            dead = [s for s in running if not s.running()]
            for service in dead:
                typer.secho(
                    f"{service.name} exited with {service.proc.returncode}; see {service.log}",
                    fg=typer.colors.RED,
                    err=True,
                )
                running.remove(service)
    finally:
        typer.echo("stopping...")
        stop_all(running)
        stack.down(settings, only=started)
