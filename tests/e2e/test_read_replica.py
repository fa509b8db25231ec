"""A mesh whose history reads go to a PostgreSQL streaming replica (`MeshSettings.postgres_replica`,
RIDEMESH_DATABASE_READ_URL). With the replica's replay paused, fixes acked durable, a zone and a
ride written on the primary are missing from GetDriverTrack, ListGeofences and ListRides (so those
read the replica), while acks and GetGeofence (the primary) are current; once replay resumes they
all appear."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import TypeVar

import pytest

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1 import ride_service_pb2 as ride_pb
from ridemesh.v1 import ride_service_pb2_grpc as ride_grpc
from ridemesh.v1.common_pb2 import LatLng
from services.auth.keys import DevKeys
from services.ops.mesh.supervisor import Mesh
from tests.e2e.clients import DriverStream, fix, new_driver_id
from tests.e2e.conftest import mesh_with_its_own_database
from tests.tokens import Metadata, ops_channel

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

T = TypeVar("T")
SQUARE = (
    '{"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], '
    "[13.0, 52.1], [13.0, 52.0]]]}"
)


@pytest.fixture(scope="module")
def replica_mesh(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Mesh]:
    with mesh_with_its_own_database(
        tmp_path_factory,
        keys,
        "replica-mesh",
        replicas={"location": 1, "ride": 1, "geo": 1},
        postgres_replica=True,
    ) as mesh:
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


async def test_history_reads_go_to_the_replica_and_writes_to_the_primary(
    replica_mesh: Mesh,
    keys: DevKeys,
    as_driver: Callable[[str], Metadata],
    as_rider: Callable[[str], Metadata],
) -> None:
    replica = replica_mesh.postgres_replica
    assert replica is not None
    assert replica_mesh.database_read_url == replica.url
    assert replica_mesh.envoy is not None
    async with ops_channel(keys, replica_mesh.envoy.address) as channel:
        location = location_grpc.LocationServiceStub(channel)
        geo = geo_grpc.GeoQueryServiceStub(channel)
        rides = ride_grpc.RideServiceStub(channel)
        await asyncio.to_thread(replica.psql, "SELECT pg_wal_replay_pause()")
        try:
            # Written on the primary while the replica stands still.
            driver_id = new_driver_id("replica")
            driver = DriverStream(location, as_driver(driver_id))
            for seq in range(1, 6):
                driver.send(fix(driver_id, seq, 52.05, 13.01 + seq * 0.01))
            await driver.wait_for(lambda: driver.durable_seq == 5)  # checked on the primary
            driver.close()
            await driver.reader
            zone = pb.Geofence(display_name="Replica square", geojson=SQUARE)
            zone_id = (
                await geo.CreateGeofence(pb.CreateGeofenceRequest(geofence=zone))
            ).geofence.geofence_id
            got = await geo.GetGeofence(pb.GetGeofenceRequest(geofence_id=zone_id))
            assert got.geofence.display_name == "Replica square"  # read on the primary
            rider_id = new_driver_id("rider")
            ride_id = (
                await rides.RequestRide(_ride_in_ushuaia(rider_id), metadata=as_rider(rider_id))
            ).ride.ride_id

            track_request = pb.GetDriverTrackRequest(driver_id=driver_id)
            track_request.start_time.FromDatetime(datetime.fromtimestamp(time.time() - 600, UTC))
            track_request.end_time.FromDatetime(datetime.fromtimestamp(time.time() + 600, UTC))
            list_rides = ride_pb.ListRidesRequest(rider_id=rider_id)
            assert not (await geo.GetDriverTrack(track_request)).points
            assert zone_id not in _zone_ids(await geo.ListGeofences(pb.ListGeofencesRequest()))
            assert not (await rides.ListRides(list_rides, metadata=as_rider(rider_id))).rides
        finally:
            await asyncio.to_thread(replica.psql, "SELECT pg_wal_replay_resume()")

        track = await eventually(
            lambda: geo.GetDriverTrack(track_request), lambda t: len(t.points) == 5
        )
        assert [p.seq for p in track.points] == [1, 2, 3, 4, 5]
        await eventually(
            lambda: geo.ListGeofences(pb.ListGeofencesRequest()),
            lambda r: zone_id in _zone_ids(r),
        )
        listed = await eventually(
            lambda: rides.ListRides(list_rides, metadata=as_rider(rider_id)),
            lambda r: len(r.rides) == 1,
        )
        assert listed.rides[0].ride_id == ride_id
        assert listed.rides[0].state == ride_pb.RIDE_STATE_EXPIRED


def _zone_ids(response: pb.ListGeofencesResponse) -> set[str]:
    return {g.geofence_id for g in response.geofences}


def _ride_in_ushuaia(rider_id: str) -> ride_pb.RequestRideRequest:
    """No driver is near: the ride is written EXPIRED at once."""
    return ride_pb.RequestRideRequest(
        rider_id=rider_id,
        pickup=LatLng(latitude=-54.8, longitude=-68.3),
        dropoff=LatLng(latitude=-54.81, longitude=-68.3),
        request_id=new_driver_id("request"),
    )
