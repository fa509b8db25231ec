"""The second topology for the end-to-end tests: the live state on a Redis Cluster (three masters,
each with a replica) and history reads on a PostgreSQL streaming replica. The test modules here
import the location, geo and ride modules' tests, which then run against this mesh."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.auth.keys import DevKeys
from services.ops.mesh.supervisor import Mesh
from tests.e2e.conftest import mesh_with_its_own_database


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Mesh]:
    with mesh_with_its_own_database(
        tmp_path_factory,
        keys,
        "cluster-mesh",
        replicas={"location": 2, "ride": 2, "geo": 2},
        redis_cluster=True,
        postgres_replica=True,
    ) as running:
        assert running.redis_cluster is not None
        assert running.postgres_replica is not None
        yield running


@pytest.fixture(scope="session")
def envoy_address(mesh: Mesh) -> str:
    """Redeclared here: a session fixture keeps the first mesh it was given, so the parent
    directory's would hand these tests the other topology's Envoy (or the reverse)."""
    assert mesh.envoy is not None
    return mesh.envoy.address
