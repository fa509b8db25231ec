"""WatchRide against real Redis (fan-out, live fixes) and PostgreSQL (the ride store)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from redis.asyncio import Redis

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverLocation, LatLng
from services.domain.errors import InvalidArgument, NotFound
from services.domain.routing import GreatCircleRouter
from services.history.store import create_engine
from services.live.events import EventFeed
from services.live.fanout import Hub
from services.live.names import driver_channel, ride_channel
from services.live.store import LiveStore
from services.ops.mesh.redis_server import RedisServer
from services.ride.proximity import ProximityTracker, set_target
from services.ride.publish import publish_ride
from services.ride.store import RideStore
from services.ride.watch import watch_ride
from tests.integration.geo_drivers import destination

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

REDIS_DB = 10
PICKUP = LatLng(latitude=52.520008, longitude=13.404954)
DROPOFF = LatLng(latitude=52.500000, longitude=13.300000)
ROUTER = GreatCircleRouter(detour_factor=1.3, default_speed_mps=8.0)
SPEED_MPS = 10.0
# How long a test waits for a response it expects before failing.
WAIT_S = 5.0
# How long a test lets the hub hand published messages to a watcher that is not reading.
SETTLE_S = 0.3

ALL_STATES: list[pb.RideState.ValueType] = [
    pb.RIDE_STATE_REQUESTED,
    pb.RIDE_STATE_DRIVER_ASSIGNED,
    pb.RIDE_STATE_DRIVER_ARRIVED,
    pb.RIDE_STATE_IN_PROGRESS,
    pb.RIDE_STATE_COMPLETED,
]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Mesh:
    """One replica's view of the world: the store, the live store and both hubs."""

    def __init__(self, store: RideStore, redis: Redis) -> None:
        self.store = store
        self.redis = redis
        self.live = LiveStore(redis, 300.0)
        self.rides: Hub[pb.Ride] = Hub(redis, pb.Ride.FromString)
        self.locations: Hub[DriverLocation] = Hub(redis, DriverLocation.FromString)

    def watch(self, ride_id: str) -> AsyncGenerator[pb.WatchRideResponse, None]:
        request = pb.WatchRideRequest(ride_id=ride_id)
        stream = watch_ride(self.store, self.rides, self.locations, self.live, ROUTER, request)
        # It is an async generator; tests close it as grpc does when a client goes away.
        return cast(AsyncGenerator[pb.WatchRideResponse, None], stream)

    async def publish(self, ride: pb.Ride) -> pb.Ride:
        await publish_ride(self.redis, ride)
        return ride

    async def fix(
        self,
        driver_id: str,
        seq: int,
        distance_m: float,
        to: LatLng = PICKUP,
        speed_mps: float = SPEED_MPS,
    ) -> None:
        """A fix `distance_m` due north of `to`, written as LocationService writes one."""
        lat, lng = destination(to.latitude, to.longitude, 0.0, distance_m)
        location = DriverLocation(driver_id=driver_id, seq=seq, speed_mps=speed_mps)
        location.position.latitude, location.position.longitude = lat, lng
        location.recorded_at.FromNanoseconds(time.time_ns())
        location.received_at.CopyFrom(location.recorded_at)
        await self.live.ingest(location, location.SerializeToString())

    async def requested(self) -> pb.Ride:
        ride, _ = await self.store.create(uid("rider"), PICKUP, DROPOFF, uid("req"))
        return ride

    async def offer(self, ride_id: str, driver_id: str) -> pb.Ride:
        deadline = datetime.now(UTC) + timedelta(minutes=5)
        await self.store.set_candidates(ride_id, [driver_id], deadline)
        ride, offered = await self.store.offer_next(ride_id, datetime.now(UTC), 30.0)
        assert offered == driver_id
        return await self.publish(ride)

    async def accept(self, ride_id: str, driver_id: str) -> pb.Ride:
        return await self.publish(await self.store.accept(ride_id, driver_id))

    async def assign(self, ride_id: str, driver_id: str) -> pb.Ride:
        await self.offer(ride_id, driver_id)
        return await self.accept(ride_id, driver_id)

    async def advance(self, ride_id: str, driver_id: str, state: pb.RideState.ValueType) -> pb.Ride:
        step = {
            pb.RIDE_STATE_DRIVER_ARRIVED: self.store.mark_arrived,
            pb.RIDE_STATE_IN_PROGRESS: self.store.start,
            pb.RIDE_STATE_COMPLETED: self.store.complete,
        }[state]
        return await self.publish(await step(ride_id, driver_id))


