"""``herald dev up|down|status``: the embedded local stack."""

from __future__ import annotations

import json

import typer

from herald.devstack import stack
from herald.devstack.process import StackError
from herald.settings import get_settings

app = typer.Typer(
    help="Run the local stack (Apache Kafka, PostgreSQL, SMTP sink, SMS stand-in) under .local/."
    " Parts whose address is set in the environment are left to that address.",
    no_args_is_help=True,
)


@app.command()
def up() -> None:
    """Start every part that is not running and wait until each answers (idempotent)."""
    try:
        stack.up()
    except StackError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


@app.command()
def down() -> None:
    """Stop every part this stack started; leaves external services alone."""
    try:
        stack.down()
    except StackError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Print every address and whether it answers; exit 1 if any part is down."""
    settings = get_settings()
    parts = [s.as_dict() for s in stack.status(settings)]
    apis = {
        "ingest_api": f"http://127.0.0.1:{settings.local.ingest_port}",
        "read_api": f"http://127.0.0.1:{settings.local.read_api_port}",
    }
    if as_json:
        typer.echo(json.dumps({"components": parts, "apis": apis}, indent=2))
    else:
        for part in parts:
            mark = "up  " if part["answering"] else "DOWN"
            where = "local" if part["managed"] else "external"
            typer.echo(
                f"{mark} {part['name']:<9} {part['address']:<48} {where:<8} {part['detail']}"
            )
        for name, url in apis.items():
            typer.echo(f"     {name:<9} {url}")
    if not all(part["answering"] for part in parts):
        raise typer.Exit(1)
