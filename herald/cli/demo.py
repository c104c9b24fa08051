"""``herald demo``: play the scenarios on a running Herald and print who got what where.

``herald demo --up`` (what ``make demo`` runs) first brings up whatever is not running (the
local stack, then the services if the ingest API does not answer) and stops it afterwards.
"""

from __future__ import annotations

import typer

from herald import demo as scenarios
from herald.cli.run import Started, bring_up, shut_down
from herald.settings import get_settings


def demo(
    up: bool = typer.Option(
        False, "--up", help="Start what is not running (stack, services); stop it afterwards."
    ),
    timeout: float = typer.Option(90.0, help="Seconds to wait for each outcome."),
) -> None:
    """Play every scenario; exit 1 if any outcome is wrong."""
    settings = get_settings()
    started = Started()
    try:
        if up:
            bring_up(settings, started, only_missing=True)
        system = scenarios.System.connect(settings, timeout=timeout)
        try:
            results = scenarios.play(system, say=typer.echo)
        finally:
            system.close()
    finally:
        shut_down(settings, started)
    failed = [r.name for r in results if not r.passed]
    if failed:
        typer.secho(f"FAILED: {', '.join(failed)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.secho(f"all {len(results)} scenarios passed", fg=typer.colors.GREEN)
