"""EstimateEta arithmetic and validation (the point-origin path needs no server)."""

from __future__ import annotations

import math

import pytest
from redis.asyncio import Redis

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1.common_pb2 import LatLng
from services.domain.errors import InvalidArgument
from services.domain.geodesy import EARTH_RADIUS_M
from services.domain.routing import GreatCircleRouter, LatLngLike, Route
from services.geo.eta import estimate_eta
from services.live.store import LiveStore
from services.server.config import Settings

ROUTER = GreatCircleRouter(detour_factor=1.5, default_speed_mps=10.0)
# One degree of longitude along the equator on our sphere.
DEGREE_M = math.pi * EARTH_RADIUS_M / 180


def unused_live() -> LiveStore:
    """A store that is never touched (the client connects lazily, and never here)."""
    return LiveStore(Redis(port=1), 300.0)


def point(lat: float, lng: float) -> LatLng:
    return LatLng(latitude=lat, longitude=lng)


async def test_distance_is_great_circle_times_the_detour_factor() -> None:
    route = await ROUTER.route(point(0, 0), point(0, 1))
    assert route.distance_m == pytest.approx(1.5 * DEGREE_M)
    assert route.duration_s == pytest.approx(1.5 * DEGREE_M / 10.0)
    assert (route.detour_factor, route.speed_mps) == (1.5, 10.0)
    assert route.method == pb.ETA_METHOD_GREAT_CIRCLE


async def test_the_short_way_round_across_the_antimeridian() -> None:
    route = await ROUTER.route(point(0, 179.5), point(0, -179.5))
    assert route.distance_m == pytest.approx(1.5 * DEGREE_M)


@pytest.mark.parametrize(
    ("hint", "used"),
    [
        (None, 10.0),
        (0.0, 10.0),
        (0.99, 10.0),
        (1.0, 1.0),
        (25.0, 25.0),
        (70.0, 70.0),
        (300.0, 10.0),
    ],
)
def test_the_hinted_speed_is_used_only_when_plausible(hint: float | None, used: float) -> None:
    assert ROUTER.speed_for(hint) == used


def test_router_from_settings_takes_the_stated_factor_and_speed() -> None:
    settings = Settings(redis_url="redis://x", database_url="postgresql://x")
    router = GreatCircleRouter.from_settings(settings)
    assert (router.detour_factor, router.default_speed_mps) == (1.3, 8.33)


@pytest.mark.parametrize(("factor", "speed"), [(0.9, 8.0), (1.3, 0.0), (1.3, -1.0)])
def test_router_rejects_impossible_settings(factor: float, speed: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        GreatCircleRouter(factor, speed)


async def test_estimate_from_a_point_fills_every_field() -> None:
    request = pb.EstimateEtaRequest(origin_position=point(0, 0), destination=point(1, 0))
    response = await estimate_eta(unused_live(), ROUTER, request)
    assert response.straight_line_distance_m == pytest.approx(DEGREE_M)
    assert response.distance_m == pytest.approx(1.5 * DEGREE_M)
    assert response.detour_factor == 1.5
    assert response.speed_mps == 10.0
    assert response.eta.ToNanoseconds() == round(1.5 * DEGREE_M / 10.0 * 1e9)
    assert response.method == pb.ETA_METHOD_GREAT_CIRCLE


async def test_same_point_is_a_zero_eta() -> None:
    request = pb.EstimateEtaRequest(origin_position=point(90, 0), destination=point(90, 120))
    response = await estimate_eta(unused_live(), ROUTER, request)
    assert response.distance_m == pytest.approx(0.0, abs=1e-6)
    assert response.eta.ToNanoseconds() == 0


class FakeEngine:
    """Stands in for OSRM: the seam passes its answer through untouched."""

    async def route(
        self, origin: LatLngLike, destination: LatLngLike, speed_hint_mps: float | None = None
    ) -> Route:
        return Route(5_000.0, 600.0, pb.ETA_METHOD_ROUTING_ENGINE, 2.0, 5_000.0 / 600.0)


async def test_a_routing_engine_plugs_in_through_the_router_seam() -> None:
    request = pb.EstimateEtaRequest(origin_position=point(0, 0), destination=point(0, 0.01))
    response = await estimate_eta(unused_live(), FakeEngine(), request)
    assert response.method == pb.ETA_METHOD_ROUTING_ENGINE
    assert (response.distance_m, response.eta.seconds, response.detour_factor) == (5000, 600, 2)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.EstimateEtaRequest(destination=point(0, 0)), "origin is required"),
        (pb.EstimateEtaRequest(origin_position=point(0, 0)), "destination is required"),
        (
            pb.EstimateEtaRequest(origin_position=point(95, 0), destination=point(0, 0)),
            "origin_position.latitude",
        ),
        (
            pb.EstimateEtaRequest(origin_position=point(0, 0), destination=point(0, math.nan)),
            "destination must be finite",
        ),
        (
            pb.EstimateEtaRequest(origin_position=point(0, 0), destination=point(0, -181)),
            "destination.longitude",
        ),
        (pb.EstimateEtaRequest(driver_id="", destination=point(0, 0)), "driver_id"),
    ],
)
async def test_invalid_requests_say_what_is_wrong(
    request_: pb.EstimateEtaRequest, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await estimate_eta(unused_live(), ROUTER, request_)
