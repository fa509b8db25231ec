"""SearchNearbyDrivers against a real Redis: the answer equals a brute-force haversine search."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverAvailability, LatLng
from services.domain.errors import InvalidArgument
from services.domain.geodesy import haversine_m
from services.geo.nearby import search_nearby_drivers
from services.live.names import driver_key, geo_key, polar_key
from services.live.store import GEO_MAX_LAT, LiveStore
from services.ops.mesh.redis_server import RedisServer
from tests.integration.geo_drivers import (
    LIVE_WINDOW_S,
    destination,
    flushed_redis,
    ingest,
    scatter,
    set_availability,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

BUSY = DriverAvailability.DRIVER_AVAILABILITY_BUSY
AVAILABLE = DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE
UNSPECIFIED = DriverAvailability.DRIVER_AVAILABILITY_UNSPECIFIED


@dataclass
class Driver:
    lat: float
    lng: float
    recorded_s: float
    available: bool = True
    live: bool = True  # False: stale fix or expired hash


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with flushed_redis(redis_server) as client:
        yield client


@pytest.fixture
def live(redis: Redis) -> LiveStore:
    return LiveStore(redis, LIVE_WINDOW_S)


async def populate(
    live: LiveStore, points: list[tuple[float, float]], now: float, seed: int
) -> dict[str, Driver]:
    """Writes drivers at `points`: most live, some busy (by each encoding), some stale, some
    whose hash has expired (only the geo member is left)."""
    rng = random.Random(seed)
    drivers: dict[str, Driver] = {}
    for i, (lat, lng) in enumerate(points):
        driver_id = f"d{seed}-{i}"
        kind = rng.random()
        recorded = now - rng.uniform(0, 60)
        if kind < 0.1:
            recorded = now - LIVE_WINDOW_S - rng.uniform(1, 100)  # accepted late: stored, not live
        drivers[driver_id] = d = Driver(lat, lng, recorded, live=kind >= 0.1)
        await ingest(live, driver_id, lat, lng, recorded)
        if 0.1 <= kind < 0.15:
            await live.redis.delete(driver_key(driver_id))  # the hash expired
            d.live = False
        elif 0.15 <= kind < 0.35:
            await set_availability(live.redis, driver_id, BUSY)
            d.available = False
        elif 0.35 <= kind < 0.4:
            await set_availability(live.redis, driver_id, rng.choice([AVAILABLE, UNSPECIFIED]))
    return drivers


def brute_force(
    drivers: dict[str, Driver],
    lat: float,
    lng: float,
    radius_m: float,
    limit: int,
    available_only: bool,
) -> list[tuple[str, float]]:
    found = []
    for driver_id, d in drivers.items():
        if not d.live or (available_only and not d.available):
            continue
        distance = haversine_m(lat, lng, d.lat, d.lng)
        if distance <= radius_m:
            found.append((distance, driver_id))
    return [(driver_id, distance) for distance, driver_id in sorted(found)[:limit]]


async def search(
    live: LiveStore,
    lat: float,
    lng: float,
    radius_m: float,
    now: float,
    max_results: int = 0,
    available_only: bool = False,
) -> pb.SearchNearbyDriversResponse:
    request = pb.SearchNearbyDriversRequest(
        center=LatLng(latitude=lat, longitude=lng),
        radius_m=radius_m,
        max_results=max_results,
        available_only=available_only,
    )
    return await search_nearby_drivers(live, request, now)


async def assert_matches_brute_force(
    live: LiveStore,
    drivers: dict[str, Driver],
    lat: float,
    lng: float,
    radius_m: float,
    now: float,
    max_results: int,
    available_only: bool,
) -> list[str]:
    response = await search(live, lat, lng, radius_m, now, max_results, available_only)
    expected = brute_force(drivers, lat, lng, radius_m, max_results or 20, available_only)
    got = [(n.location.driver_id, n.distance_m) for n in response.drivers]
    assert [i for i, _ in got] == [i for i, _ in expected]
    for (_, distance), (_, want) in zip(got, expected, strict=True):
        assert abs(distance - want) <= 0.01
    return [i for i, _ in got]


def ring(lat: float, lng: float, radius_m: float) -> list[tuple[float, float]]:
    """Points a hair inside and outside the radius, where a sloppy index search loses them."""
    offsets = (-1.0, -0.05, 0.05, 1.0)
    return [
        destination(lat, lng, bearing, radius_m + offset)
        for bearing in range(0, 360, 15)
        for offset in offsets
    ]


CENTRES = {
    "bengaluru": (12.9716, 77.5946),
    "antimeridian": (-16.5, 179.99),
    "high_latitude": (84.9, 30.0),
    "beyond_index_limit": (85.3, -120.0),
    "polar": (89.5, 10.0),
    "south_pole": (-90.0, 0.0),
}


@pytest.mark.parametrize("name", list(CENTRES))
async def test_answers_equal_brute_force(live: LiveStore, name: str) -> None:
    lat, lng = CENTRES[name]
    now = time.time()
    rng = random.Random(name)
    radius_m = 30_000.0
    points = scatter(rng, lat, lng, 45_000.0, 400) + scatter(rng, lat, lng, 3_000.0, 60)
    points += ring(lat, lng, radius_m)
    drivers = await populate(live, points, now, seed=len(name))
    for max_results in (0, 7, 500):
        for available_only in (False, True):
            await assert_matches_brute_force(
                live, drivers, lat, lng, radius_m, now, max_results, available_only
            )
    small = await assert_matches_brute_force(live, drivers, lat, lng, 2_000.0, now, 500, False)
    assert len(small) > 10  # the dense cluster is within 3 km


async def test_antimeridian_neighbours_on_both_sides_are_found(live: LiveStore) -> None:
    now = time.time()
    drivers = {
        "east": (0.0, 179.995),  # about 555 m east of the centre
        "west": (0.0, -179.995),  # about 555 m further, across 180°
        "far_west": (0.0, -179.9),
    }
    for driver_id, (lat, lng) in drivers.items():
        await ingest(live, driver_id, lat, lng, now)
    response = await search(live, 0.0, 179.99, 2_000.0, now)
    assert [n.location.driver_id for n in response.drivers] == ["east", "west"]
    response = await search(live, 0.0, -180.0, 2_000.0, now)
    assert [n.location.driver_id for n in response.drivers] == ["east", "west"]


async def test_polar_drivers_are_merged_with_the_index(live: LiveStore) -> None:
    now = time.time()
    await ingest(live, "below", 84.95, 0.0, now)  # in the geo index
    await ingest(live, "above", 85.2, 0.0, now)  # in the polar set
    await ingest(live, "pole", 90.0, 0.0, now)
    assert await live.redis.zscore(polar_key(0), "above") is not None
    assert await live.redis.zscore(geo_key(0), "below") is not None
    response = await search(live, 85.06, 0.0, 20_000.0, now)
    assert [n.location.driver_id for n in response.drivers] == ["below", "above"]
    response = await search(live, 89.99, 0.0, 50_000.0, now)
    assert [n.location.driver_id for n in response.drivers] == ["pole"]
    assert abs(response.drivers[0].distance_m - haversine_m(89.99, 0, 90, 0)) < 0.01
    assert GEO_MAX_LAT < 85.2


async def test_a_centre_beyond_the_limit_orders_by_the_true_distance(live: LiveStore) -> None:
    """The index is queried from the limit below the centre: a driver farther from that proxy
    can be nearer the true centre, so the first ring is not enough to settle the answer."""
    now = time.time()
    south = destination(GEO_MAX_LAT, 0.0, 180.0, 20_000.0)  # ~48 km from the centre
    east = destination(GEO_MAX_LAT, 0.0, 90.0, 35_000.0)  # ~45 km from the centre
    await ingest(live, "south", *south, now)
    await ingest(live, "east", *east, now)
    assert haversine_m(85.3, 0.0, *east) < haversine_m(85.3, 0.0, *south) < 50_000.0
    response = await search(live, 85.3, 0.0, 50_000.0, now, max_results=1)
    assert [n.location.driver_id for n in response.drivers] == ["east"]


async def test_stale_and_expired_drivers_are_excluded_and_dropped_from_the_index(
    live: LiveStore,
) -> None:
    now = time.time()
    await ingest(live, "fresh", 12.97, 77.59, now - 5)
    await ingest(live, "stale", 12.97, 77.591, now - LIVE_WINDOW_S - 1)
    await ingest(live, "expired", 12.97, 77.592, now - 5)
    await live.redis.delete(driver_key("expired"))
    await ingest(live, "polar_stale", 86.0, 0.0, now - LIVE_WINDOW_S - 1)
    response = await search(live, 12.97, 77.59, 1_000.0, now)
    assert [n.location.driver_id for n in response.drivers] == ["fresh"]
    members = set(await live.redis.zrange(geo_key(0), 0, -1))
    assert members == {b"fresh"}  # the dead members were removed on the way
    await search(live, 86.0, 0.0, 1_000.0, now)
    assert await live.redis.zcard(polar_key(0)) == 0


async def test_a_dead_member_revived_before_cleanup_is_kept(live: LiveStore) -> None:
    now = time.time()
    await ingest(live, "back", 12.97, 77.59, now - LIVE_WINDOW_S - 1)
    # The driver sends a fresh fix after the search read the stale one: cleanup re-checks.
    await ingest(live, "back", 12.97, 77.59, now)
    assert await live.forget_dead(["back"], now) == 0
    assert await live.redis.zscore(geo_key(0), "back") is not None
    assert await live.forget_dead(["back"], now + LIVE_WINDOW_S + 1) == 1


async def test_result_carries_fix_age_and_current_availability(live: LiveStore) -> None:
    now = time.time()
    sent = await ingest(live, "d1", 12.97, 77.59, now - 42.5, speed=7.0)
    await set_availability(live.redis, "d1", BUSY)
    response = await search(live, 12.97, 77.59, 100.0, now)
    (nearby,) = response.drivers
    assert nearby.location.driver_id == "d1"
    assert nearby.location.position == sent.position
    assert nearby.location.speed_mps == pytest.approx(7.0)
    assert nearby.location.availability == BUSY
    assert nearby.age.ToNanoseconds() == pytest.approx(42.5e9, abs=2e6)
    assert nearby.distance_m == pytest.approx(0.0, abs=1e-6)
    assert not (await search(live, 12.97, 77.59, 100.0, now, available_only=True)).drivers


async def test_busy_nearest_drivers_do_not_crowd_out_available_ones(live: LiveStore) -> None:
    """More busy drivers sit nearer than the first over-fetch reaches: the search widens."""
    now = time.time()
    rng = random.Random(7)
    drivers: dict[str, Driver] = {}
    for i, (lat, lng) in enumerate(scatter(rng, 12.97, 77.59, 500.0, 300)):
        drivers[f"busy{i}"] = Driver(lat, lng, now, available=False)
        await ingest(live, f"busy{i}", lat, lng, now)
        await set_availability(live.redis, f"busy{i}", BUSY)
    for i, (lat, lng) in enumerate(scatter(rng, 12.97, 77.59, 5_000.0, 300)):
        drivers[f"free{i}"] = Driver(lat, lng, now)
        await ingest(live, f"free{i}", lat, lng, now)
    for limit in (1, 20, 100):
        ids = await assert_matches_brute_force(
            live, drivers, 12.97, 77.59, 5_000.0, now, limit, True
        )
        assert len(ids) == limit
    stale_now = now + LIVE_WINDOW_S + 1  # every fix is stale: nothing is answered
    assert not (await search(live, 12.97, 77.59, 5_000.0, stale_now, 500)).drivers


@pytest.mark.parametrize(
    ("radius_m", "bound"),
    [(0.0, "50000"), (-5.0, "50000"), (50_000.5, "50000"), (float("nan"), "50000")],
)
async def test_radius_out_of_bounds_is_invalid(
    live: LiveStore, radius_m: float, bound: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"radius_m .*{bound}"):
        await search(live, 12.97, 77.59, radius_m, time.time())


@pytest.mark.parametrize("max_results", [-1, 501, 10_000])
async def test_max_results_out_of_bounds_is_invalid(live: LiveStore, max_results: int) -> None:
    with pytest.raises(InvalidArgument, match=r"max_results .*500"):
        await search(live, 12.97, 77.59, 1_000.0, time.time(), max_results)


@pytest.mark.parametrize(
    ("lat", "lng", "message"),
    [(91.0, 0.0, "latitude"), (0.0, 180.5, "longitude"), (float("inf"), 0.0, "finite")],
)
async def test_center_out_of_range_is_invalid(
    live: LiveStore, lat: float, lng: float, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"center.*{message}"):
        await search(live, lat, lng, 1_000.0, time.time())


async def test_center_is_required(live: LiveStore) -> None:
    request = pb.SearchNearbyDriversRequest(radius_m=1_000.0)
    with pytest.raises(InvalidArgument, match="center is required"):
        await search_nearby_drivers(live, request, time.time())
