"""Steering driver apps through Envoy: sampling hints that follow a ride, a fix requested when a
rider or ops opens the map, the hint of the current activity after a reconnect, and the
simulator sending at the hinted interval (and at a new one when its activity changes)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from ridemesh.v1 import location_service_pb2 as lpb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1 import ride_service_pb2_grpc as ride_grpc
from ridemesh.v1.common_pb2 import LatLng
from services.auth.keys import DevKeys
from services.domain.sampling import AVAILABLE, NEAR_PICKUP, ON_RIDE, TO_PICKUP
from services.live.activity import set_activity
from services.ops.mesh.supervisor import Mesh
from services.ops.simulator.run import Simulation
from services.ops.simulator.settings import SimSettings
from tests.e2e.clients import DriverStream, Messages, fix, new_driver_id
from tests.tokens import Metadata
from tests.waiting import until

pytestmark = pytest.mark.e2e

Act = Callable[[str], Metadata]


def _activities(stream: DriverStream) -> list[int]:
    return [hint.activity for hint in stream.hints]


async def _online(
    location: location_grpc.LocationServiceAsyncStub,
    as_driver: Act,
    driver_id: str,
    at: tuple[float, float],
    seq: int = 1,
) -> DriverStream:
    stream = DriverStream(location, metadata=as_driver(driver_id))
    stream.send(fix(driver_id, seq, *at))
    await stream.wait_for(lambda: stream.accepted_seq == seq and len(stream.hints) >= 1)
    return stream


async def _assigned(
    rides: ride_grpc.RideServiceAsyncStub,
    driver: DriverStream,
    driver_id: str,
    as_driver: Act,
    as_rider: Act,
    pickup: tuple[float, float],
) -> pb.Ride:
    """A ride requested near the driver, offered to it and accepted."""
    rider_id = new_driver_id("rider")
    request = pb.RequestRideRequest(
        rider_id=rider_id,
        pickup=LatLng(latitude=pickup[0], longitude=pickup[1]),
        dropoff=LatLng(latitude=pickup[0] + 0.01, longitude=pickup[1]),
        request_id=str(uuid.uuid4()),
    )
    ride = (await rides.RequestRide(request, metadata=as_rider(rider_id))).ride
    await driver.wait_for(lambda: any(o.ride_id == ride.ride_id for o in driver.offers))
    accept = pb.AcceptRideRequest(ride_id=ride.ride_id, driver_id=driver_id)
    return (await rides.AcceptRide(accept, metadata=as_driver(driver_id))).ride


async def _end(stream: DriverStream) -> None:
    stream.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await asyncio.gather(stream.reader, return_exceptions=True)
    stream.call.cancel()


async def test_a_rides_states_steer_its_drivers_sampling_and_the_riders_map_asks_for_a_fix(
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    pickup = (21.3069, -157.8583)  # Honolulu: no other test has drivers there
    driver_id = new_driver_id("drv")
    driver = await _online(location, as_driver, driver_id, (21.3169, -157.8583))  # 1.1 km north
    assert _activities(driver) == [AVAILABLE]
    ride = await _assigned(rides, driver, driver_id, as_driver, as_rider, pickup)
    await driver.wait_for(lambda: _activities(driver)[-1] == TO_PICKUP)
    assert driver.hints[-1].interval.ToMilliseconds() == 2000

    watch = Messages(
        rides.WatchRide(pb.WatchRideRequest(ride_id=ride.ride_id), metadata=as_rider(ride.rider_id))
    )
    await watch.next()
    await driver.wait_for(lambda: len(driver.fix_requests) == 1)
    assert driver.fix_requests[0].reason == "a rider opened the map"

    # 330 m from the pickup: approaching it.
    driver.send(fix(driver_id, 2, pickup[0] + 0.003, pickup[1]))
    await driver.wait_for(lambda: _activities(driver)[-1] == NEAR_PICKUP)
    assert driver.hints[-1].interval.ToMilliseconds() == 1000
    me = as_driver(driver_id)
    ids = {"ride_id": ride.ride_id, "driver_id": driver_id}
    await rides.MarkDriverArrived(pb.MarkDriverArrivedRequest(**ids), metadata=me)
    await rides.StartRide(pb.StartRideRequest(**ids), metadata=me)
    await driver.wait_for(lambda: _activities(driver)[-1] == ON_RIDE)
    await rides.CompleteRide(pb.CompleteRideRequest(**ids), metadata=me)
    await driver.wait_for(lambda: _activities(driver)[-1] == AVAILABLE and len(driver.hints) > 1)
    # Arriving kept NEAR_PICKUP (no second hint for it); each change came once.
    assert _activities(driver) == [AVAILABLE, TO_PICKUP, NEAR_PICKUP, ON_RIDE, AVAILABLE]
    watch.cancel()
    await _end(driver)


async def test_watching_a_driver_asks_its_app_for_a_fix(
    location: location_grpc.LocationServiceAsyncStub, as_driver: Act
) -> None:
    driver_id = new_driver_id("drv")
    driver = await _online(location, as_driver, driver_id, (60.1699, 24.9384))  # Helsinki
    watch = Messages(location.WatchDriver(lpb.WatchDriverRequest(driver_id=driver_id)))
    first = await watch.next()
    assert first.location.driver_id == driver_id
    await driver.wait_for(lambda: len(driver.fix_requests) == 1)
    assert driver.fix_requests[0].reason
    watch.cancel()
    await _end(driver)


async def test_a_reconnecting_driver_is_hinted_its_current_activity(
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    pickup = (64.1814, -51.6941)  # Nuuk: no other test has drivers there
    driver_id = new_driver_id("drv")
    driver = await _online(location, as_driver, driver_id, (64.1914, -51.6941))
    ride = await _assigned(rides, driver, driver_id, as_driver, as_rider, pickup)
    await driver.wait_for(lambda: _activities(driver)[-1] == TO_PICKUP)
    await _end(driver)
    # Envoy may send the new stream to the other LocationService replica: Redis remembers.
    again = await _online(location, as_driver, driver_id, (64.1914, -51.6941), seq=2)
    assert _activities(again) == [TO_PICKUP]
    cancel = pb.CancelRideRequest(
        ride_id=ride.ride_id,
        cancelled_by=pb.PARTY_RIDER,
        actor_id=ride.rider_id,
        reason="test over",
    )
    await rides.CancelRide(cancel, metadata=as_rider(ride.rider_id))
    await again.wait_for(lambda: _activities(again)[-1] == AVAILABLE)
    await _end(again)


def _gaps(sent: list[tuple[float, int]], activity: int) -> list[float]:
    """Seconds between consecutive fixes both sent under `activity`'s hint."""
    return [b[0] - a[0] for a, b in itertools.pairwise(sent) if a[1] == b[1] == activity]


