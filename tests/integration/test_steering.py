"""Sampling hints and fix requests on a real driver stream, in a LocationService process of its
own, with the activity changed through Redis as RideService changes it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from redis.asyncio import Redis

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from services.auth.identity import Role
from services.auth.keys import DevKeys
from services.domain.sampling import AVAILABLE, IDLE, NEAR_PICKUP, ON_RIDE, TO_PICKUP
from services.live.activity import get_activity, set_activity
from services.live.names import driver_key
from services.ops.mesh.redis_server import RedisServer
from tests.e2e.clients import DriverStream, Messages, fix, new_driver_id
from tests.e2e.conftest import status_of
from tests.e2e.processes import start_location
from tests.integration.dispatch_harness import redis_url
from tests.tokens import bearer, ops_channel, token

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

# Idle after 1 s still within 30 m; one fix request per driver a minute, so a second within a
# test is a merge failure, not a gap that passed.
ENV = {
    "RIDEMESH_ACK_INTERVAL_S": "0.2",
    "RIDEMESH_PERSIST_MAX_AGE_S": "0.2",
    "RIDEMESH_IDLE_AFTER_S": "1",
    "RIDEMESH_FIX_REQUEST_GAP_S": "60",
    "RIDEMESH_SAMPLING_ON_RIDE_S": "2.5",
    "RIDEMESH_FIX_RATE_PER_S": "50",
    "RIDEMESH_FIX_BURST": "50",
}
LAT, LNG = 50.0755, 14.4378  # Prague
EAST_100_M = 100.0 / 71_600.0  # degrees of longitude at this latitude


@pytest.fixture(scope="module")
def address(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    database_url: str,
    keys: DevKeys,
) -> Iterator[str]:
    log_dir = Path(tmp_path_factory.mktemp("steering"))
    process, port = start_location(log_dir, redis_url(redis_server), database_url, ENV, keys)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url(redis_server))
    yield client
    await client.aclose()


@pytest.fixture
async def stub(
    address: str, keys: DevKeys
) -> AsyncIterator[location_grpc.LocationServiceAsyncStub]:
    async with ops_channel(keys, address) as channel:
        yield location_grpc.LocationServiceStub(channel)


async def _online(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, driver_id: str, seq: int = 1
) -> DriverStream:
    stream = DriverStream(stub, bearer(token(keys, driver_id, Role.DRIVER)))
    stream.send(fix(driver_id, seq, LAT, LNG))
    await stream.wait_for(lambda: stream.accepted_seq == seq)
    return stream


async def _end(stream: DriverStream) -> None:
    stream.close()
    stream.call.cancel()
    await asyncio.gather(stream.reader, return_exceptions=True)


def _activities(stream: DriverStream) -> list[int]:
    return [hint.activity for hint in stream.hints]


async def test_the_first_fix_brings_the_hint_of_an_available_driver(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys
) -> None:
    stream = await _online(stub, keys, new_driver_id())
    await stream.wait_for(lambda: len(stream.hints) == 1)
    (hint,) = stream.hints
    assert hint.activity == AVAILABLE
    assert hint.interval.ToMilliseconds() == 4000
    assert hint.accuracy_m == 20.0
    await _end(stream)


async def test_each_activity_change_brings_one_hint_and_a_repeat_none(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, redis: Redis
) -> None:
    driver_id = new_driver_id()
    stream = await _online(stub, keys, driver_id)
    for activity in (TO_PICKUP, TO_PICKUP, NEAR_PICKUP, ON_RIDE, ON_RIDE, AVAILABLE):
        await set_activity(redis, driver_id, activity)
    await stream.wait_for(lambda: _activities(stream)[-1:] == [AVAILABLE] and len(stream.hints) > 1)
    assert _activities(stream) == [AVAILABLE, TO_PICKUP, NEAR_PICKUP, ON_RIDE, AVAILABLE]
    on_ride = stream.hints[3]
    assert on_ride.interval.ToMilliseconds() == 2500  # RIDEMESH_SAMPLING_ON_RIDE_S
    await _end(stream)


async def test_a_reconnecting_stream_gets_the_hint_of_the_stored_activity(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, redis: Redis
) -> None:
    driver_id = new_driver_id()
    first = await _online(stub, keys, driver_id)
    await set_activity(redis, driver_id, ON_RIDE)
    await first.wait_for(lambda: _activities(first)[-1:] == [ON_RIDE])
    await _end(first)
    again = await _online(stub, keys, driver_id, seq=2)
    await again.wait_for(lambda: len(again.hints) == 1)
    assert _activities(again) == [ON_RIDE]
    await _end(again)


async def test_an_unreadable_stored_activity_counts_as_available(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, redis: Redis
) -> None:
    driver_id = new_driver_id()
    await redis.hset(driver_key(driver_id), "v", "99")
    stream = await _online(stub, keys, driver_id)
    await stream.wait_for(lambda: len(stream.hints) == 1)
    assert _activities(stream) == [AVAILABLE]
    await _end(stream)


async def _send_until(
    stream: DriverStream, driver_id: str, seq: int, at: tuple[float, float], activity: int
) -> int:
    """Sends a fix at `at` every 0.2 s until the stream is hinted `activity`; the idle detector
    needs fixes over time, so waiting alone cannot make it decide."""
    async with asyncio.timeout(15):
        while _activities(stream)[-1:] != [activity]:
            seq += 1
            stream.send(fix(driver_id, seq, *at))
            hinted = len(stream.hints)
            try:
                await stream.wait_for(lambda n=hinted: len(stream.hints) > n, timeout=0.2)
            except TimeoutError:
                continue
    return seq


async def test_a_driver_standing_still_goes_idle_and_moving_off_makes_it_available(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, redis: Redis
) -> None:
    driver_id = new_driver_id()
    stream = await _online(stub, keys, driver_id)
    seq = await _send_until(stream, driver_id, 1, (LAT, LNG), IDLE)
    assert stream.hints[-1].interval.ToMilliseconds() == 30_000
    assert await get_activity(redis, driver_id) == IDLE
    await _send_until(stream, driver_id, seq, (LAT, LNG + EAST_100_M), AVAILABLE)
    assert await get_activity(redis, driver_id) == AVAILABLE
    assert _activities(stream) == [AVAILABLE, IDLE, AVAILABLE]
    await _end(stream)


async def test_a_driver_on_a_ride_standing_still_is_not_made_idle(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, redis: Redis
) -> None:
    driver_id = new_driver_id()
    stream = await _online(stub, keys, driver_id)
    await set_activity(redis, driver_id, ON_RIDE)
    await stream.wait_for(lambda: _activities(stream)[-1:] == [ON_RIDE])
    for seq in range(2, 12):  # over 2 s at one spot, at an app's pace: idle, were it available
        stream.send(fix(driver_id, seq, LAT, LNG))
        await asyncio.sleep(0.2)
    await stream.wait_for(lambda: stream.accepted_seq == 11)
    assert await get_activity(redis, driver_id) == ON_RIDE
    assert _activities(stream) == [AVAILABLE, ON_RIDE]
    # The ride ends where it stood: the detector watched all along, so the next fix makes the
    # driver idle.
    await set_activity(redis, driver_id, AVAILABLE)
    await _send_until(stream, driver_id, 11, (LAT, LNG), IDLE)
    assert _activities(stream) == [AVAILABLE, ON_RIDE, AVAILABLE, IDLE]
    await _end(stream)


async def test_watchers_starting_together_ask_the_driver_for_one_fix(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, redis: Redis
) -> None:
    driver_id = new_driver_id()
    stream = await _online(stub, keys, driver_id)
    watchers = [
        Messages(stub.WatchDriver(pb.WatchDriverRequest(driver_id=driver_id))) for _ in range(3)
    ]
    # Each watcher asked before its first message (the driver's current fix).
    for watcher in watchers:
        await watcher.next(timeout=10)
    await stream.wait_for(lambda: len(stream.fix_requests) == 1)
    # A later message on the same channel: every request before it has been handled.
    await set_activity(redis, driver_id, TO_PICKUP)
    await stream.wait_for(lambda: _activities(stream)[-1:] == [TO_PICKUP])
    assert len(stream.fix_requests) == 1
    assert "watching" in stream.fix_requests[0].reason
    for watcher in watchers:
        watcher.cancel()
    await _end(stream)


async def test_a_refused_watcher_asks_for_no_fix(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, redis: Redis
) -> None:
    driver_id = new_driver_id()
    stream = await _online(stub, keys, driver_id)
    stranger = bearer(token(keys, new_driver_id("rider"), Role.RIDER))
    call = stub.WatchDriver(pb.WatchDriverRequest(driver_id=driver_id), metadata=stranger)
    with pytest.raises(aio.AioRpcError) as refused:
        await call.read()
    assert status_of(refused.value) == grpc.StatusCode.PERMISSION_DENIED
    await set_activity(redis, driver_id, TO_PICKUP)
    await stream.wait_for(lambda: _activities(stream)[-1:] == [TO_PICKUP])
    assert stream.fix_requests == []
    await _end(stream)
