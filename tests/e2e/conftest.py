"""The whole mesh for end-to-end tests: real Redis, PostGIS, two LocationService replicas, Envoy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1 import ride_service_pb2_grpc as ride_grpc
from services.auth.keys import DevKeys
from services.history.migrate import run_migrations
from services.history.store import HistoryStore, create_engine
from services.ops.mesh.redis_server import RedisServer
from services.ops.mesh.supervisor import Mesh, MeshSettings, start_mesh
from tests.tokens import ops_channel

# Short intervals so tests do not wait on production-sized batches; a generous per-driver rate
# so tests that send quickly are not throttled (the throttle has its own test).
MESH_ENV = {
    "RIDEMESH_PERSIST_MAX_AGE_S": "0.2",
    "RIDEMESH_ACK_INTERVAL_S": "0.2",
    "RIDEMESH_FIX_RATE_PER_S": "50",
    "RIDEMESH_FIX_BURST": "50",
    # Tests move drivers by jumping between places in a fraction of a second; the speed-jump
    # filter has its own test (tests/integration/test_fix_quality.py), every other filter is on.
    "RIDEMESH_FIX_MAX_SPEED_MPS": "0",
    # Long enough that a test answering an offer is never beaten by the lapse on a loaded
    # machine, short enough that the lapse test does not wait long.
    "RIDEMESH_OFFER_TIMEOUT_S": "5",
    "RIDEMESH_DISPATCH_SWEEP_S": "0.2",
}


@pytest.fixture(scope="session")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    make_database: Callable[[], str],
    keys: DevKeys,
) -> Iterator[Mesh]:
    settings = MeshSettings(
        run_dir=Path(tmp_path_factory.mktemp("mesh")),
        keys_dir=keys.directory,
        replicas={"location": 2, "ride": 2, "geo": 2},
        redis_url=redis_server.url,
        database_url=make_database(),
        env=MESH_ENV,
        web=True,  # the live map's static upstream, for the browser test
    )
    with start_mesh(settings) as running:
        yield running


@contextmanager
def mesh_with_its_own_database(
    tmp_path_factory: pytest.TempPathFactory, keys: DevKeys, name: str, **settings: Any
) -> Iterator[Mesh]:
    """A mesh that starts (and migrates) its own PostgreSQL, as a streaming replica needs, with
    this module's short intervals; `settings` are the rest of its MeshSettings."""
    run_dir = Path(tmp_path_factory.mktemp(name))
    run_dir.chmod(0o755)  # PostgreSQL runs as postgres when the tests run as root

    def migrate(mesh: Mesh) -> None:
        assert mesh.database_url is not None
        run_migrations(mesh.database_url)

    mesh_settings = MeshSettings(run_dir=run_dir, keys_dir=keys.directory, env=MESH_ENV, **settings)
    with start_mesh(mesh_settings, before_services=migrate) as mesh:
        yield mesh


@pytest.fixture(scope="session")
def envoy_address(mesh: Mesh) -> str:
    assert mesh.envoy is not None
    return mesh.envoy.address


@pytest.fixture
async def channel(envoy_address: str, keys: DevKeys) -> AsyncIterator[aio.Channel]:
    """A native gRPC channel through Envoy whose calls carry an ops token (unless they name their
    own caller in metadata)."""
    async with ops_channel(keys, envoy_address) as chan:
        yield chan


@pytest.fixture
def location(channel: aio.Channel) -> location_grpc.LocationServiceAsyncStub:
    return location_grpc.LocationServiceStub(channel)


@pytest.fixture
async def history(mesh: Mesh) -> AsyncIterator[HistoryStore]:
    assert mesh.database_url is not None
    store = HistoryStore(create_engine(mesh.database_url))
    yield store
    await store.dispose()


def status_of(error: BaseException) -> grpc.StatusCode:
    assert isinstance(error, aio.AioRpcError), error
    return error.code()


@pytest.fixture
def rides(channel: aio.Channel) -> ride_grpc.RideServiceAsyncStub:
    return ride_grpc.RideServiceStub(channel)


@pytest.fixture
def geo(channel: aio.Channel) -> geo_grpc.GeoQueryServiceAsyncStub:
    return geo_grpc.GeoQueryServiceStub(channel)