@pytest.fixture
async def redis(mesh: Mesh) -> AsyncIterator[Redis]:
    assert mesh.redis_url is not None
    client = Redis.from_url(mesh.redis_url)
    yield client
    await client.aclose()


async def test_simulated_drivers_send_at_the_hinted_interval_unless_told_to_ignore_hints(
    envoy_address: str,
    keys: DevKeys,
    location: location_grpc.LocationServiceAsyncStub,
    redis: Redis,
) -> None:
    # Without hints these drivers would send every 0.3-0.5 s.
    base = SimSettings(
        target=envoy_address,
        drivers=3,
        ride_rate_per_min=0.0,
        seed=5,
        city_radius_m=300.0,
        fix_interval_s=(0.3, 0.5),
        demo_zones=False,
    )
    # Wellington and Hobart: cities no other test puts drivers in (a shared mesh would mix them).
    honouring = Simulation(replace(base, center=(-41.2866, 174.7756)), keys)
    ignoring = Simulation(replace(base, center=(-42.8821, 147.3272), honour_hints=False), keys)
    runs = [asyncio.create_task(s.run()) for s in (honouring, ignoring)]
    try:
        # Four fixes under the AVAILABLE hint (4 s) each: three gaps to measure.
        await until(
            lambda: (
                len(honouring.drivers) == 3
                and all(len(_gaps(list(d.sent), AVAILABLE)) >= 3 for d in honouring.drivers)
            ),
            timeout=60,
            every_s=0.1,
        )
        for driver in honouring.drivers:
            gaps = _gaps(list(driver.sent), AVAILABLE)
            assert min(gaps) >= 3.9, (driver.driver_id, gaps)
        for driver in ignoring.drivers:
            assert driver.hint is not None
            assert driver.hint.activity == AVAILABLE
            assert len(driver.sent) >= 20, driver.driver_id  # every 0.3-0.5 s, hint or not

        # A watcher opening on one honouring driver: it sends at once, well before 4 s are up.
        watched = honouring.drivers[0]
        watch = Messages(location.WatchDriver(lpb.WatchDriverRequest(driver_id=watched.driver_id)))
        await until(lambda: honouring.stats.fix_requests >= 1, timeout=15)
        # A gap shorter than the hint can only come from the request.
        await until(lambda: any(g < 3.9 for g in _gaps(list(watched.sent), AVAILABLE)), timeout=15)
        watch.cancel()

        # Its activity changes (as a ride accepted would): it sends at the new, shorter interval.
        steered = honouring.drivers[1]
        await set_activity(redis, steered.driver_id, TO_PICKUP)
        await until(lambda: len(_gaps(list(steered.sent), TO_PICKUP)) >= 3, timeout=30)
        gaps = sorted(_gaps(list(steered.sent), TO_PICKUP))
        assert gaps[0] >= 1.9, gaps
        assert gaps[len(gaps) // 2] < 3.9, gaps  # faster than it ever sent while available
    finally:
        for simulation in (honouring, ignoring):
            simulation.stop.set()
        await asyncio.gather(*runs, return_exceptions=True)
