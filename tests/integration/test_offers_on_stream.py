"""Offers and availability reach a driver's real StreamLocations stream in a LocationService
process of its own, from dispatch running here, through Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ridemesh.v1 import location_service_pb2 as lpb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverAvailability, LatLng
from services.auth.identity import Role
from services.auth.keys import DevKeys
from services.history.store import create_engine
from services.live.names import control_channel
from services.live.store import LiveStore
from services.ops.mesh.redis_server import RedisServer
from services.ride import states
from services.ride.availability import set_availability
from services.ride.dispatch import Dispatcher
from services.ride.effects import RideEffects
from services.ride.store import RideStore
from services.server.config import Settings
from tests.e2e.processes import start_location
from tests.integration.dispatch_harness import (
    DROPOFF,
    Clock,
    geo_service,
    new_id,
    new_pickup,
    redis_url,
)
from tests.integration.geo_drivers import destination
from tests.tokens import bearer, ops_channel, token

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

BUSY = DriverAvailability.DRIVER_AVAILABILITY_BUSY
AVAILABLE = DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE
_NOT_DISPATCH = ("ack", "rejected", "sampling_hint", "fix_request")
LOCATION_ENV = {
    "RIDEMESH_ACK_INTERVAL_S": "0.2",
    "RIDEMESH_PERSIST_MAX_AGE_S": "0.2",
    # The driver jumps from place to place: the speed-jump filter has its own test.
    "RIDEMESH_FIX_MAX_SPEED_MPS": "0",
}


@pytest.fixture(scope="module")
def location_port(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    database_url: str,
    keys: DevKeys,
) -> Iterator[int]:
    """A LocationService process on Redis db 9; this test process only talks to it by gRPC."""
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url(redis_server)).flushdb()
    log_dir = Path(tmp_path_factory.mktemp("location"))
    process, port = start_location(
        log_dir, redis_url(redis_server), database_url, LOCATION_ENV, keys
    )
    try:
        yield port
    finally:
        process.stop()


class Driver:
    """A driver app: one StreamLocations call, every server message kept in order."""

    def __init__(
        self,
        stub: location_grpc.LocationServiceAsyncStub,
        keys: DevKeys,
        driver_id: str,
        last_seq: int = 0,
    ) -> None:
        self.driver_id = driver_id
        self._outbox: asyncio.Queue[lpb.StreamLocationsRequest | None] = asyncio.Queue()
        # A driver streams only as themselves.
        metadata = bearer(token(keys, driver_id, Role.DRIVER))
        self.call = stub.StreamLocations(self._requests(), metadata=metadata)
        self.received: list[lpb.StreamLocationsResponse] = []
        self._changed = asyncio.Condition()
        self._seq = last_seq
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[lpb.StreamLocationsRequest]:
        while (request := await self._outbox.get()) is not None:
            yield request

    async def _read(self) -> None:
        async for response in self.call:
            async with self._changed:
                self.received.append(response)
                self._changed.notify_all()

    async def fix(self, point: LatLng) -> None:
        """Sends a fix and waits for the ack that took it."""
        self._seq += 1
        update = lpb.LocationUpdate(driver_id=self.driver_id, position=point, seq=self._seq)
        update.recorded_at.FromNanoseconds(time.time_ns())
        self._outbox.put_nowait(lpb.StreamLocationsRequest(update=update))
        seq = self._seq
        await self.wait(lambda: any(m.ack.seq >= seq for m in self.received if m.HasField("ack")))

    def control(self) -> list[lpb.StreamLocationsResponse]:
        """What dispatch sent: offers, withdrawals and availability, in arrival order (sampling
        hints and fix requests are tested in test_steering)."""
        return [m for m in self.received if m.WhichOneof("kind") not in _NOT_DISPATCH]

    def kinds(self) -> list[str | None]:
        return [m.WhichOneof("kind") for m in self.control()]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        self.call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@dataclass
class World:
    redis: Redis
    location: location_grpc.LocationServiceAsyncStub
    store: RideStore
    dispatcher: Dispatcher
    pickup: LatLng
    keys: DevKeys

    @property
    def effects(self) -> RideEffects:
        return RideEffects(self.store, self.redis, 300.0)

    async def driver(self, distance_m: float) -> Driver:
        """A driver streaming from `distance_m` north of the pickup, subscribed to its offers."""
        driver = Driver(self.location, self.keys, new_id("drv"))
        lat, lng = destination(self.pickup.latitude, self.pickup.longitude, 0.0, distance_m)
        await driver.fix(LatLng(latitude=lat, longitude=lng))
        await wait_subscribers(self.redis, driver.driver_id, 1)
        return driver

    async def request(self) -> pb.Ride:
        ride, _ = await self.store.create(new_id("rider"), self.pickup, DROPOFF, new_id("req"))
        return await self.dispatcher.dispatch(ride)

    async def availability(self, driver: Driver) -> DriverAvailability.ValueType:
        request = lpb.GetDriverLocationRequest(driver_id=driver.driver_id)
        return (await self.location.GetDriverLocation(request)).location.availability


async def wait_subscribers(redis: Redis, driver_id: str, count: int) -> None:
    """Waits until `count` streams listen on the driver's control channel."""
    channel = control_channel(driver_id)
    async with asyncio.timeout(10):
        # Redis has no event for this; poll.
        while (await redis.pubsub_shardnumsub(channel))[0][1] != count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.fixture
