"""Integration fixtures for the history store: a fresh, migrated PostGIS database per module."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from services.migrate import run_migrations


async def _admin(postgres_server: Any, sql: str) -> None:
    # CREATE/DROP DATABASE cannot run in the target database itself, so go through `postgres`.
    admin_dsn = make_url(postgres_server.dsn).set(database="postgres").render_as_string(False)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def database_url(postgres_server: Any) -> Iterator[str]:
    """postgresql+asyncpg URL of a new database with every migration applied, dropped afterwards."""
    name = f"ridemesh_test_{secrets.token_hex(6)}"
    # Sync fixture with its own short-lived loops: independent of the tests' loop scope, and
    # alembic's env.py runs asyncio.run itself.
    asyncio.run(_admin(postgres_server, f"CREATE DATABASE {name}"))
    url = make_url(postgres_server.url).set(database=name).render_as_string(False)
    run_migrations(url)
    yield url
    asyncio.run(_admin(postgres_server, f"DROP DATABASE {name} WITH (FORCE)"))
