"""Dispatch against real Redis and PostgreSQL, the driver search over a real gRPC channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverAvailability, LatLng
from ridemesh.v1.location_service_pb2 import DriverActivity
from services.auth.keys import DevKeys
from services.domain.errors import FailedPrecondition
from services.history.store import create_engine
from services.live.names import OPEN_REQUESTS_KEY, SEARCH_RETRY_KEY, driver_key
from services.live.store import LiveStore
from services.ops.mesh.redis_server import RedisServer
from services.ride import states
from services.ride.availability import set_availability
from services.ride.dispatch import SEARCH_RETRY_S, Dispatcher
from services.ride.effects import RideEffects
from services.ride.store import RideStore
from services.server.config import Settings
from tests.integration.dispatch_harness import (
    DROPOFF,
    Clock,
    Geo,
    Listener,
    geo_service,
    new_id,
    new_pickup,
    place_drivers,
    redis_url,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

BUSY = DriverAvailability.DRIVER_AVAILABILITY_BUSY
AVAILABLE = DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE
OFFER_TIMEOUT_S = 15.0


@dataclass
class World:
    redis: Redis
    live: LiveStore
    store: RideStore
    geo: Geo
    clock: Clock
    listener: Listener
    dispatcher: Dispatcher
    settings: Settings
    pickup: LatLng

    @property
    def effects(self) -> RideEffects:
        return RideEffects(self.store, self.redis, self.settings.live_window_s)

    def replica(self) -> Dispatcher:
        """Another RideService replica's dispatcher: same stores, same search service."""
        live = LiveStore(self.redis, self.settings.live_window_s)
        return Dispatcher(self.store, self.dispatcher._geo, live, self.settings, self.clock)

    async def request(self) -> pb.Ride:
        rider = new_id("rider")
        ride, created = await self.store.create(rider, self.pickup, DROPOFF, new_id("req"))
        assert created
        await self.listener.watch_ride(ride.ride_id)
        return ride

    async def place(self, distances_m: list[float]) -> list[str]:
        """Live drivers north of the pickup, whose control channels the listener watches."""
        driver_ids = await place_drivers(self.live, self.pickup, distances_m)
        await self.listener.watch_drivers(driver_ids)
        return driver_ids


@pytest.fixture(scope="module")
async def flushed(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_url(redis_server))
    await redis.flushdb()
    await redis.aclose()


@pytest.fixture
async def world(
    flushed: None, redis_server: RedisServer, database_url: str, keys: DevKeys
) -> AsyncIterator[World]:
    redis = Redis.from_url(redis_url(redis_server))
    settings = Settings(
        redis_url(redis_server),
        database_url,
        dispatch_radius_m=5000.0,
        dispatch_candidates=10,
        offer_timeout_s=OFFER_TIMEOUT_S,
        max_dispatch_s=120.0,
    )
    live = LiveStore(redis, settings.live_window_s)
    store = RideStore(create_engine(database_url))
    listener = Listener(redis)
    await listener.start()
    clock = Clock()
    async with geo_service(live, keys) as (geo, stub):
        live = LiveStore(redis, settings.live_window_s)
        dispatcher = Dispatcher(store, stub, live, settings, clock, search_timeout_s=0.5)
        yield World(redis, live, store, geo, clock, listener, dispatcher, settings, new_pickup())
    await listener.stop()
    await store.dispose()
    await redis.aclose()


async def test_a_new_ride_is_offered_to_the_nearest_available_driver(world: World) -> None:
    far, near, busy = await world.place([1500.0, 300.0, 100.0])
    await set_availability(world.redis, busy, BUSY)
    ride = await world.dispatcher.dispatch(await world.request())

    assert ride.state == pb.RIDE_STATE_REQUESTED
    assert ride.offered_driver_id == near
    await world.listener.wait(lambda: world.listener.kinds(near) == ["offer"])
    offer = world.listener.control[near][0].offer
    assert (offer.ride_id, offer.pickup, offer.dropoff) == (ride.ride_id, world.pickup, DROPOFF)
    assert offer.pickup_distance_m == pytest.approx(300.0, abs=1.0)
    expected_expiry = round((world.clock.now + OFFER_TIMEOUT_S) * 1000)
    assert offer.expire_time.ToMilliseconds() == expected_expiry
    assert far not in world.listener.control
    assert world.listener.kinds(busy) == ["availability"]  # never offered
    await world.listener.wait(
        lambda: any(r.offered_driver_id == near for r in world.listener.rides[ride.ride_id])
    )
    position = await world.redis.geopos(OPEN_REQUESTS_KEY, ride.ride_id)
    assert position[0] == pytest.approx((world.pickup.longitude, world.pickup.latitude), abs=1e-5)