async def world(
    location_port: int, redis_server: RedisServer, database_url: str, keys: DevKeys
) -> AsyncIterator[World]:
    redis = Redis.from_url(redis_url(redis_server))
    settings = Settings(redis_url(redis_server), database_url, offer_timeout_s=15.0)
    store = RideStore(create_engine(database_url))
    async with (
        geo_service(LiveStore(redis, settings.live_window_s), keys) as (_, geo),
        ops_channel(keys, f"127.0.0.1:{location_port}") as channel,
    ):
        dispatcher = Dispatcher(
            store, geo, LiveStore(redis, settings.live_window_s), settings, Clock()
        )
        yield World(
            redis,
            location_grpc.LocationServiceStub(channel),
            store,
            dispatcher,
            new_pickup(),
            keys,
        )
    await store.dispose()
    await redis.aclose()


async def test_an_offer_arrives_on_the_nearest_drivers_stream_and_a_decline_moves_it_on(
    world: World,
) -> None:
    near, far = await world.driver(200.0), await world.driver(900.0)
    ride = await world.request()
    await near.wait(lambda: near.kinds() == ["offer"])
    offer = near.control()[0].offer
    assert (offer.ride_id, offer.pickup, offer.dropoff) == (ride.ride_id, world.pickup, DROPOFF)
    assert offer.pickup_distance_m == pytest.approx(200.0, abs=1.0)
    assert far.kinds() == []

    await world.dispatcher.declined(ride.ride_id, near.driver_id, "too far")
    await far.wait(lambda: far.kinds() == ["offer"])
    assert far.control()[0].offer.pickup_distance_m == pytest.approx(900.0, abs=1.0)
    assert near.kinds() == ["offer"]
    for driver in (near, far):
        await driver.close()


async def test_availability_follows_the_ride_on_the_stream_and_in_its_fixes(world: World) -> None:
    driver = await world.driver(300.0)
    ride = await world.request()
    await driver.wait(lambda: driver.kinds() == ["offer"])
    ride = await world.store.accept(ride.ride_id, driver.driver_id)
    await world.effects.settle(ride)
    await driver.wait(lambda: driver.kinds() == ["offer", "availability"])
    assert driver.control()[-1].availability == BUSY
    await driver.fix(world.pickup)
    assert await world.availability(driver) == BUSY

    for step in (world.store.mark_arrived, world.store.start, world.store.complete):
        ride = await step(ride.ride_id, driver.driver_id)
    await world.effects.settle(ride)
    await driver.wait(lambda: len(driver.kinds()) == 3)
    assert driver.control()[-1].availability == AVAILABLE
    await driver.fix(DROPOFF)
    assert await world.availability(driver) == AVAILABLE
    await driver.close()


async def test_a_cancelled_rides_offer_is_withdrawn_on_the_stream(world: World) -> None:
    driver = await world.driver(150.0)
    ride = await world.request()
    await driver.wait(lambda: driver.kinds() == ["offer"])
    ride = await world.store.cancel(ride.ride_id, states.RIDER, ride.rider_id, "found a taxi")
    await world.effects.settle(ride)
    await driver.wait(lambda: driver.kinds() == ["offer", "offer_withdrawn"])
    withdrawn = driver.control()[1].offer_withdrawn
    assert (withdrawn.ride_id, withdrawn.reason) == (ride.ride_id, "found a taxi")
    await driver.close()


async def test_a_stream_opened_while_busy_stamps_busy_from_its_first_fix(world: World) -> None:
    driver_id = new_id("drv")
    await set_availability(world.redis, driver_id, BUSY)
    driver = Driver(world.location, world.keys, driver_id)
    await driver.fix(world.pickup)
    assert await world.availability(driver) == BUSY
    # Busy drivers are not offered rides.
    assert (await world.request()).state == pb.RIDE_STATE_EXPIRED
    await driver.close()


async def test_a_stream_stops_listening_when_it_ends_and_a_reconnect_listens_again(
    world: World,
) -> None:
    first = await world.driver(100.0)
    await first.close()
    await wait_subscribers(world.redis, first.driver_id, 0)
    again = Driver(world.location, world.keys, first.driver_id, last_seq=1)
    await again.fix(world.pickup)
    await wait_subscribers(world.redis, first.driver_id, 1)
    ride = await world.request()
    await again.wait(lambda: again.kinds() == ["offer"])
    assert again.control()[0].offer.ride_id == ride.ride_id
    await again.close()
