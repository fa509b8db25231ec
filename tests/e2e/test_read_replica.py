"""A mesh whose history reads go to a PostgreSQL streaming replica (`MeshSettings.postgres_replica`,
RIDEMESH_DATABASE_READ_URL): fixes persisted on the primary come back from GetDriverTrack, and a
zone created on the primary appears in ListGeofences, both read from the replica."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from services.auth.keys import DevKeys
from services.history.migrate import run_migrations
from services.ops.mesh.supervisor import Mesh, MeshSettings, start_mesh
from tests.e2e.clients import DriverStream, fix, new_driver_id
from tests.e2e.conftest import MESH_ENV
from tests.tokens import Metadata, ops_channel

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

T = TypeVar("T")
SQUARE = (
    '{"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], '
    "[13.0, 52.1], [13.0, 52.0]]]}"
)


@pytest.fixture(scope="module")
def replica_mesh(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Mesh]:
    run_dir = Path(tmp_path_factory.mktemp("replica-mesh"))
    run_dir.chmod(0o755)  # PostgreSQL runs as postgres when the tests run as root

    def migrate(mesh: Mesh) -> None:
        assert mesh.database_url is not None
        run_migrations(mesh.database_url)

    settings = MeshSettings(
        run_dir=run_dir,
        keys_dir=keys.directory,
        replicas={"location": 1, "ride": 1, "geo": 1},
        postgres_replica=True,
        env=MESH_ENV,
    )
    with start_mesh(settings, before_services=migrate) as mesh:
        yield mesh


async def eventually(call: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """Calls until `done` holds for the answer: the replica replays the primary's writes a
    moment later."""
    async with asyncio.timeout(15):
        while True:
            answer = await call()
            if done(answer):
                return answer
            await asyncio.sleep(0.05)


async def test_history_and_zones_are_read_from_the_replica(
    replica_mesh: Mesh, keys: DevKeys, as_driver: Callable[[str], Metadata]
) -> None:
    assert replica_mesh.database_read_url is not None
    assert replica_mesh.database_read_url != replica_mesh.database_url
    assert replica_mesh.envoy is not None
    async with ops_channel(keys, replica_mesh.envoy.address) as channel:
        location = location_grpc.LocationServiceStub(channel)
        geo = geo_grpc.GeoQueryServiceStub(channel)
        driver_id = new_driver_id("replica")
        driver = DriverStream(location, as_driver(driver_id))
        for seq in range(1, 6):
            driver.send(fix(driver_id, seq, 52.05, 13.01 + seq * 0.01))
        await driver.wait_for(lambda: driver.durable_seq == 5)
        driver.close()
        await driver.reader

        request = pb.GetDriverTrackRequest(driver_id=driver_id)
        request.start_time.FromDatetime(datetime.fromtimestamp(time.time() - 600, tz=UTC))
        request.end_time.FromDatetime(datetime.fromtimestamp(time.time() + 600, tz=UTC))
        track = await eventually(lambda: geo.GetDriverTrack(request), lambda t: len(t.points) == 5)
        assert [p.seq for p in track.points] == [1, 2, 3, 4, 5]

        created = await geo.CreateGeofence(
            pb.CreateGeofenceRequest(
                geofence=pb.Geofence(display_name="Replica square", geojson=SQUARE)
            )
        )
        zone_id = created.geofence.geofence_id
        listed = await eventually(
            lambda: geo.ListGeofences(pb.ListGeofencesRequest()),
            lambda r: any(g.geofence_id == zone_id for g in r.geofences),
        )
        assert [g.display_name for g in listed.geofences if g.geofence_id == zone_id] == [
            "Replica square"
        ]
