"""A ride change's effects in Redis, over real PostgreSQL and Redis: applied after the commit,
owed when Redis fails in between, repaired by the sweeper, and reapplied when Redis comes back
empty."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverAvailability, LatLng
from services.history.store import create_engine
from services.live.names import assigned_key, driver_key
from services.live.store import LiveStore
from services.ops.mesh.ports import free_port
from services.ops.mesh.redis_server import RedisServer
from services.ride.effects import RideEffects
from services.ride.store import RideStore
from tests.integration.dispatch_harness import new_id
from tests.integration.geo_drivers import flushed_redis

pytestmark = pytest.mark.integration

REDIS_DB = 12
BUSY = DriverAvailability.DRIVER_AVAILABILITY_BUSY
AVAILABLE = DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE
PICKUP = LatLng(latitude=48.8566, longitude=2.3522)
DROPOFF = LatLng(latitude=48.8606, longitude=2.3376)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with flushed_redis(redis_server, REDIS_DB) as client:
        yield client


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[RideStore]:
    rides = RideStore(create_engine(database_url))
    yield rides
    await rides.dispose()


async def _accepted(store: RideStore) -> pb.Ride:
    ride, _ = await store.create(new_id("rider"), PICKUP, DROPOFF, new_id("req"))
    driver = new_id("drv")
    await store.set_candidates(ride.ride_id, [driver], datetime.now(UTC) + timedelta(minutes=5))
    await store.offer_next(ride.ride_id, datetime.now(UTC).timestamp(), 30.0)
    return await store.accept(ride.ride_id, driver)


async def _owed(store: RideStore, ride: pb.Ride) -> bool:
    return any(r.ride_id == ride.ride_id for r in await store.effects_owed(0.0, 10_000))


async def test_effects_applied_after_the_commit_are_no_longer_owed(
    store: RideStore, redis: Redis
) -> None:
    ride = await _accepted(store)
    assert await _owed(store, ride)  # the commit itself owes them
    await RideEffects(store, redis, 300.0).settle(ride)
    assert not await _owed(store, ride)
    assert (await LiveStore(redis, 300.0).last_state(ride.driver_id))[1] == BUSY
    assert await redis.get(assigned_key(ride.driver_id)) == ride.rider_id.encode()


async def test_effects_redis_refused_stay_owed_until_the_sweeper_applies_them(
    store: RideStore, redis: Redis
) -> None:
    ride = await _accepted(store)
    away = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        await RideEffects(store, away, 300.0).settle(ride)  # no error: the change is committed
    finally:
        await away.aclose()
    assert await _owed(store, ride)
    assert await redis.hget(driver_key(ride.driver_id), "a") is None

    repaired = await RideEffects(store, redis, 300.0, owed_after_s=0.0).repair()
    assert repaired >= 1
    assert not await _owed(store, ride)
    assert (await LiveStore(redis, 300.0).last_state(ride.driver_id))[1] == BUSY

    done = await store.complete(
        (await store.start((await store.mark_arrived(ride.ride_id, ride.driver_id)).ride_id,
                           ride.driver_id)).ride_id,
        ride.driver_id,
    )  # fmt: skip
    await RideEffects(store, redis, 300.0).settle(done)
    assert (await LiveStore(redis, 300.0).last_state(ride.driver_id))[1] == AVAILABLE
    assert await redis.get(assigned_key(ride.driver_id)) is None


async def test_a_redis_that_came_back_empty_gets_every_ride_in_progress_again(
    store: RideStore, redis: Redis
) -> None:
    effects = RideEffects(store, redis, 300.0, owed_after_s=0.0)
    ride = await _accepted(store)
    await effects.settle(ride)
    await effects.repair()  # sets the epoch: nothing was lost yet
    assert not await _owed(store, ride)

    await redis.flushdb()  # what an empty restart leaves
    assert await redis.hget(driver_key(ride.driver_id), "a") is None
    await effects.repair()
    assert (await LiveStore(redis, 300.0).last_state(ride.driver_id))[1] == BUSY
    assert await redis.get(assigned_key(ride.driver_id)) == ride.rider_id.encode()
    assert not await _owed(store, ride)
