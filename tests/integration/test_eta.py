"""EstimateEta from a driver's live position, read from a real Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1.common_pb2 import LatLng
from services.domain.errors import InvalidArgument, NotFound
from services.domain.geodesy import haversine_m
from services.domain.routing import GreatCircleRouter
from services.geo.eta import estimate_eta
from services.live.store import LiveStore
from services.ops.mesh.redis_server import RedisServer
from tests.integration.geo_drivers import LIVE_WINDOW_S, flushed_redis, ingest

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

ROUTER = GreatCircleRouter(detour_factor=1.3, default_speed_mps=8.0)
AIRPORT = LatLng(latitude=13.1986, longitude=77.7066)


@pytest.fixture
async def live(redis_server: RedisServer) -> AsyncIterator[LiveStore]:
    async with flushed_redis(redis_server) as redis:
        yield LiveStore(redis, LIVE_WINDOW_S)


def from_driver(driver_id: str) -> pb.EstimateEtaRequest:
    return pb.EstimateEtaRequest(driver_id=driver_id, destination=AIRPORT)


async def test_a_moving_driver_is_timed_at_their_own_speed(live: LiveStore) -> None:
    await ingest(live, "d1", 12.9716, 77.5946, time.time(), speed=12.5)
    response = await estimate_eta(live, ROUTER, from_driver("d1"))
    straight = haversine_m(12.9716, 77.5946, AIRPORT.latitude, AIRPORT.longitude)
    assert response.straight_line_distance_m == pytest.approx(straight)
    assert response.distance_m == pytest.approx(straight * 1.3)
    assert response.speed_mps == pytest.approx(12.5)
    assert response.eta.ToNanoseconds() / 1e9 == pytest.approx(straight * 1.3 / 12.5, abs=1e-6)
    assert response.method == pb.ETA_METHOD_GREAT_CIRCLE


async def test_a_stopped_driver_is_timed_at_the_default_speed(live: LiveStore) -> None:
    await ingest(live, "d2", 12.9716, 77.5946, time.time(), speed=0.0)
    response = await estimate_eta(live, ROUTER, from_driver("d2"))
    assert response.speed_mps == pytest.approx(8.0)


async def test_a_driver_without_a_live_fix_is_not_found(live: LiveStore) -> None:
    await ingest(live, "stale", 12.9716, 77.5946, time.time() - LIVE_WINDOW_S - 1, speed=10.0)
    with pytest.raises(NotFound, match="'stale' has no live position"):
        await estimate_eta(live, ROUTER, from_driver("stale"))
    with pytest.raises(NotFound, match="'nobody'"):
        await estimate_eta(live, ROUTER, from_driver("nobody"))


async def test_a_malformed_driver_id_is_invalid(live: LiveStore) -> None:
    with pytest.raises(InvalidArgument, match="driver_id"):
        await estimate_eta(live, ROUTER, from_driver("no spaces allowed"))
