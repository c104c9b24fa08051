"""Entry point of the ``herald`` command."""

from __future__ import annotations

import typer

from herald.cli import db, dev, digest, dlq, retention, topics
from herald.cli.demo import demo
from herald.cli.publish import publish
from herald.cli.run import run
from herald.cli.status import status

app = typer.Typer(
    help="Herald: event-driven notifications on Kafka and PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev.app, name="dev")
app.add_typer(topics.app, name="topics")
app.add_typer(db.app, name="db")
app.add_typer(dlq.app, name="dlq")
app.add_typer(digest.app, name="digest")
app.add_typer(retention.app, name="retention")
app.command(name="run")(run)
app.command(name="publish")(publish)
app.command(name="demo")(demo)
app.command(name="status")(status)

if __name__ == "__main__":
    app()
