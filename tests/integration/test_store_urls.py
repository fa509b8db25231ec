"""The URL forms operators paste reach the real PostgreSQL: `ridemesh migrate` and `maintain`
with postgres:// and postgresql:// (libpq's sslmode included), as the commands a user types."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from services.ops.mesh.postgres_server import PostgresServer

pytestmark = pytest.mark.integration
RIDEMESH = str(Path(sys.executable).parent / "ridemesh")


async def _admin(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def _ridemesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RIDEMESH, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def empty_database(postgres_server: PostgresServer) -> str:
    name = f"ridemesh_urls_{secrets.token_hex(4)}"
    asyncio.run(_admin(postgres_server.dsn_for("postgres"), f"CREATE DATABASE {name}"))
    return name


def test_migrate_and_maintain_take_the_urls_psql_takes(
    postgres_server: PostgresServer, empty_database: str, tmp_path: Path
) -> None:
    plain = postgres_server.dsn_for(empty_database)  # postgresql://postgres@127.0.0.1:PORT/db
    assert plain.startswith("postgresql://")
    short = plain.replace("postgresql://", "postgres://", 1)

    migrated = _ridemesh("migrate", "--database-url", short)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema is up to date" in migrated.stdout
    table = asyncio.run(_admin(plain, "SELECT to_regclass('public.driver_locations')::text"))
    assert table == "driver_locations"

    maintained = _ridemesh(
        "maintain", "--database-url", f"{plain}?sslmode=disable", "--archive-dir", str(tmp_path)
    )
    assert maintained.returncode == 0, maintained.stderr
    partitions = asyncio.run(
        _admin(
            plain, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'driver_locations'::regclass"
        )
    )
    assert isinstance(partitions, int)
    assert partitions >= 1


def test_an_unusable_scheme_stops_the_command_in_one_line(empty_database: str) -> None:
    result = _ridemesh("migrate", "--database-url", f"mysql://root@127.0.0.1/{empty_database}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "ridemesh: setting RIDEMESH_DATABASE_URL (--database-url) must be a postgresql://, "
        "postgres:// or postgresql+asyncpg:// URL, got a mysql:// URL"
    ]
