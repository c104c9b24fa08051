"""``herald digest run --now``: send the weekly summary now (the router sends it on its
crontab, ``ROUTER_DIGEST_CRON``)."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from herald import digest
from herald.settings import get_settings

app = typer.Typer(
    help="The weekly summary of unread notifications (digest.weekly).", no_args_is_help=True
)


@app.command()
def run(
    now: bool = typer.Option(
        False, "--now", help="Run now (required: the schedule belongs to the router)."
    ),
    user: list[str] = typer.Option([], "--user", help="Only this user id; repeatable."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the digests, publish nothing."),
) -> None:
    """Publish one digest.weekly event per user with unread notifications this past week.

    Harmless to repeat: a user's digest has one event id per ISO week."""
    if not now:
        typer.echo("the router sends digests on ROUTER_DIGEST_CRON; pass --now to send them now")
        raise typer.Exit(2)
    settings = get_settings()
    moment = datetime.now(UTC)
    users = user or None
    if dry_run:
        digests = digest.unread_since(settings, moment, users)
    else:
        try:
            digests = digest.run_digest(settings, moment, users)
        except RuntimeError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
    for item in digests:
        typer.echo(f"{item.user_id}: {item.count} unread")
    verb = "would publish" if dry_run else "published"
    typer.echo(f"{verb} {len(digests)} digests for {digest.iso_week(moment)}")
