"""GetSupplyHeatmap against a real Redis: per-cell counts equal a brute-force count."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncIterator

import h3
import pytest
from redis.asyncio import Redis

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1.common_pb2 import BoundingBox, DriverAvailability, LatLng
from services.domain.area import Box
from services.domain.errors import InvalidArgument
from services.geo.heatmap import supply_heatmap
from services.live.names import OPEN_REQUESTS_KEY, driver_key, geo_key
from services.live.store import LiveStore
from services.ops.mesh.redis_server import RedisServer
from tests.integration.geo_drivers import (
    LIVE_WINDOW_S,
    flushed_redis,
    ingest,
    set_availability,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

BUSY = DriverAvailability.DRIVER_AVAILABILITY_BUSY

Cells = dict[str, tuple[int, int]]


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with flushed_redis(redis_server) as client:
        yield client


@pytest.fixture
def live(redis: Redis) -> LiveStore:
    return LiveStore(redis, LIVE_WINDOW_S)


def bounds(south: float, west: float, north: float, east: float) -> BoundingBox:
    return BoundingBox(
        south_west=LatLng(latitude=south, longitude=west),
        north_east=LatLng(latitude=north, longitude=east),
    )


def around(rng: random.Random, box: Box, n: int, margin: float) -> list[tuple[float, float]]:
    """Points in the box widened by `margin` degrees (so some fall outside), wrapping at 180°."""
    points = []
    for _ in range(n):
        lat = min(90.0, max(-90.0, rng.uniform(box.south - margin, box.north + margin)))
        lng = box.west - margin + rng.uniform(0, box.lng_span() + 2 * margin)
        points.append((lat, (lng + 180.0) % 360.0 - 180.0))
    return points


async def populate(live: LiveStore, box: Box, now: float, seed: int) -> list[tuple[float, float]]:
    """Drivers of every kind around the box; returns the positions that should count."""
    rng = random.Random(seed)
    counted = []
    for i, (lat, lng) in enumerate(around(rng, box, 500, 0.05)):
        driver_id, kind = f"d{i}", rng.random()
        recorded = now - LIVE_WINDOW_S - 5 if kind < 0.1 else now - rng.uniform(0, 60)
        await ingest(live, driver_id, lat, lng, recorded)
        if 0.1 <= kind < 0.15:
            await live.redis.delete(driver_key(driver_id))
        elif 0.15 <= kind < 0.35:
            await set_availability(live.redis, driver_id, BUSY)
        elif kind >= 0.35 and box.contains(lat, lng):
            counted.append((lat, lng))
    return counted


async def add_requests(redis: Redis, box: Box, seed: int) -> list[tuple[float, float]]:
    """Open requests around the box (below the geo index's latitude limit); returns the
    positions the index holds for those inside."""
    rng = random.Random(seed)
    points = [(lat, lng) for lat, lng in around(rng, box, 200, 0.05) if abs(lat) < 85.0]
    for i, (lat, lng) in enumerate(points):
        await redis.geoadd(OPEN_REQUESTS_KEY, (lng, lat, f"ride{i}"))
    ids = [f"ride{i}" for i in range(len(points))]
    stored: list[tuple[float, float]] = await redis.geopos(OPEN_REQUESTS_KEY, *ids)  # type: ignore[assignment]
    return [(lat, lng) for lng, lat in stored if box.contains(lat, lng)]


def brute_force(
    drivers: list[tuple[float, float]], requests: list[tuple[float, float]], res: int
) -> Cells:
    d = Counter(h3.latlng_to_cell(lat, lng, res) for lat, lng in drivers)
    r = Counter(h3.latlng_to_cell(lat, lng, res) for lat, lng in requests)
    return {cell: (d[cell], r[cell]) for cell in d.keys() | r.keys()}


def as_cells(response: pb.GetSupplyHeatmapResponse) -> Cells:
    return {c.h3_cell: (c.available_drivers, c.open_requests) for c in response.cells}


BOXES = {
    "bengaluru": ((12.9, 77.5, 13.1, 77.7), (5, 7, 9)),
    "antimeridian": ((-1.0, 179.8, 1.0, -179.8), (3, 6, 8)),
    "north_pole": ((84.8, -180.0, 90.0, 180.0), (0, 2, 3)),
    "south_pole_wedge": ((-90.0, 100.0, -86.0, -170.0), (1, 3)),
}


@pytest.mark.parametrize("name", list(BOXES))
async def test_counts_equal_brute_force(live: LiveStore, name: str) -> None:
    corners, resolutions = BOXES[name]
    box = Box(*corners)
    now = time.time()
    drivers = await populate(live, box, now, seed=len(name))
    requests = await add_requests(live.redis, box, seed=len(name))
    assert drivers
    for res in resolutions:
        request = pb.GetSupplyHeatmapRequest(bounds=bounds(*corners), resolution=res)
        response = await supply_heatmap(live, request, now)
        assert response.resolution == res
        assert as_cells(response) == brute_force(drivers, requests, res)
        for cell in response.cells:
            lat, lng = h3.cell_to_latlng(cell.h3_cell)
            assert (cell.center.latitude, cell.center.longitude) == (lat, lng)
            assert cell.available_drivers or cell.open_requests


async def test_requests_alone_make_cells_and_stale_drivers_leave_the_index(
    live: LiveStore,
) -> None:
    now = time.time()
    await live.redis.geoadd(OPEN_REQUESTS_KEY, (77.6, 12.95, "ride1"))
    await ingest(live, "stale", 12.95, 77.6, now - LIVE_WINDOW_S - 1)
    request = pb.GetSupplyHeatmapRequest(bounds=bounds(12.9, 77.5, 13.0, 77.7), resolution=7)
    response = await supply_heatmap(live, request, now)
    ((cell, counts),) = as_cells(response).items()
    assert cell == h3.latlng_to_cell(12.95, 77.6, 7)
    assert counts == (0, 1)
    assert await live.redis.zscore(geo_key(0), "stale") is None


async def test_an_empty_box_has_no_cells(live: LiveStore) -> None:
    await ingest(live, "elsewhere", 48.85, 2.35, time.time())
    request = pb.GetSupplyHeatmapRequest(bounds=bounds(12.9, 77.5, 13.0, 77.7), resolution=9)
    assert not (await supply_heatmap(live, request)).cells


async def test_a_box_wider_than_half_the_world_finds_drivers_on_its_edges(
    live: LiveStore,
) -> None:
    """Past 180° of longitude the farthest point from the centre is mid-edge, not a corner."""
    now = time.time()
    await ingest(live, "west_edge", 0.0, -169.5, now)
    await ingest(live, "east_edge", 0.0, 169.5, now)
    request = pb.GetSupplyHeatmapRequest(bounds=bounds(-60.0, -170.0, 60.0, 170.0), resolution=0)
    response = await supply_heatmap(live, request, now)
    assert sum(c.available_drivers for c in response.cells) == 2


@pytest.mark.parametrize("resolution", [-1, 11, 15])
async def test_resolution_out_of_bounds_is_invalid(live: LiveStore, resolution: int) -> None:
    request = pb.GetSupplyHeatmapRequest(
        bounds=bounds(12.9, 77.5, 13.0, 77.7), resolution=resolution
    )
    with pytest.raises(InvalidArgument, match=r"resolution .*0 to 10"):
        await supply_heatmap(live, request)


async def test_a_box_too_large_for_its_resolution_is_invalid(live: LiveStore) -> None:
    request = pb.GetSupplyHeatmapRequest(bounds=bounds(12.0, 77.0, 14.0, 79.0), resolution=10)
    with pytest.raises(InvalidArgument, match=r"20,000 cells.*resolution 7 or coarser"):
        await supply_heatmap(live, request)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        (BoundingBox(), "bounds needs both"),
        (bounds(13.0, 77.5, 12.9, 77.7), "north of"),
        (bounds(12.9, 77.5, 91.0, 77.7), "latitude"),
    ],
)
async def test_bad_bounds_are_invalid(live: LiveStore, box: BoundingBox, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await supply_heatmap(live, pb.GetSupplyHeatmapRequest(bounds=box, resolution=5))
