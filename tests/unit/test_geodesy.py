"""Great-circle distances and longitude wrapping, checked against known distances."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.domain.geodesy import EARTH_RADIUS_M, haversine_m, normalize_lng

LATS = st.floats(-90, 90)
LNGS = st.floats(-180, 180)


def test_same_point_is_zero() -> None:
    assert haversine_m(52.52, 13.405, 52.52, 13.405) == 0.0


def test_one_degree_of_latitude() -> None:
    assert haversine_m(0, 0, 1, 0) == pytest.approx(111_195, abs=1)
    assert haversine_m(45, 30, 46, 30) == pytest.approx(111_195, abs=1)


def test_one_degree_of_longitude_shrinks_with_latitude() -> None:
    assert haversine_m(0, 0, 0, 1) == pytest.approx(111_195, abs=1)
    assert haversine_m(60, 0, 60, 1) == pytest.approx(55_597, rel=1e-3)


def test_london_to_paris() -> None:
    london, paris = (51.5074, -0.1278), (48.8566, 2.3522)
    assert haversine_m(*london, *paris) == pytest.approx(343_500, rel=0.005)


def test_neighbours_across_the_antimeridian_are_close() -> None:
    assert haversine_m(0, 179.9, 0, -179.9) == pytest.approx(22_239, rel=1e-3)
    assert haversine_m(0, 180, 0, -180) == pytest.approx(0, abs=1e-6)


def test_pole_to_pole() -> None:
    assert haversine_m(90, 0, -90, 0) == pytest.approx(20_015_086, rel=1e-4)
    assert haversine_m(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_M)


def test_longitude_does_not_matter_at_a_pole() -> None:
    assert haversine_m(90, 0, 90, 123) == pytest.approx(0, abs=1e-6)
    assert haversine_m(90, -45, 0, 0) == pytest.approx(haversine_m(90, 170, 0, 0))


def test_antipodes_are_half_the_circumference() -> None:
    assert haversine_m(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_M)
    assert haversine_m(30, 40, -30, -140) == pytest.approx(math.pi * EARTH_RADIUS_M)


@given(LATS, LNGS, LATS, LNGS)
def test_distance_is_symmetric_and_bounded(a: float, b: float, c: float, d: float) -> None:
    there = haversine_m(a, b, c, d)
    assert there == pytest.approx(haversine_m(c, d, a, b), abs=1e-6)
    assert 0.0 <= there <= math.pi * EARTH_RADIUS_M + 1e-6


@pytest.mark.parametrize(
    ("lng", "wrapped"),
    [
        (0.0, 0.0),
        (179.5, 179.5),
        (-180.0, -180.0),
        (180.0, -180.0),
        (181.0, -179.0),
        (-181.0, 179.0),
        (360.0, 0.0),
        (540.0, -180.0),
        (-540.0, -180.0),
        (725.0, 5.0),
    ],
)
def test_normalize_lng(lng: float, wrapped: float) -> None:
    assert normalize_lng(lng) == pytest.approx(wrapped)


@given(st.floats(-1e6, 1e6))
def test_normalize_lng_lands_in_range_and_keeps_the_meridian(lng: float) -> None:
    wrapped = normalize_lng(lng)
    assert -180.0 <= wrapped < 180.0
    assert haversine_m(0, lng, 0, wrapped) == pytest.approx(0, abs=1e-3)


def test_a_longitude_a_hair_below_minus_180_wraps_into_range() -> None:
    # round(-180 / step) * step can land a hair below -180; the modulo then rounds to 360.0.
    wrapped = normalize_lng(-180.00000000000003)
    assert -180.0 <= wrapped < 180.0
    assert wrapped == -180.0
