"""A driver's activity in real Redis: one script writes it and tells the driver's stream, only on
a change, only from the activities allowed; the ride's moves and proximity set it; with Redis
away, steering gives the default and fails nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.location_service_pb2 import StreamLocationsResponse
from services.domain.sampling import (
    AVAILABLE,
    IDLE,
    NEAR_PICKUP,
    ON_RIDE,
    TO_PICKUP,
    SamplingPolicy,
)
from services.domain.validation import FixLimits
from services.live.activity import UNSPECIFIED, get_activity, request_fix, set_activity
from services.live.names import control_channel, driver_key
from services.location.session import DriverSession
from services.location.steering import Steering
from services.location.streams import DriverStream
from services.location.throttle import TokenBucket
from services.ops.mesh.ports import free_port
from services.ops.mesh.redis_server import RedisServer
from services.ride.steering import approaching_pickup, follow_ride
from tests.e2e.clients import fix, new_driver_id
from tests.integration.dispatch_harness import redis_url

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url(redis_server))
    yield client
    await client.aclose()


@pytest.fixture
async def driver(redis: Redis) -> AsyncIterator[tuple[str, PubSub]]:
    """A new driver id and a subscription to its control channel, as its stream would hold."""
    driver_id = new_driver_id()
    pubsub = redis.pubsub()
    await pubsub.ssubscribe(control_channel(driver_id))
    await pubsub.get_message(timeout=5)  # the subscription's confirmation
    yield driver_id, pubsub
    await pubsub.aclose()


async def _published(pubsub: PubSub) -> StreamLocationsResponse:
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    assert message is not None, "nothing was published"
    return StreamLocationsResponse.FromString(message["data"])


async def test_a_change_is_stored_and_announced_as_the_activity_alone(
    redis: Redis, driver: tuple[str, PubSub]
) -> None:
    driver_id, pubsub = driver
    assert await get_activity(redis, driver_id) == UNSPECIFIED
    assert await set_activity(redis, driver_id, TO_PICKUP, live_window_s=300.0) == 1
    assert await get_activity(redis, driver_id) == TO_PICKUP
    message = await _published(pubsub)
    assert message.WhichOneof("kind") == "sampling_hint"
    assert message.sampling_hint.activity == TO_PICKUP
    assert not message.sampling_hint.HasField("interval")  # the stream fills it in
    # A hash the script created expires with the live window, like one a fix created.
    assert 0 < await redis.pttl(driver_key(driver_id)) <= 300_000


async def test_the_same_activity_again_announces_nothing(
    redis: Redis, driver: tuple[str, PubSub]
) -> None:
    driver_id, pubsub = driver
    await set_activity(redis, driver_id, ON_RIDE)
    assert await set_activity(redis, driver_id, ON_RIDE) == 0
    await set_activity(redis, driver_id, AVAILABLE)
    first, second = await _published(pubsub), await _published(pubsub)
    assert [first.sampling_hint.activity, second.sampling_hint.activity] == [ON_RIDE, AVAILABLE]


async def test_a_change_from_an_activity_not_allowed_is_refused(
    redis: Redis, driver: tuple[str, PubSub]
) -> None:
    driver_id, _ = driver
    await set_activity(redis, driver_id, ON_RIDE)
    assert await set_activity(redis, driver_id, IDLE, only_from=(AVAILABLE, UNSPECIFIED)) == -1
    assert await get_activity(redis, driver_id) == ON_RIDE
    # An approach event that comes after the ride ended leaves the driver available.
    await set_activity(redis, driver_id, AVAILABLE)
    await approaching_pickup(redis, driver_id)
    assert await get_activity(redis, driver_id) == AVAILABLE


async def test_a_fix_keeps_its_ttl_and_an_unreadable_value_counts_as_unknown(
    redis: Redis, driver: tuple[str, PubSub]
) -> None:
    driver_id, _ = driver
    await redis.hset(driver_key(driver_id), "v", "not a number")
    await redis.expire(driver_key(driver_id), 1000)
    assert await get_activity(redis, driver_id) == UNSPECIFIED
    await set_activity(redis, driver_id, AVAILABLE, live_window_s=5.0)
    assert await redis.ttl(driver_key(driver_id)) > 900


async def test_a_ride_sets_its_drivers_activity_state_by_state(
    redis: Redis, driver: tuple[str, PubSub]
) -> None:
    driver_id, _ = driver
    seen = []
    for state in (
        pb.RIDE_STATE_REQUESTED,
        pb.RIDE_STATE_DRIVER_ASSIGNED,
        pb.RIDE_STATE_DRIVER_ARRIVED,
        pb.RIDE_STATE_IN_PROGRESS,
        pb.RIDE_STATE_CANCELLED,
    ):
        await follow_ride(redis, pb.Ride(driver_id=driver_id, state=state), 300.0)
        seen.append(await get_activity(redis, driver_id))
    assert seen == [UNSPECIFIED, TO_PICKUP, NEAR_PICKUP, ON_RIDE, AVAILABLE]


async def test_a_fix_request_goes_to_the_drivers_control_channel(
    redis: Redis, driver: tuple[str, PubSub]
) -> None:
    driver_id, pubsub = driver
    await request_fix(redis, driver_id, "ops is looking")
    message = await _published(pubsub)
    assert message.fix_request.reason == "ops is looking"


async def test_with_redis_away_the_app_gets_the_default_hint_and_nothing_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on this port: every Redis call fails as with Redis down.
    away = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    steering = Steering(away, SamplingPolicy(idle_radius_m=30.0, idle_after_s=1e-9), 300.0)
    stream = DriverStream(DriverSession(FixLimits(), TokenBucket(10.0, 10)))
    stream.session.bind("d-away", 0)
    steering.attach(stream)
    await steering.bound(stream, "d-away")
    (hint,) = stream.outgoing()
    assert hint.sampling_hint.activity == AVAILABLE
    # Idle at once (idle_after_s ~0), but the change cannot be stored: logged, the stream goes on.
    await steering.fixed(stream, fix("d-away", 1))
    await steering.fixed(stream, fix("d-away", 2))
    assert stream.outgoing() == []
    await steering.watching("d-away", "ops is looking")
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for what in ("read the activity of", "store the activity of", "ask for a fix of"):
        assert any(what in line and "Redis" in line for line in logged), (what, logged)
    await away.aclose()
