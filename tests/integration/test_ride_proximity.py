"""Ride proximity events against a real Redis: two RideService replicas share the ingest log, and
each event is logged once, in order, from the fixes of drivers with an active ride."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverLocation, LatLng
from services.domain.sampling import NEAR_PICKUP, TO_PICKUP
from services.live.activity import get_activity, set_activity
from services.live.events import ORIGIN, EventLog, LoggedEvent
from services.live.ingest import StreamId, parse_stream_id
from services.live.names import RIDES_GROUP, ingest_stream
from services.live.replies import text
from services.ops.mesh.redis_server import RedisServer
from services.ride.proximity import ProximityTracker, clear_target, set_target

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

REDIS_DB = 8
BASE_MS = 1_764_331_200_000
PICKUP = (41.7151, 44.8271)
DROP = (41.7300, 44.7900)
M = 1 / 111_195.0  # a metre of latitude in degrees


def north(metres: float, of: tuple[float, float] = PICKUP) -> tuple[float, float]:
    return of[0] + metres * M, of[1]


def ride(driver_id: str, state: int, auto_arrive: bool = False) -> pb.Ride:
    return pb.Ride(
        ride_id=f"r-{uuid.uuid4().hex[:8]}",
        driver_id=driver_id,
        state=state,  # type: ignore[arg-type]
        pickup=LatLng(latitude=PICKUP[0], longitude=PICKUP[1]),
        dropoff=LatLng(latitude=DROP[0], longitude=DROP[1]),
        auto_arrive=auto_arrive,
    )


def fix(driver_id: str, seq: int, point: tuple[float, float], speed: float) -> DriverLocation:
    location = DriverLocation(
        driver_id=driver_id,
        position=LatLng(latitude=point[0], longitude=point[1]),
        seq=seq,
        speed_mps=speed,
    )
    location.recorded_at.FromMilliseconds(BASE_MS + seq * 1000)
    return location


@pytest.fixture(scope="module")
async def redis_url(redis_server: RedisServer) -> str:
    url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    return url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class Arrivals:
    """Records auto-arrive calls, as RideService would turn them into DRIVER_ARRIVED."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    async def __call__(self, ride_id: str, driver_id: str, location: DriverLocation) -> None:
        self.calls.append((ride_id, driver_id, location.seq))


@pytest.fixture
async def arrivals() -> Arrivals:
    return Arrivals()


@pytest.fixture
async def trackers(redis_url: str, arrivals: Arrivals) -> AsyncIterator[list[ProximityTracker]]:
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    pair = [ProximityTracker(client, arrive=arrivals) for client in clients]
    for tracker in pair:
        await tracker.start()
    yield pair
    for tracker, client in zip(pair, clients, strict=True):
        await tracker.stop()
        await client.aclose()


async def handled(redis: Redis, entry: StreamId) -> bool:
    groups: Any = await redis.xinfo_groups(ingest_stream(0))
    group = next(g for g in groups if text(g["name"]) == RIDES_GROUP)
    return parse_stream_id(group["last-delivered-id"]) >= entry and group["pending"] == 0


async def send(redis: Redis, location: DriverLocation) -> None:
    """Enters a fix as LocationService does and waits until a replica handled it."""
    entry = parse_stream_id(await redis.xadd(ingest_stream(0), {"p": location.SerializeToString()}))
    async with asyncio.timeout(5.0):
        while not await handled(redis, entry):  # noqa: ASYNC110  (no event to wait on)
            await asyncio.sleep(0.005)


async def ride_events(redis: Redis, ride_id: str) -> list[LoggedEvent]:
    events = await EventLog(redis).after(0, ORIGIN, count=100_000)
    return [e for e in events if e.subject.get("id") == ride_id]


def kinds(events: list[LoggedEvent]) -> list[str]:
    return [e.kind for e in events]


