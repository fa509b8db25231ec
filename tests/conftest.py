"""Shared fixtures: real Redis and PostgreSQL + PostGIS on free loopback ports, stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.mesh.postgres_server import PostgresServer
from services.mesh.redis_server import RedisServer


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
