"""The city simulator against the mesh, in-process: its drivers stream and are seen, its riders'
rides are dispatched to them and driven to the end."""

from __future__ import annotations

import asyncio

import pytest

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from services.auth.keys import DevKeys
from services.simulator.run import Simulation
from services.simulator.settings import SimSettings

pytestmark = pytest.mark.e2e

SANTIAGO = (-33.45, -70.66)  # a centre no other test uses


async def test_a_small_fast_city_streams_and_completes_rides(
    envoy_address: str, keys: DevKeys, location: location_grpc.LocationServiceAsyncStub
) -> None:
    settings = SimSettings(
        target=envoy_address,
        drivers=8,
        ride_rate_per_min=120.0,
        center=SANTIAGO,
        duration_s=14.0,
        seed=11,
        city_radius_m=300.0,
        trip_radius_m=200.0,
        speed_mps=(100.0, 120.0),  # fast, so a whole trip fits in the run
        fix_interval_s=(0.3, 0.5),
        accept_probability=0.9,
    )
    simulation = Simulation(settings, keys)
    async with asyncio.timeout(40):
        stats = await simulation.run()

    assert stats.fixes_acked > 0, stats.summary()
    assert stats.fixes_rejected == 0, stats.summary()
    assert stats.rides_requested > 0, stats.summary()
    assert stats.rides_completed >= 1, stats.summary()
    for driver in simulation.drivers:
        found = await location.GetDriverLocation(
            pb.GetDriverLocationRequest(driver_id=driver.driver_id), timeout=10
        )
        assert found.location.seq >= 1
