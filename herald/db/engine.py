"""Engines and sessions for Herald's PostgreSQL database (SQLAlchemy 2 on psycopg 3).

The schema is chosen per connection: every connection is opened with the libpq startup option
``-c search_path=<schema>`` taken from ``DatabaseSettings.database_schema``. Models name no
schema, so ORM queries, Core statements, raw ``text()`` SQL and psycopg ``COPY`` all resolve
unqualified table names in that schema — production uses ``public`` (the default), each test
its own uuid-named schema. A startup option (rather than a ``SET`` on connect) is in force
before the first statement and survives ``RESET``/``DISCARD ALL`` from pool resets.

Every connection also plans each statement for its own parameters
(``plan_cache_mode=force_custom_plan``, see :data:`CUSTOM_PLANS`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from herald.settings import DatabaseSettings


def quote_identifier(name: str) -> str:
    """``name`` as a PostgreSQL quoted identifier (safe for any schema name)."""
    return '"' + name.replace('"', '""') + '"'


def search_path_options(schema: str) -> str:
    """The libpq ``options`` value that sets ``search_path`` to ``schema`` at connect time.

    Use it for connections opened without SQLAlchemy:
    ``psycopg.connect(settings.libpq_url, options=search_path_options(schema))``.
    """
    # libpq splits ``options`` on whitespace; a backslash escapes a space or a backslash.
    value = quote_identifier(schema).replace("\\", "\\\\").replace(" ", "\\ ")
    return f"-c search_path={value}"


#: psycopg prepares a statement after its fifth use, and PostgreSQL then keeps a generic plan
#: when it looks no costlier than the custom ones so far. Made while a table was nearly empty
#: (a new deployment, a fresh schema), that plan scans the whole table, and nothing replaces
#: it until the next ANALYZE of the table: in the fan-out bench the send journal's lookup
#: took 43 ms a call at 100,000 deliveries, and PostgreSQL spent more CPU serving the email
#: sender than the sender itself (issue 10). A plan per statement costs ~0.1 ms and uses the
#: index. (Connections opened with ``psycopg.connect`` pass it themselves when they need it.)
CUSTOM_PLANS = "-c plan_cache_mode=force_custom_plan"


def _connect_args(schema: str, connect_args: dict[str, Any] | None) -> dict[str, Any]:
    args = dict(connect_args or {})
    extra = args.get("options")
    options = f"{search_path_options(schema)} {CUSTOM_PLANS}"
    args["options"] = options + (f" {extra}" if extra else "")
    return args


def make_engine(settings: DatabaseSettings | None = None, **engine_kwargs: Any) -> Engine:
    """A synchronous engine whose connections use ``settings.database_schema``.

    ``settings`` defaults to ``DatabaseSettings()`` (read from the environment). Extra keyword
    arguments go to :func:`sqlalchemy.create_engine` (e.g. ``poolclass``, ``pool_size``, ``echo``);
    a ``connect_args["options"]`` given there is kept after the ``search_path`` and
    :data:`CUSTOM_PLANS` options.
    """
    settings = settings or DatabaseSettings()
    connect_args = _connect_args(settings.database_schema, engine_kwargs.pop("connect_args", None))
    # pool_pre_ping: services outlive database restarts; a dead pooled connection is replaced
    # instead of failing the first request after the restart.
    engine_kwargs.setdefault("pool_pre_ping", True)
    return create_engine(settings.database_url, connect_args=connect_args, **engine_kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine``.

    ``expire_on_commit=False``: objects stay readable after commit (services return them in
    responses after committing), at the cost of not reloading them automatically.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)
