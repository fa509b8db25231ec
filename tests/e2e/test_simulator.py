"""The city simulator against the mesh, in-process: its drivers stream and are seen, stay in
their city and move at the speeds they report; its riders' rides are dispatched to them and
every one ends; its demo zones exist and produce events."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ridemesh.v1 import geo_query_service_pb2 as geo_pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1 import ride_service_pb2 as ride_pb
from ridemesh.v1 import ride_service_pb2_grpc as ride_grpc
from services.auth.keys import DevKeys
from services.domain.geodesy import haversine_m
from services.ops.simulator.run import Simulation
from services.ops.simulator.settings import SimSettings
from services.ops.simulator.zones import DEMO_ZONES

pytestmark = pytest.mark.e2e

SANTIAGO = (-33.45, -70.66)  # a centre no other test uses
RADIUS_M = 300.0
GPS_SIGMA_M = 4.0


def _timestamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


async def _zone_events(
    geo: geo_grpc.GeoQueryServiceAsyncStub, into: list[geo_pb.GeofenceEvent]
) -> None:
    request = geo_pb.WatchGeofenceEventsRequest(labels={"source": "simulator"})
    async for response in geo.WatchGeofenceEvents(request):
        into.append(response.event)


async def test_a_small_fast_city_streams_drives_and_ends_every_ride(
    envoy_address: str,
    keys: DevKeys,
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
) -> None:
    settings = SimSettings(
        target=envoy_address,
        drivers=10,
        ride_rate_per_min=90.0,
        center=SANTIAGO,
        duration_s=14.0,
        seed=11,
        city_radius_m=RADIUS_M,
        trip_radius_m=200.0,
        speed_mps=(100.0, 120.0),  # fast, so a whole trip fits in the run
        fix_interval_s=(0.3, 0.5),
        honour_hints=False,  # fast fixes whatever the server hints
        gps_sigma_m=GPS_SIGMA_M,
        accept_probability=1.0,
        rider_patience_s=6.0,
    )
    start = datetime.now(UTC)
    events: list[geo_pb.GeofenceEvent] = []
    watching = asyncio.create_task(_zone_events(geo, events))
    simulation = Simulation(settings, keys)
    try:
        async with asyncio.timeout(60):
            stats = await simulation.run()
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching

    assert stats.fixes_acked > 0, stats.summary()
    assert stats.fixes_rejected == 0, stats.summary()
    assert stats.rides_requested > 0, stats.summary()
    assert stats.rides_completed >= 1, stats.summary()

    # Every ride the riders asked for has ended: driven to the end or cancelled (a rider who
    # waited too long, or the run stopping under it); none expired, none left open.
    assert simulation.riders is not None
    for ride_id in simulation.riders.requested:
        ride = (await rides.GetRide(ride_pb.GetRideRequest(ride_id=ride_id))).ride
        assert ride.state in (ride_pb.RIDE_STATE_COMPLETED, ride_pb.RIDE_STATE_CANCELLED), ride

    # The demo zones exist, once each, and drivers crossing them made events.
    assert [z.display_name for z in simulation.zones] == [z.name for z in DEMO_ZONES]
    drivers = {d.driver_id for d in simulation.drivers}
    assert any(e.driver_id in drivers for e in events), "no zone event from the simulated city"

    # What the mesh stored: inside the city (give or take the GPS noise), and no faster than
    # each driver reports (straight-line distance between fixes <= speed x time, plus noise).
    end = datetime.now(UTC) + timedelta(seconds=1)
    for driver in simulation.drivers:
        found = await location.GetDriverLocation(
            pb.GetDriverLocationRequest(driver_id=driver.driver_id), timeout=10
        )
        assert found.location.seq >= 1
        track = await geo.GetDriverTrack(
            geo_pb.GetDriverTrackRequest(
                driver_id=driver.driver_id,
                start_time=_timestamp(start),
                end_time=_timestamp(end),
                page_size=10_000,
            )
        )
        points = track.points
        assert len(points) >= 5
        for point in points:
            from_centre = haversine_m(*SANTIAGO, point.position.latitude, point.position.longitude)
            assert from_centre <= RADIUS_M + 6 * GPS_SIGMA_M, (driver.driver_id, from_centre)
            assert point.speed_mps == pytest.approx(driver.speed_mps, rel=1e-5)
        ratios = []
        for before, after in itertools.pairwise(points):
            seconds = (after.recorded_at.ToNanoseconds() - before.recorded_at.ToNanoseconds()) / 1e9
            metres = haversine_m(
                before.position.latitude,
                before.position.longitude,
                after.position.latitude,
                after.position.longitude,
            )
            assert metres <= after.speed_mps * seconds + 8 * GPS_SIGMA_M, (driver.driver_id, metres)
            ratios.append(metres / (after.speed_mps * seconds))
        # Moving, not parked: most steps cover a good part of what the speed allows (turns and
        # waits at pickups make some shorter).
        assert sorted(ratios)[len(ratios) // 2] > 0.5, (driver.driver_id, ratios)
