"""``herald run``: the main job on the local stack (what ``make run`` calls).

Brings everything up, plays the demo scenarios once (printing who got what on which channel),
then serves until Ctrl-C, and stops exactly what it started. A service that exits meanwhile is
started again after a pause (1 s doubling to 30 s, reset once it stayed up a minute), and the
exit and restart are logged, as systemd or Kubernetes would do in production.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import typer

from herald import demo as scenarios
from herald.db import migrate
from herald.devstack import stack
from herald.devstack.components import local_failover_env
from herald.devstack.process import StackError
from herald.netguard import ALLOW_PRIVATE_ENV
from herald.settings import Settings, get_settings
from herald.supervisor import (
    SERVICES,
    ServiceProcess,
    Supervisor,
    answers,
    stop_all,
    wait_until_answers,
)
from herald.topics import create_topics

#: The demo user the web inbox's demo page shows (created at start-up, with an email address
#: and a phone number at the local sinks, like the demo scenarios' users).
DEMO_PAGE_USER = "ada-demo"
DEMO_PAGE_PHONE = "+15550100001"

#: How long services get to answer after start (the first start compiles nothing, but
#: Kafka group joins and table recovery take a few seconds).
READY_TIMEOUT_S = 120.0


@dataclass
class Started:
    """What this command started, so that it stops exactly that."""

    stack_parts: list[str] = field(default_factory=list)
    services: list[ServiceProcess] = field(default_factory=list)
    #: Restarts the services that exit (its ``services`` list is :attr:`services`).
    supervisor: Supervisor | None = None


def _urls(settings: Settings) -> dict[str, str]:
    return {
        "ingest": f"http://127.0.0.1:{settings.local.ingest_port}",
        "read API": f"http://127.0.0.1:{settings.local.read_api_port}",
    }


def demo_page_url(settings: Settings, user: str = DEMO_PAGE_USER) -> str:
    """The demo page of the web inbox (``/ui/demo``) for ``user``."""
    return f"http://127.0.0.1:{settings.local.read_api_port}/ui/demo?user={quote(user, safe='')}"


def prepare_demo_page(settings: Settings) -> str | None:
    """Seed the default event types and create (PUT, idempotent) the demo page's user; the
    page's URL, or None (with the reason printed) if the ingest API refused."""
    system = scenarios.System.connect(settings, timeout=30.0)
    try:
        system.seed()
        response = system.api.put(
            f"/v1/users/{DEMO_PAGE_USER}",
            json={
                "email": f"{DEMO_PAGE_USER}@example.test",
                "phone": DEMO_PAGE_PHONE,
                "display_name": "Ada",
            },
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        typer.secho(f"web inbox demo: could not create its user: {exc}", fg="red", err=True)
        return None
    finally:
        system.close()
    return demo_page_url(settings)


def bring_up(
    settings: Settings,
    started: Started,
    *,
    only_missing: bool = False,
    services: bool = True,
    stop: threading.Event | None = None,
) -> None:
    """Start the stack, create topics, migrate, start the services and wait until the APIs
    answer. With ``only_missing``, services are started only if the ingest API does not
    answer already. Raises ``typer.Exit(1)`` on failure (what was started is in ``started``).
    """
    try:
        started.stack_parts = stack.up(settings)
    except StackError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    results = create_topics(settings.kafka)
    created = sum(r.outcome == "created" for r in results)
    typer.echo(f"topics: {created} created, {len(results)} in the catalogue")
    migrate.upgrade(settings.database)
    typer.echo(f"database: migrated to {migrate.current(settings.database)}")
    urls = _urls(settings)
    if not services or (only_missing and answers(f"{urls['ingest']}/readyz")):
        return
    log_dir = settings.local.local_dir / "services"
    started.supervisor = Supervisor(
        log_dir, say=lambda line: typer.secho(line, fg="yellow", err=True)
    )
    started.services = started.supervisor.services
    # The senders fail over to the local stack's second SMTP sink and SMS stand-in.
    failover = local_failover_env(settings)
    # Users' endpoints may be on loopback (the local webhook sink); nothing else of local mode
    # (HERALD_ENV=local) is implied, and HERALD_ENV=production still refuses them.
    env = {**failover, ALLOW_PRIVATE_ENV: os.environ.get(ALLOW_PRIVATE_ENV) or "1"}
    for module in SERVICES:
        started.supervisor.start(module, env)
    typer.echo(f"services: {', '.join(s.name for s in started.services)} (logs in {log_dir})")
    for name, url in urls.items():
        halted = stop.is_set if stop is not None else (lambda: False)
        if not wait_until_answers(f"{url}/readyz", READY_TIMEOUT_S, halted):
            if halted():
                return
            typer.secho(f"error: the {name} at {url} did not get ready", fg="red", err=True)
            raise typer.Exit(1)


def shut_down(settings: Settings, started: Started) -> None:
    """Stop the services, then the stack parts, that :func:`bring_up` started."""
    if started.services:
        typer.echo("stopping services...")
        stop_all(started.services)
        started.services.clear()
    if started.stack_parts:
        stack.down(settings, only=started.stack_parts)
        started.stack_parts = []


def _play_demo(settings: Settings, outcome: list[bool]) -> None:
    system = scenarios.System.connect(settings, timeout=90.0)
    try:
        results = scenarios.play(system, say=typer.echo)
    finally:
        system.close()
    outcome.append(all(r.passed for r in results))


def run(
    services: bool = typer.Option(True, help="Start Herald's services (off: only the stack)."),
    demo: bool = typer.Option(True, help="Play the demo scenarios once after start-up."),
) -> None:
    """Bring up the stack, create topics, migrate the database, start every service, play the
    demo scenarios once, and serve until Ctrl-C. Stops, on the way out, exactly what it
    started."""
    settings = get_settings()
    started = Started()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        bring_up(settings, started, services=services, stop=stop)
        if services and demo and not stop.is_set():
            typer.echo("playing the demo scenarios (who got what on which channel):")
            outcome: list[bool] = []
            # In a thread, so that Ctrl-C stops everything at once instead of after the demo.
            player = threading.Thread(target=_play_demo, args=(settings, outcome), daemon=True)
            player.start()
            while player.is_alive() and not stop.wait(0.5):
                pass
            if outcome == [True]:
                typer.secho("demo: every scenario passed", fg=typer.colors.GREEN)
            elif not stop.is_set():
                typer.secho("demo: some scenarios failed (see above)", fg="red", err=True)
        for part in stack.status(settings):
            typer.echo(f"  {part.name:<9} {part.address:<40} {part.detail}")
        for name, url in _urls(settings).items():
            typer.echo(f"  {name:<9} {url}/docs")
        page = prepare_demo_page(settings) if services and not stop.is_set() else None
        if page is not None:
            typer.secho(
                f"Web inbox demo (open it in a browser): {page}", fg=typer.colors.GREEN, bold=True
            )
        if not stop.is_set():
            typer.echo("Herald is serving. Press Ctrl-C to stop.")
        while not stop.wait(1.0):
            if started.supervisor is not None:
                started.supervisor.check()
    finally:
        typer.echo("stopping...")
        shut_down(settings, started)
