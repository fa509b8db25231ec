"""Shared fixtures: real Redis and PostgreSQL + PostGIS on free loopback ports, stopped by PID."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from services.auth.identity import Role
from services.auth.keys import DevKeys
from services.history.migrate import run_migrations
from services.ops.mesh.postgres_server import PostgresServer
from services.ops.mesh.redis_server import RedisServer
from tests.tokens import Metadata, bearer, make_keys
from tests.tokens import token as mint


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway Redis (no persistence) for the whole session."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster (fsync off) with an empty `ridemesh` database; PostGIS is
    installed but the extension is left for migrations to create."""
    with PostgresServer(tmp_path_factory.mktemp("postgres") / "data", fsync=False) as server:
        yield server


async def _admin(postgres_server: PostgresServer, sql: str) -> None:
    # CREATE/DROP DATABASE cannot run in the target database itself, so go through `postgres`.
    conn = await asyncpg.connect(postgres_server.dsn_for("postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def make_database(postgres_server: PostgresServer) -> Iterator[Callable[[], str]]:
    """Creates fresh databases with every migration applied; all are dropped at the end."""
    names: list[str] = []

    def create() -> str:
        name = f"ridemesh_test_{secrets.token_hex(6)}"
        # Own short-lived loops: independent of the tests' loop, and alembic runs asyncio.run.
        asyncio.run(_admin(postgres_server, f"CREATE DATABASE {name}"))
        names.append(name)
        url = make_url(postgres_server.url).set(database=name).render_as_string(False)
        run_migrations(url)
        return url

    yield create
    for name in names:
        asyncio.run(_admin(postgres_server, f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> DevKeys:
    """The session's development key pair: every service under test verifies tokens with it."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def token(keys: DevKeys) -> Callable[..., str]:
    """token(sub, role, ttl_s=3600) -> a bearer token signed with the session's keys."""

    def make(sub: str, role: Role | str, ttl_s: int = 3600) -> str:
        return mint(keys, sub, role, ttl_s)

    return make


@pytest.fixture(scope="session")
def as_driver(token: Callable[..., str]) -> Callable[[str], Metadata]:
    """as_driver(driver_id) -> call metadata acting as that driver."""
    return lambda driver_id: bearer(token(driver_id, Role.DRIVER))


@pytest.fixture(scope="session")
def as_rider(token: Callable[..., str]) -> Callable[[str], Metadata]:
    """as_rider(rider_id) -> call metadata acting as that rider."""
    return lambda rider_id: bearer(token(rider_id, Role.RIDER))