async def test_a_pickup_approached_reached_and_left_is_three_events_once_each(
    trackers: list[ProximityTracker], redis: Redis, arrivals: Arrivals
) -> None:
    d = f"drv-{uuid.uuid4().hex[:8]}"
    assigned = ride(d, pb.RideState.RIDE_STATE_DRIVER_ASSIGNED)
    await set_target(redis, assigned)
    path = [(2000, 12.0), (900, 5.0), (480, 10.0), (300, 8.0), (520, 0.5), (120, 6.0)]
    path += [(40, 1.0), (30, 0.0), (35, 0.3), (120, 3.0), (140, 4.0), (400, 10.0)]
    for seq, (metres, speed) in enumerate(path, start=1):
        await send(redis, fix(d, seq, north(metres), speed))
    events = await ride_events(redis, assigned.ride_id)
    assert kinds(events) == ["ride.approaching_pickup", "ride.at_pickup", "ride.left_pickup"]
    assert [e.fix["t"] for e in events] == [BASE_MS + 3000, BASE_MS + 7000, BASE_MS + 12_000]
    assert events[1].subject["m"] == pytest.approx(40, abs=1)
    assert arrivals.calls == []  # not an auto-arrive ride

    # A fix sent again (a redelivery) or a stale one changes nothing.
    await send(redis, fix(d, 7, north(40), 1.0))
    await send(redis, fix(d, 2, north(10), 0.0))
    assert kinds(await ride_events(redis, assigned.ride_id)) == kinds(events)


async def test_auto_arrive_is_asked_once_and_the_dropoff_approach_follows_the_ride_state(
    trackers: list[ProximityTracker], redis: Redis, arrivals: Arrivals
) -> None:
    d = f"drv-{uuid.uuid4().hex[:8]}"
    assigned = ride(d, pb.RideState.RIDE_STATE_DRIVER_ASSIGNED, auto_arrive=True)
    await set_target(redis, assigned)
    for seq, metres in enumerate([300, 20, 10, 15], start=1):
        await send(redis, fix(d, seq, north(metres), 0.0))
    assert arrivals.calls == [(assigned.ride_id, d, 2)]

    riding = pb.Ride()
    riding.CopyFrom(assigned)
    riding.state = pb.RideState.RIDE_STATE_IN_PROGRESS
    await set_target(redis, riding)
    for seq, metres in enumerate([1500, 450, 300, 0], start=5):
        await send(redis, fix(d, seq, north(metres, DROP), 8.0))
    assert kinds(await ride_events(redis, assigned.ride_id)) == [
        "ride.approaching_pickup",
        "ride.at_pickup",
        "ride.approaching_dropoff",
    ]

    # Once the ride ended its target is gone: the driver's fixes raise nothing for it.
    riding.state = pb.RideState.RIDE_STATE_COMPLETED
    await clear_target(redis, riding)
    await send(redis, fix(d, 9, PICKUP, 0.0))
    assert len(await ride_events(redis, assigned.ride_id)) == 3


async def test_drivers_without_a_ride_cost_one_read_and_raise_nothing(
    trackers: list[ProximityTracker], redis: Redis
) -> None:
    before = await EventLog(redis).after(0, ORIGIN, count=100_000)
    d = f"drv-{uuid.uuid4().hex[:8]}"
    for seq in range(1, 4):
        await send(redis, fix(d, seq, PICKUP, 0.0))
    after = await EventLog(redis).after(0, ORIGIN, count=100_000)
    assert len(after) == len(before)


async def test_approaching_or_reaching_the_pickup_makes_the_driver_sample_as_near_it(
    trackers: list[ProximityTracker], redis: Redis
) -> None:
    approaching, already_there = (f"drv-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for d in (approaching, already_there):
        await set_target(redis, ride(d, pb.RideState.RIDE_STATE_DRIVER_ASSIGNED))
        await set_activity(redis, d, TO_PICKUP)
    await send(redis, fix(approaching, 1, north(2000), 12.0))
    assert await get_activity(redis, approaching) == TO_PICKUP
    await send(redis, fix(approaching, 2, north(450), 10.0))
    assert await get_activity(redis, approaching) == NEAR_PICKUP
    # At the pickup from the first fix: AT_PICKUP without an approach.
    await send(redis, fix(already_there, 1, north(20), 0.0))
    assert await get_activity(redis, already_there) == NEAR_PICKUP
