"""``herald retention run [--dry-run]``: delete what is older than the retention limits now
(the router's leader does it on ``RETENTION_CRON``; see herald.retention)."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from herald.retention import RetentionSettings, run_retention
from herald.settings import get_settings

app = typer.Typer(
    help="Retention: delete notifications, attempts and journal rows past their age.",
    no_args_is_help=True,
)


@app.command()
def run(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; delete nothing."),
) -> None:
    """Apply the retention limits (``RETENTION_*_DAYS``) now, in batches of
    ``RETENTION_BATCH_SIZE`` rows. Harmless to repeat."""
    retention = RetentionSettings()
    report = run_retention(get_settings().database, datetime.now(UTC), retention, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    for outcome in report.outcomes:
        if outcome.cutoff is None:
            typer.echo(f"{outcome.rule}: kept for ever ({outcome.table})")
            continue
        line = f"{outcome.rule}: {verb} {outcome.rows} {outcome.table} rows before"
        line += f" {outcome.cutoff.isoformat(timespec='seconds')}"
        if not dry_run:
            line += f" in {outcome.batches} batches, {outcome.seconds:.2f} s"
        typer.echo(line)
    typer.echo(f"{verb} {report.rows} rows")
