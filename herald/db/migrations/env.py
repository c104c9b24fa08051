"""Alembic environment for Herald.

Where the database is comes from ``DatabaseSettings`` (``DATABASE_URL``, ``DATABASE_SCHEMA``),
or from ``config.attributes`` when :mod:`herald.db.migrate` calls Alembic programmatically:

- ``settings``: a ``DatabaseSettings`` to use instead of reading the environment;
- ``connection``: an open SQLAlchemy ``Connection`` to migrate on (if it is already inside a
  transaction, the caller commits);
- ``configure_logging``: ``False`` to leave the process's logging alone.

Tables are created in ``settings.database_schema``: the schema is created if missing, the
migration transaction's ``search_path`` is set to it (the migrations name no schema, like the
models) and ``alembic_version`` lives in it, so every schema carries its own revision.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, pool, text

from herald.db.engine import make_engine, quote_identifier
from herald.db.models import metadata
from herald.settings import DatabaseSettings

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    # Keep loggers that exist already (the alembic CLI has few; a service has many).
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _settings() -> DatabaseSettings:
    settings = config.attributes.get("settings")
    return settings if isinstance(settings, DatabaseSettings) else DatabaseSettings()


def _prepare_schema(connection: Connection, schema: str) -> None:
    """Inside the migration transaction: serialise migrators, create and select the schema."""
    # Several services may migrate at start-up; the lock makes the later ones wait and then
    # find the schema at head instead of racing to create the same tables.
    connection.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
        {"key": f"herald.migrations:{schema}"},
    )
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}"))
    # Engines from herald.db.engine already use the schema; a connection handed in by a
    # caller may not, so pin it for this transaction only (is_local => reverted at its end).
    connection.execute(
        text("SELECT set_config('search_path', :path, true)"), {"path": quote_identifier(schema)}
    )


def run_migrations_offline() -> None:
    """Emit the migration as SQL (``alembic upgrade --sql``) without connecting."""
    settings = _settings()
    schema = settings.database_schema
    context.configure(
        url=settings.database_url,
        target_metadata=metadata,
        version_table_schema=schema,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}")
        context.execute(f"SET LOCAL search_path TO {quote_identifier(schema)}")
        context.run_migrations()


def _run_on(connection: Connection, schema: str) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=schema,
    )
    with context.begin_transaction():
        _prepare_schema(connection, schema)
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate a live database, on the caller's connection or on a fresh one."""
    settings = _settings()
    schema = settings.database_schema
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection, schema)
        return
    # NullPool: a migration is one connection, used once; nothing should stay open after it.
    engine = make_engine(settings, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_on(connection, schema)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
