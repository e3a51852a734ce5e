"""Alembic environment, after Alembic's async template.

The database URL comes from the caller, first match wins: ``config.attributes["url"]`` (set by
``migrations.runner``), ``alembic -x url=...``, else ``hitl.settings.get_settings().database_url``.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url

from store.engine import create_engine
from store.tables import Base

config = context.config

# Only the `alembic` command line brings an ini file; the runner leaves logging to its host.
# Keeping existing loggers alive stops Alembic from silencing the application's own loggers.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return url
    # Imported late: settings refuse to load without HITL_* variables the other paths never need.
    from hitl.settings import get_settings

    return get_settings().database_url


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def run_migrations_offline() -> None:
    """Emit the migration SQL for ``alembic ... --sql`` without connecting."""
    url = _database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=_is_sqlite(url),
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """Run the migrations on one synchronous connection."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead. A future
        # batch migration on hitl_approvals or audit_log must recreate their SEC-080 triggers,
        # because SQLite drops a table's triggers with the table.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Connect with the gateway's own engine factory, so SQLite gets the same pragmas."""
    connectable = create_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with connectable.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await connectable.dispose()


def run_migrations_online() -> None:
    """Run the migrations against a live database."""
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