async def test_a_decline_moves_the_offer_to_the_next_driver_and_the_last_one_expires_it(
    world: World,
) -> None:
    first, second = await world.place([200.0, 400.0])
    ride = await world.dispatcher.dispatch(await world.request())
    assert ride.offered_driver_id == first

    with pytest.raises(FailedPrecondition, match="not offered to"):
        await world.dispatcher.declined(ride.ride_id, second, "not mine to decline")
    ride = await world.dispatcher.declined(ride.ride_id, first, "too far")
    assert ride.offered_driver_id == second
    await world.listener.wait(lambda: world.listener.kinds(second) == ["offer"])

    ride = await world.dispatcher.declined(ride.ride_id, second, "on a break")
    assert ride.state == pb.RIDE_STATE_EXPIRED
    assert "no driver accepted" in ride.end_reason
    await world.listener.wait(
        lambda: world.listener.rides[ride.ride_id][-1].state == pb.RIDE_STATE_EXPIRED
    )
    assert await world.redis.geopos(OPEN_REQUESTS_KEY, ride.ride_id) == [None]
    assert world.listener.kinds(first) == ["offer"]


async def test_with_no_driver_near_the_ride_expires_at_once(world: World) -> None:
    await world.place([20_000.0])  # beyond the dispatch radius
    ride = await world.dispatcher.dispatch(await world.request())
    assert ride.state == pb.RIDE_STATE_EXPIRED
    assert ride.end_reason == "no driver was available near the pickup"
    await world.listener.wait(lambda: ride.ride_id in world.listener.rides)
    assert world.listener.rides[ride.ride_id][-1].state == pb.RIDE_STATE_EXPIRED


async def test_a_lapsed_offer_is_withdrawn_and_goes_to_the_next_driver_once(
    world: World,
) -> None:
    first, second, third = await world.place([100.0, 200.0, 300.0])
    ride = await world.dispatcher.dispatch(await world.request())
    await world.dispatcher.sweep()  # not lapsed yet: nothing moves
    assert (await world.store.get(ride.ride_id)).offered_driver_id == first  # type: ignore[union-attr]

    world.clock.now += OFFER_TIMEOUT_S + 0.1
    # Three replicas sweep at the same moment: the offer moves on exactly once.
    replicas = [world.dispatcher, world.replica(), world.replica()]
    await asyncio.gather(*(r.sweep() for r in replicas))
    current = await world.store.get(ride.ride_id)
    assert current is not None
    assert current.offered_driver_id == second
    await world.listener.wait(lambda: world.listener.kinds(second) == ["offer"])
    await world.listener.wait(lambda: world.listener.kinds(first) == ["offer", "offer_withdrawn"])
    assert "timed out" in world.listener.control[first][1].offer_withdrawn.reason
    await asyncio.sleep(0.2)  # a second offer would have arrived by now
    assert world.listener.kinds(second) == ["offer"]
    assert third not in world.listener.control


async def test_a_decline_racing_the_timeout_offers_the_next_driver_once(world: World) -> None:
    first, second, third = await world.place([100.0, 200.0, 300.0])
    ride = await world.dispatcher.dispatch(await world.request())
    world.clock.now += OFFER_TIMEOUT_S + 0.1
    outcomes = await asyncio.gather(
        world.replica().declined(ride.ride_id, first, "no"),
        world.dispatcher.sweep(),
        return_exceptions=True,
    )
    assert all(
        not isinstance(o, BaseException) or isinstance(o, FailedPrecondition) for o in outcomes
    )
    current = await world.store.get(ride.ride_id)
    assert current is not None
    assert current.offered_driver_id == second
    await world.listener.wait(lambda: world.listener.kinds(second) == ["offer"])
    await asyncio.sleep(0.2)
    assert world.listener.kinds(second) == ["offer"]
    assert third not in world.listener.control


async def test_accepting_makes_the_driver_busy_and_completing_available_again(
    world: World,
) -> None:
    (driver,) = await world.place([150.0])
    ride = await world.dispatcher.dispatch(await world.request())
    ride = await world.store.accept(ride.ride_id, driver)
    await world.effects.settle(ride)

    assert await world.redis.hget(driver_key(driver), "a") == str(int(BUSY)).encode()
    assert (await world.live.last_state(driver))[1] == BUSY
    assert await world.redis.geopos(OPEN_REQUESTS_KEY, ride.ride_id) == [None]
    # The ride's rider may now watch the driver (LocationService reads this).
    assert await world.live.assigned_rider(driver) == ride.rider_id
    await world.listener.wait(lambda: world.listener.kinds(driver)[-1] == "availability")
    assert world.listener.control[driver][-1].availability == BUSY
    # Its app samples for the way to the pickup (sent before the availability, on one channel).
    assert world.listener.activities(driver) == [DriverActivity.DRIVER_ACTIVITY_TO_PICKUP]
    # A busy driver is not offered the next ride.
    other = await world.dispatcher.dispatch(await world.request())
    assert other.state == pb.RIDE_STATE_EXPIRED

    for step in (world.store.mark_arrived, world.store.start, world.store.complete):
        ride = await step(ride.ride_id, driver)
    await world.effects.settle(ride)
    assert (await world.live.last_state(driver))[1] == AVAILABLE
    assert await world.live.assigned_rider(driver) is None
    await world.listener.wait(lambda: world.listener.control[driver][-1].availability == AVAILABLE)
    assert world.listener.kinds(driver) == ["offer", "availability", "availability"]
    assert world.listener.activities(driver) == [
        DriverActivity.DRIVER_ACTIVITY_TO_PICKUP,
        DriverActivity.DRIVER_ACTIVITY_AVAILABLE,
    ]
    again = await world.dispatcher.dispatch(await world.request())
    assert again.offered_driver_id == driver