@pytest.fixture(scope="module")
async def mesh(redis_server: RedisServer, database_url: str) -> AsyncIterator[Mesh]:
    redis = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}")
    await redis.flushdb()
    store = RideStore(create_engine(database_url))
    mesh = Mesh(store, redis)
    await mesh.rides.start()
    await mesh.locations.start()
    yield mesh
    await mesh.rides.stop()
    await mesh.locations.stop()
    await store.dispose()
    await redis.aclose()


async def next_of(stream: AsyncIterator[pb.WatchRideResponse]) -> pb.WatchRideResponse:
    return await asyncio.wait_for(anext(stream), WAIT_S)


async def ended(stream: AsyncIterator[pb.WatchRideResponse]) -> bool:
    try:
        await asyncio.wait_for(anext(stream), WAIT_S)
    except StopAsyncIteration:
        return True
    return False


async def subscribed(redis: Redis, channel: str) -> None:
    """Waits until Redis has the hub's subscription, so a publish after this is delivered."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        [(_, count)] = await redis.pubsub_shardnumsub(channel)
        if count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nobody subscribed to {channel}")


def eta_s(response: pb.WatchRideResponse) -> float:
    assert response.HasField("eta")
    return response.eta.ToNanoseconds() / 1e9


async def test_a_watcher_gets_the_current_state_first(mesh: Mesh) -> None:
    ride = await mesh.requested()
    stream = mesh.watch(ride.ride_id)
    first = await next_of(stream)
    assert first.ride == ride
    assert not first.HasField("driver_location")
    assert not first.HasField("eta")
    await stream.aclose()


async def test_a_whole_ride_is_seen_in_order_with_etas_to_pickup_then_dropoff(
    mesh: Mesh,
) -> None:
    driver = uid("driver")
    await mesh.fix(driver, 1, 3000.0)
    ride = await mesh.requested()
    stream = mesh.watch(ride.ride_id)
    assert (await next_of(stream)).ride.state == pb.RIDE_STATE_REQUESTED
    await subscribed(mesh.redis, ride_channel(ride.ride_id))

    offered = await mesh.offer(ride.ride_id, driver)
    assert (await next_of(stream)).ride == offered

    await mesh.accept(ride.ride_id, driver)
    assigned = await next_of(stream)
    assert assigned.ride.state == pb.RIDE_STATE_DRIVER_ASSIGNED
    assert assigned.driver_location.seq == 1  # the last live fix, read at assignment
    etas = [eta_s(assigned)]
    distances = [assigned.eta_distance_m]
    assert distances[0] == pytest.approx(3000.0 * 1.3, rel=1e-3)
    assert etas[0] == pytest.approx(3000.0 * 1.3 / SPEED_MPS, rel=1e-3)

    await subscribed(mesh.redis, driver_channel(driver))
    for seq, metres in enumerate((2000.0, 1000.0, 200.0), start=2):
        await mesh.fix(driver, seq, metres)
        moved = await next_of(stream)
        assert moved.ride.state == pb.RIDE_STATE_DRIVER_ASSIGNED
        assert moved.driver_location.seq == seq
        assert moved.eta_distance_m == pytest.approx(metres * 1.3, rel=1e-3)
        etas.append(eta_s(moved))
        distances.append(moved.eta_distance_m)
    assert etas == sorted(etas, reverse=True)
    assert len(set(etas)) == len(etas)

    await mesh.advance(ride.ride_id, driver, pb.RIDE_STATE_DRIVER_ARRIVED)
    arrived = await next_of(stream)
    assert arrived.ride.state == pb.RIDE_STATE_DRIVER_ARRIVED
    assert arrived.driver_location.seq == 4
    assert not arrived.HasField("eta")  # at the pickup: no ETA until the ride starts

    await mesh.advance(ride.ride_id, driver, pb.RIDE_STATE_IN_PROGRESS)
    riding = await next_of(stream)
    assert riding.ride.state == pb.RIDE_STATE_IN_PROGRESS
    route = await ROUTER.route(riding.driver_location.position, DROPOFF, SPEED_MPS)
    assert riding.eta_distance_m == pytest.approx(route.distance_m)
    assert eta_s(riding) == pytest.approx(route.duration_s, abs=1e-6)

    await mesh.fix(driver, 5, 500.0, to=DROPOFF)
    closer = await next_of(stream)
    assert closer.driver_location.seq == 5
    assert eta_s(closer) < eta_s(riding)

    await mesh.advance(ride.ride_id, driver, pb.RIDE_STATE_COMPLETED)
    done = await next_of(stream)
    assert done.ride.state == pb.RIDE_STATE_COMPLETED
    assert not done.HasField("eta")
    assert await ended(stream)


async def test_a_late_watcher_gets_the_ride_with_the_driver_and_eta_at_once(mesh: Mesh) -> None:
    driver = uid("driver")
    ride = await mesh.requested()
    await mesh.assign(ride.ride_id, driver)
    await mesh.advance(ride.ride_id, driver, pb.RIDE_STATE_DRIVER_ARRIVED)
    await mesh.advance(ride.ride_id, driver, pb.RIDE_STATE_IN_PROGRESS)
    await mesh.fix(driver, 1, 4000.0, to=DROPOFF)

    stream = mesh.watch(ride.ride_id)
    first = await next_of(stream)
    await stream.aclose()
    assert first.ride.state == pb.RIDE_STATE_IN_PROGRESS
    assert first.driver_location.driver_id == driver
    assert first.eta_distance_m == pytest.approx(4000.0 * 1.3, rel=1e-3)
    assert eta_s(first) == pytest.approx(4000.0 * 1.3 / SPEED_MPS, rel=1e-3)


async def test_a_watcher_of_an_ended_ride_gets_the_end_state_and_the_stream_ends(
    mesh: Mesh,
) -> None:
    ride = await mesh.requested()
    cancelled = await mesh.store.cancel(
        ride.ride_id, pb.PARTY_RIDER, ride.rider_id, "changed plans"
    )
    stream = mesh.watch(ride.ride_id)
    first = await next_of(stream)
    assert first.ride.state == pb.RIDE_STATE_CANCELLED
    assert first.ride.end_reason == cancelled.end_reason
    assert await ended(stream)


async def test_a_cancellation_while_watching_ends_the_stream(mesh: Mesh) -> None:
    driver = uid("driver")
    ride = await mesh.requested()
    await mesh.assign(ride.ride_id, driver)
    stream = mesh.watch(ride.ride_id)
    assert (await next_of(stream)).ride.state == pb.RIDE_STATE_DRIVER_ASSIGNED
    await subscribed(mesh.redis, ride_channel(ride.ride_id))
    await mesh.publish(await mesh.store.cancel(ride.ride_id, pb.PARTY_DRIVER, driver, "flat tyre"))
    last = await next_of(stream)
    assert last.ride.state == pb.RIDE_STATE_CANCELLED
    assert last.ride.cancelled_by == pb.PARTY_DRIVER
    assert await ended(stream)


async def test_stale_and_repeated_snapshots_are_not_sent(mesh: Mesh) -> None:
    driver = uid("driver")
    ride = await mesh.requested()
    assigned = await mesh.assign(ride.ride_id, driver)
    arrived = await mesh.advance(ride.ride_id, driver, pb.RIDE_STATE_DRIVER_ARRIVED)
    stream = mesh.watch(ride.ride_id)
    assert (await next_of(stream)).ride == arrived
    await subscribed(mesh.redis, ride_channel(ride.ride_id))
    # Another replica's publish of an older change arrives late, and this one twice.
    await mesh.publish(assigned)
    await mesh.publish(arrived)
    await mesh.advance(ride.ride_id, driver, pb.RIDE_STATE_IN_PROGRESS)
    assert (await next_of(stream)).ride.state == pb.RIDE_STATE_IN_PROGRESS
    await stream.aclose()


async def test_watchers_starting_during_the_ride_miss_no_transition(mesh: Mesh) -> None:
    """Watchers subscribe while the ride moves on: each sees a contiguous tail of the states."""

    async def watch(ride_id: str) -> list[pb.RideState.ValueType]:
        return [r.ride.state async for r in mesh.watch(ride_id)]

    async def run_ride(ride_id: str, driver: str) -> list[pb.RideState.ValueType]:
        await mesh.assign(ride_id, driver)
        for state in ALL_STATES[2:]:
            await mesh.advance(ride_id, driver, state)
        return []

    for _ in range(5):
        ride = await mesh.requested()
        watchers = [watch(ride.ride_id) for _ in range(8)]
        results = await asyncio.wait_for(
            asyncio.gather(*watchers, run_ride(ride.ride_id, uid("driver"))), WAIT_S
        )
        for seen in results[:-1]:
            assert seen, "every watcher gets at least the current state"
            distinct = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
            assert distinct == ALL_STATES[ALL_STATES.index(distinct[0]) :]


async def test_a_slow_watcher_gets_every_transition_and_only_the_newest_position(
    mesh: Mesh,
) -> None:
    driver = uid("driver")
    ride = await mesh.requested()
    await mesh.fix(driver, 1, 3000.0)
    await mesh.assign(ride.ride_id, driver)
    stream = mesh.watch(ride.ride_id)
    assert (await next_of(stream)).driver_location.seq == 1
    await subscribed(mesh.redis, driver_channel(driver))
    await subscribed(mesh.redis, ride_channel(ride.ride_id))
    # The watcher reads nothing while the driver moves 30 times and the ride moves twice.
    for seq in range(2, 32):
        await mesh.fix(driver, seq, 3000.0 - seq * 90.0)
    await mesh.advance(ride.ride_id, driver, pb.RIDE_STATE_DRIVER_ARRIVED)
    await mesh.advance(ride.ride_id, driver, pb.RIDE_STATE_IN_PROGRESS)
    await asyncio.sleep(SETTLE_S)

    arrived, riding, moved = await next_of(stream), await next_of(stream), await next_of(stream)
    assert arrived.ride.state == pb.RIDE_STATE_DRIVER_ARRIVED
    assert riding.ride.state == pb.RIDE_STATE_IN_PROGRESS
    assert moved.ride.state == pb.RIDE_STATE_IN_PROGRESS
    assert moved.driver_location.seq == 31
    assert moved.HasField("eta")
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(SETTLE_S)
    assert not pending.done(), "the 29 older fixes were conflated away"
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await stream.aclose()


async def test_a_watcher_leaves_no_subscription_behind(mesh: Mesh) -> None:
    rides_before = mesh.rides.subscribed_channels()
    locations_before = mesh.locations.subscribed_channels()
    driver = uid("driver")
    ride = await mesh.requested()
    await mesh.assign(ride.ride_id, driver)

    stream = mesh.watch(ride.ride_id)
    await next_of(stream)
    assert mesh.rides.subscribed_channels() == rides_before + 1
    assert mesh.locations.subscribed_channels() == locations_before + 1
    await stream.aclose()  # the client went away
    assert mesh.rides.subscribed_channels() == rides_before
    assert mesh.locations.subscribed_channels() == locations_before

    stream = mesh.watch(ride.ride_id)
    await next_of(stream)
    await subscribed(mesh.redis, ride_channel(ride.ride_id))
    await mesh.publish(await mesh.store.cancel(ride.ride_id, pb.PARTY_RIDER, "", ""))
    assert (await next_of(stream)).ride.state == pb.RIDE_STATE_CANCELLED
    assert await ended(stream)
    assert mesh.rides.subscribed_channels() == rides_before
    assert mesh.locations.subscribed_channels() == locations_before


async def test_an_unknown_ride_is_not_found_and_an_empty_id_invalid(mesh: Mesh) -> None:
    before = mesh.rides.subscribed_channels()
    with pytest.raises(NotFound, match="r-nope"):
        await next_of(mesh.watch("r-nope"))
    with pytest.raises(InvalidArgument, match="ride_id is required"):
        await next_of(mesh.watch(""))
    with pytest.raises(InvalidArgument, match="ride_id"):
        await next_of(mesh.watch("no spaces allowed"))
    assert mesh.rides.subscribed_channels() == before


async def test_proximity_events_reach_the_watcher_with_the_ride_and_its_driver(mesh: Mesh) -> None:
    feed, tracker = EventFeed(mesh.redis), ProximityTracker(mesh.redis)
    await feed.start()
    await tracker.start()
    try:
        ride = await mesh.requested()
        driver_id = uid("drv")
        assigned = await mesh.assign(ride.ride_id, driver_id)
        await set_target(mesh.redis, assigned)
        request = pb.WatchRideRequest(ride_id=ride.ride_id)
        stream = watch_ride(
            mesh.store, mesh.rides, mesh.locations, mesh.live, ROUTER, request, events=feed
        )
        first = await anext(stream)
        assert first.ride.state == pb.RIDE_STATE_DRIVER_ASSIGNED
        assert not first.HasField("event")
        kinds = []
        async with asyncio.timeout(WAIT_S):
            for seq, metres in enumerate([450, 30, 400], start=1):
                await mesh.fix(driver_id, seq, metres, speed_mps=0.0 if metres < 50 else 8.0)
                while True:
                    response = await anext(stream)
                    if response.HasField("event"):
                        break
                assert response.ride.ride_id == ride.ride_id
                assert response.event.driver_id == driver_id
                kinds.append(response.event.kind)
        assert kinds == [
            pb.RIDE_EVENT_KIND_APPROACHING_PICKUP,
            pb.RIDE_EVENT_KIND_AT_PICKUP,
            pb.RIDE_EVENT_KIND_LEFT_PICKUP,
        ]
        await stream.aclose()  # type: ignore[attr-defined]
        assert feed.sinks == 0  # the watcher left no sink behind
    finally:
        await tracker.stop()
        await feed.stop()
