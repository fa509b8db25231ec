"""The second topology for the end-to-end tests: the live state on a Redis Cluster (three masters,
each with a replica) and history reads on a PostgreSQL streaming replica. The test modules here
import the location, geo and ride modules' tests, which then run against this mesh."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.auth.keys import DevKeys
from services.history.migrate import run_migrations
from services.ops.mesh.supervisor import Mesh, MeshSettings, start_mesh
from tests.e2e.conftest import MESH_ENV


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Mesh]:
    run_dir = Path(tmp_path_factory.mktemp("cluster-mesh"))
    run_dir.chmod(0o755)  # PostgreSQL runs as postgres when the tests run as root

    def migrate(mesh: Mesh) -> None:
        assert mesh.database_url is not None
        run_migrations(mesh.database_url)

    settings = MeshSettings(
        run_dir=run_dir,
        keys_dir=keys.directory,
        replicas={"location": 2, "ride": 2, "geo": 2},
        redis_cluster=True,
        postgres_replica=True,
        env=MESH_ENV,
    )
    with start_mesh(settings, before_services=migrate) as running:
        assert running.redis_cluster is not None
        assert running.postgres_replica is not None
        yield running


@pytest.fixture(scope="session")
def envoy_address(mesh: Mesh) -> str:
    """Redeclared here: a session fixture keeps the first mesh it was given, so the parent
    directory's would hand these tests the other topology's Envoy (or the reverse)."""
    assert mesh.envoy is not None
    return mesh.envoy.address
