"""The mesh's real servers: Redis, PostgreSQL + PostGIS and Envoy start, answer and stop by PID."""

from __future__ import annotations

import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.ops.mesh.envoy_proxy import EnvoyProxy, validate_config
from services.ops.mesh.postgres_server import PostgresServer
from services.ops.mesh.process import ManagedProcess
from services.ops.mesh.redis_server import RedisServer, redis_ping
from services.ops.mesh.supervisor import Mesh
from tests.waiting import alive

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (PostgreSQL backends, for example)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_redis_answers_ping(redis_server: RedisServer) -> None:
    assert redis_ping(redis_server.port)
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


async def test_postgis_in_a_scratch_database(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("scratch_postgis")
    conn = await asyncpg.connect(postgres_server.dsn_for("scratch_postgis"))
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        version = await conn.fetchval("SELECT postgis_full_version()")
    finally:
        await conn.close()
    assert "POSTGIS=" in version


async def test_ridemesh_database_exists(postgres_server: PostgresServer) -> None:
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == "ridemesh"
    finally:
        await conn.close()


def test_envoy_config_validates_and_envoy_becomes_ready(tmp_path: Path) -> None:
    envoy = EnvoyProxy(tmp_path, {"location": [1, 2], "ride": [3], "geo": [4]})
    validate_config(envoy.write_config())
    with envoy:
        response = httpx.get(f"{envoy.admin_url}/ready", trust_env=False)
        assert response.status_code == 200
        pid = envoy.process.pid
    assert not alive(pid)


def test_redis_stops_by_pid(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        pid = server.process.pid
        assert alive(pid)
    assert not alive(pid)
    assert not redis_ping(server.port)


def test_postgres_stops_with_its_backends_and_restarts_on_the_same_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with PostgresServer(data, fsync=False) as server:
        postmaster = server.process.pid
        server.psql("CREATE TABLE kept (id int)", database="ridemesh")
        backends = _children(postmaster)
        assert backends
    assert not alive(postmaster)
    assert not any(alive(pid) for pid in backends)
    with PostgresServer(data, fsync=False) as again:
        assert again.psql("SELECT count(*) FROM kept", database="ridemesh") == "0"


def test_mesh_stops_parts_in_reverse_order(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with Mesh(tmp_path) as mesh:
        first = mesh.start(ManagedProcess("first", argv, tmp_path / "first.log"))
        second = mesh.start(ManagedProcess("second", argv, tmp_path / "second.log"))
        pids = [first.pid, second.pid]
        assert mesh.parts == [first, second]
    assert mesh.parts == []
    assert not any(alive(pid) for pid in pids)


def test_process_that_exits_early_fails_readiness(tmp_path: Path) -> None:
    process = ManagedProcess(
        "doomed", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "l"
    )
    with process, pytest.raises(RuntimeError, match="exited with 3"):
        process.wait_ready(lambda: False, timeout=10)
