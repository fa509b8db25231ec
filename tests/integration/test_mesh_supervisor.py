"""start_mesh end to end with stand-in replicas: health-checked through Envoy, stopped by PID."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from services.ops.mesh import supervisor
from services.ops.mesh.supervisor import Mesh, MeshSettings, grpc_serving, start_mesh
from tests.waiting import alive

pytestmark = pytest.mark.integration

# A replica stand-in that serves only grpc.health.v1, so this test does not depend on the CLI.
HEALTH_ONLY = """
import sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(4))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
server.wait_for_termination()
"""


def _health_only(service: str, port: int, redis_url: str, database_url: str) -> list[str]:
    return [sys.executable, "-c", HEALTH_ONLY, str(port)]


def test_service_argv_names_the_cli_and_its_settings() -> None:
    argv = supervisor.service_argv("ride", 50061, "redis://r", "postgresql+asyncpg://p")
    assert argv[1:] == [
        "-m", "services.ops.cli", "serve", "ride", "--port", "50061",
        "--redis-url", "redis://r", "--database-url", "postgresql+asyncpg://p",
    ]  # fmt: skip


def test_mesh_routes_health_checks_to_replicas_and_stops_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "service_argv", _health_only)
    migrated: list[str] = []

    def migrate(mesh: Mesh) -> None:
        assert mesh.postgres is not None
        migrated.append(mesh.postgres.url)

    settings = MeshSettings(tmp_path, replicas={"location": 2, "ride": 1, "geo": 1})
    with start_mesh(settings, before_services=migrate) as mesh:
        assert mesh.envoy is not None
        assert len(migrated) == 1
        assert [len(ports) for ports in mesh.services.values()] == [2, 1, 1]
        assert grpc_serving(mesh.envoy.port, timeout=5)
        pids = [pid for part in mesh.parts for pid in part.pids]
    assert len(pids) == 7
    assert not any(alive(pid) for pid in pids)