async def test_cancelling_withdraws_the_offer_and_frees_an_assigned_driver(world: World) -> None:
    offered, assigned = await world.place([100.0, 3000.0])
    ride = await world.dispatcher.dispatch(await world.request())
    ride = await world.store.cancel(ride.ride_id, states.RIDER, ride.rider_id, "changed my mind")
    await world.effects.settle(ride)
    await world.listener.wait(lambda: world.listener.kinds(offered) == ["offer", "offer_withdrawn"])
    withdrawn = world.listener.control[offered][1].offer_withdrawn
    assert (withdrawn.ride_id, withdrawn.reason) == (ride.ride_id, "changed my mind")
    assert await world.redis.geopos(OPEN_REQUESTS_KEY, ride.ride_id) == [None]

    await set_availability(world.redis, offered, BUSY)  # so the next ride goes to `assigned`
    held = await world.dispatcher.dispatch(await world.request())
    held = await world.store.accept(held.ride_id, assigned)
    await world.effects.settle(held)
    held = await world.store.cancel(held.ride_id, states.DRIVER, assigned, "flat tyre")
    await world.effects.settle(held)
    assert (await world.live.last_state(assigned))[1] == AVAILABLE
    assert await world.live.assigned_rider(assigned) is None
    assert world.listener.kinds(assigned)[-2:] == ["availability", "availability"]


async def test_availability_of_a_driver_without_a_live_hash_expires_with_the_live_window(
    world: World,
) -> None:
    driver = new_id("offline")
    await set_availability(world.redis, driver, BUSY, live_window_s=60.0)
    ttl_ms = await world.redis.pttl(driver_key(driver))
    assert 0 < ttl_ms <= 60_000
    (live_driver,) = await world.place([50.0])
    await world.redis.pexpire(driver_key(live_driver), 123_000)
    await set_availability(world.redis, live_driver, BUSY)
    assert 120_000 < await world.redis.pttl(driver_key(live_driver)) <= 123_000


async def test_a_failing_search_keeps_the_ride_requested_and_is_retried(world: World) -> None:
    (driver,) = await world.place([250.0])
    world.geo.fail = True
    ride = await world.dispatcher.dispatch(await world.request())
    assert ride.state == pb.RIDE_STATE_REQUESTED
    assert not ride.offered_driver_id
    assert await world.redis.zscore(SEARCH_RETRY_KEY, ride.ride_id) is not None

    world.geo.fail = False
    await world.dispatcher.sweep()  # the retry is not due yet
    assert driver not in world.listener.control
    world.clock.now += SEARCH_RETRY_S
    await asyncio.gather(world.dispatcher.sweep(), world.replica().sweep())
    current = await world.store.get(ride.ride_id)
    assert current is not None
    assert current.offered_driver_id == driver
    await world.listener.wait(lambda: world.listener.kinds(driver) == ["offer"])
    assert await world.redis.zscore(SEARCH_RETRY_KEY, ride.ride_id) is None


async def test_a_slow_search_hits_its_deadline_and_is_retried(world: World) -> None:
    (driver,) = await world.place([250.0])
    world.geo.delay_s = 2.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    ride = await world.dispatcher.dispatch(await world.request())
    assert loop.time() - started < 1.5  # the 0.5 s deadline, not the search's 2 s
    assert ride.state == pb.RIDE_STATE_REQUESTED
    assert not ride.offered_driver_id
    world.geo.delay_s = 0.0
    world.clock.now += SEARCH_RETRY_S
    await world.dispatcher.sweep()
    current = await world.store.get(ride.ride_id)
    assert current is not None
    assert current.offered_driver_id == driver


async def test_a_search_failing_until_the_dispatch_deadline_expires_the_ride(world: World) -> None:
    await world.place([250.0])
    world.geo.fail = True
    ride = await world.dispatcher.dispatch(await world.request())
    world.clock.now += world.settings.max_dispatch_s + 1
    await world.dispatcher.sweep()
    current = await world.store.get(ride.ride_id)
    assert current is not None
    assert current.state == pb.RIDE_STATE_EXPIRED
    await world.listener.wait(
        lambda: (
            world.listener.rides.get(ride.ride_id, [pb.Ride()])[-1].state == pb.RIDE_STATE_EXPIRED
        )
    )


async def test_a_polar_pickup_is_dispatched_but_not_indexed(world: World) -> None:
    ride, _ = await world.store.create(
        new_id("rider"), LatLng(latitude=89.0, longitude=0.0), DROPOFF, new_id("req")
    )
    ride = await world.dispatcher.dispatch(ride)
    assert ride.state == pb.RIDE_STATE_EXPIRED
    assert await world.redis.geopos(OPEN_REQUESTS_KEY, ride.ride_id) == [None]
