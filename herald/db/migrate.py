"""Run Herald's Alembic migrations from Python (``make run``, the CLI, tests).

The Alembic files ship inside the package (``herald/db/alembic.ini``, ``herald/db/migrations``)
and are found from this module's location, so these functions work from any working directory
and from an installed wheel. The target is ``settings.database_url`` and
``settings.database_schema`` (the schema is created if missing and holds its own
``alembic_version``).

One migration at a time per process: Alembic's ``context`` is module-global. Separate
processes may migrate the same schema concurrently; ``env.py`` serialises them with an
advisory lock.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, pool

from herald.db.engine import make_engine
from herald.settings import DatabaseSettings

_PACKAGE_DIR = Path(__file__).resolve().parent
ALEMBIC_INI = _PACKAGE_DIR / "alembic.ini"
MIGRATIONS_DIR = _PACKAGE_DIR / "migrations"


def alembic_config(
    settings: DatabaseSettings | None = None,
    *,
    connection: Connection | None = None,
    configure_logging: bool = False,
) -> Config:
    """An Alembic ``Config`` for Herald's migrations, aimed at ``settings``.

    ``connection``: migrate on this open connection instead of opening one (if it is inside a
    transaction, the caller commits). ``configure_logging``: let ``env.py`` apply the logging
    sections of ``alembic.ini`` (off by default: a service configures its own logging).
    """
    config = Config(str(ALEMBIC_INI))
    # Absolute, so the current directory never matters; '%' is escaped for ConfigParser.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if settings is not None:
        # Otherwise env.py reads DatabaseSettings from the environment.
        config.attributes["settings"] = settings
    config.attributes["configure_logging"] = configure_logging
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(
    settings: DatabaseSettings | None = None,
    revision: str = "head",
    *,
    connection: Connection | None = None,
) -> None:
    """Migrate the schema in ``settings`` up to ``revision`` (default: the latest)."""
    command.upgrade(alembic_config(settings, connection=connection), revision)


def downgrade(
    settings: DatabaseSettings | None = None,
    revision: str = "base",
    *,
    connection: Connection | None = None,
) -> None:
    """Migrate the schema in ``settings`` down to ``revision`` (default: no Herald tables).

    The schema itself and its (then empty) ``alembic_version`` table stay.
    """
    command.downgrade(alembic_config(settings, connection=connection), revision)


def head() -> str:
    """The newest revision id in the package's migrations."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"expected one migration head, found {heads}")
    return heads[0]


def current(settings: DatabaseSettings | None = None) -> str | None:
    """The revision the schema in ``settings`` is at; ``None`` if it was never migrated
    (including when the schema does not exist)."""
    settings = settings or DatabaseSettings()
    engine = make_engine(settings, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table_schema": settings.database_schema}
            )
            return context.get_current_revision()
    finally:
        engine.dispose()


def is_current(settings: DatabaseSettings | None = None) -> bool:
    """Whether the schema in ``settings`` is at the newest revision (for readiness checks)."""
    return current(settings) == head()
