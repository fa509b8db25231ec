"""Alembic environment: runs migrations over the async (asyncpg) engine, one replica at a time."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

# Replicas often start together; a cluster-wide lock makes the second wait for the first's commit
# and then find the schema already at head, instead of both running the same DDL.
_MIGRATION_LOCK_KEY = 0x52_4D_4D_49  # "RMMI"


def _database_url() -> str:
    url = context.config.attributes.get("database_url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database URL: set config.attributes['database_url']")
    return str(url)


def _run_sync(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        context.run_migrations()


async def _run_async() -> None:
    # NullPool: a migration run is one connection, and nothing should outlive it.
    engine = create_async_engine(_database_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run against a database")
asyncio.run(_run_async())
