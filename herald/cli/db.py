"""``herald db upgrade|downgrade|current``: Alembic migrations of Herald's tables."""

from __future__ import annotations

import typer

from herald.db import migrate

app = typer.Typer(help="Database migrations (Alembic) against DATABASE_URL.", no_args_is_help=True)


@app.command()
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    migrate.upgrade(revision=revision)
    typer.echo(f"database at {migrate.current()}")


@app.command()
def downgrade(
    revision: str = typer.Argument(..., help="Target revision ('base' removes every table)."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Undo migrations down to REVISION."""
    if not yes:
        typer.confirm(
            f"Downgrade the database to {revision}? Data in dropped tables is lost", abort=True
        )
    migrate.downgrade(revision=revision)
    typer.echo(f"database at {migrate.current()}")


@app.command()
def current() -> None:
    """Print the database's current revision."""
    typer.echo(migrate.current() or "empty (no revision)")
