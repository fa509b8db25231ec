"""Nearby search arithmetic: bounds, the geo-index query circle and its guarantees (pure)."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ridemesh.v1.common_pb2 import DriverLocation
from services.domain.errors import InvalidArgument
from services.domain.geodesy import EARTH_RADIUS_M, haversine_m
from services.geo.nearby import (
    DEFAULT_MAX_RESULTS,
    INDEX_SLACK_M,
    MAX_RADIUS_M,
    REDIS_EARTH_RADIUS_M,
    SPHERE_RATIO,
    Found,
    _settled,
    check_max_results,
    check_radius,
    index_circle,
    reaches_polar,
)
from services.live.store import GEO_MAX_LAT

latitudes = st.floats(-90.0, 90.0)
longitudes = st.floats(-180.0, 180.0)
radii = st.floats(1.0, MAX_RADIUS_M)


def redis_distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """What Redis reports: the same haversine angle on its own sphere."""
    return haversine_m(lat1, lng1, lat2, lng2) / EARTH_RADIUS_M * REDIS_EARTH_RADIUS_M


@pytest.mark.parametrize("radius", [1e-9, 1.0, 50_000.0])
def test_radius_within_bounds_is_kept(radius: float) -> None:
    assert check_radius(radius) == radius


@pytest.mark.parametrize("radius", [0.0, -1.0, 50_000.001, math.inf, math.nan])
def test_radius_out_of_bounds_names_the_bound(radius: float) -> None:
    with pytest.raises(InvalidArgument, match="radius_m must be greater than 0 and at most 50000"):
        check_radius(radius)


def test_max_results_zero_means_the_default() -> None:
    assert check_max_results(0) == DEFAULT_MAX_RESULTS == 20
    assert check_max_results(1) == 1
    assert check_max_results(500) == 500


@pytest.mark.parametrize("max_results", [-1, 501])
def test_max_results_out_of_bounds_names_the_bound(max_results: int) -> None:
    with pytest.raises(InvalidArgument, match="between 1 and 500"):
        check_max_results(max_results)


def test_redis_metres_are_longer_than_ours() -> None:
    assert pytest.approx(1.000281, abs=1e-6) == SPHERE_RATIO


def test_an_ordinary_circle_is_padded_for_the_redis_sphere() -> None:
    circle = index_circle(12.97, 77.59, 10_000.0)
    assert circle is not None
    assert (circle.latitude, circle.longitude, circle.offset_m) == (12.97, 77.59, 0.0)
    assert circle.redis_radius_m == pytest.approx((10_000.0 + INDEX_SLACK_M) * SPHERE_RATIO)


def test_a_centre_beyond_the_index_limit_moves_to_the_limit() -> None:
    circle = index_circle(85.3, 10.0, 50_000.0)
    assert circle is not None
    assert circle.latitude == GEO_MAX_LAT
    assert circle.offset_m == pytest.approx(haversine_m(85.3, 10.0, GEO_MAX_LAT, 10.0))


def test_a_circle_wholly_beyond_the_index_limit_needs_no_index_query() -> None:
    assert index_circle(89.5, 10.0, 50_000.0) is None
    assert index_circle(-90.0, 0.0, 50_000.0) is None


@given(latitudes, longitudes, radii, st.floats(-GEO_MAX_LAT, GEO_MAX_LAT), longitudes)
@example(85.3, 0.0, 50_000.0, GEO_MAX_LAT, 180.0)  # across the pole from a moved centre
@example(-85.2, 10.0, 20_000.0, -GEO_MAX_LAT, 10.1)
def test_the_index_query_covers_the_circle(
    lat: float, lng: float, radius: float, plat: float, plng: float
) -> None:
    """Every indexable point inside the circle is inside the query Redis runs, and the lower
    bound never exceeds a point's true distance (so the early stop is safe)."""
    circle = index_circle(lat, lng, radius)
    distance = haversine_m(lat, lng, plat, plng)
    if circle is None:
        assert distance > radius
        return
    query = redis_distance_m(circle.latitude, circle.longitude, plat, plng)
    if distance <= radius:
        assert query <= circle.redis_radius_m - INDEX_SLACK_M
    assert circle.lower_bound_m(query) <= distance + 1e-6


@given(latitudes, longitudes, radii, st.floats(0, 360), st.floats(0, 1))
def test_reaches_polar_whenever_a_point_of_the_circle_is_beyond_the_limit(
    lat: float, lng: float, radius: float, bearing: float, fraction: float
) -> None:
    phi1, delta = math.radians(lat), radius * fraction / EARTH_RADIUS_M
    theta = math.radians(bearing)
    sin_phi2 = math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    if abs(math.degrees(math.asin(max(-1.0, min(1.0, sin_phi2))))) > GEO_MAX_LAT:
        assert reaches_polar(lat, radius)


def test_reaches_polar_exactly_at_the_limit() -> None:
    reach = math.degrees(20_000.0 / EARTH_RADIUS_M)
    assert reaches_polar(GEO_MAX_LAT - reach + 1e-6, 20_000.0)
    assert not reaches_polar(GEO_MAX_LAT - reach - 1e-6, 20_000.0)
    assert reaches_polar(-GEO_MAX_LAT + reach - 1e-6, 20_000.0)
    assert not reaches_polar(0.0, MAX_RADIUS_M)


def _found(*distances: float) -> list[Found]:
    return [Found(d, f"d{i}", DriverLocation()) for i, d in enumerate(distances)]


def test_settled_needs_enough_drivers_no_farther_than_the_floor() -> None:
    assert _settled(_found(1, 2, 3), floor_m=3.0, limit=3)
    assert not _settled(_found(1, 2, 3.5), floor_m=3.0, limit=3)
    assert not _settled(_found(1, 2), floor_m=10.0, limit=3)
