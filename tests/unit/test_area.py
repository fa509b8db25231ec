"""Bounding boxes (incl. across the antimeridian and at the poles) and the 1° cells they touch."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ridemesh.v1.common_pb2 import BoundingBox, LatLng
from services.domain.area import Box, cell_of, cells_for_box
from services.domain.errors import InvalidArgument
from services.domain.geodesy import haversine_m

HALF_CIRCUMFERENCE_M = math.pi * 6_371_008.8


def _bounds(south: float, west: float, north: float, east: float) -> BoundingBox:
    return BoundingBox(
        south_west=LatLng(latitude=south, longitude=west),
        north_east=LatLng(latitude=north, longitude=east),
    )


# --- from_proto ------------------------------------------------------------------------------


def test_from_proto_keeps_the_corners() -> None:
    assert Box.from_proto(_bounds(52.3, 13.1, 52.7, 13.8)) == Box(52.3, 13.1, 52.7, 13.8)


def test_from_proto_accepts_an_antimeridian_box_and_the_whole_globe() -> None:
    assert Box.from_proto(_bounds(-10, 170, 10, -170)).crosses_antimeridian
    whole = Box.from_proto(_bounds(-90, -180, 90, 180))
    assert not whole.crosses_antimeridian


@pytest.mark.parametrize("missing", ["south_west", "north_east"])
def test_from_proto_needs_both_corners(missing: str) -> None:
    bounds = _bounds(0, 0, 1, 1)
    bounds.ClearField(missing)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="needs both south_west and north_east"):
        Box.from_proto(bounds)


def test_from_proto_needs_corners_even_when_empty() -> None:
    with pytest.raises(InvalidArgument, match="needs both"):
        Box.from_proto(BoundingBox())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("index", range(4))
def test_from_proto_rejects_non_finite_corners(index: int, bad: float) -> None:
    values = [0.0, 0.0, 1.0, 1.0]
    values[index] = bad
    with pytest.raises(InvalidArgument, match="must be finite"):
        Box.from_proto(_bounds(*values))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((-90.5, 0, 1, 1), "latitude must be between -90 and 90, got -90.5"),
        ((0, 0, 90.5, 1), "latitude must be between -90 and 90, got 90.5"),
        ((0, -180.5, 1, 1), "longitude must be between -180 and 180, got -180.5"),
        ((0, 0, 1, 181), "longitude must be between -180 and 180, got 181"),
    ],
)
def test_from_proto_rejects_out_of_range_corners(
    values: tuple[float, float, float, float], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        Box.from_proto(_bounds(*values))


def test_from_proto_rejects_south_above_north() -> None:
    message = r"south_west latitude 10\.0 is north of north_east 5"
    with pytest.raises(InvalidArgument, match=message):
        Box.from_proto(_bounds(10, 0, 5, 1))


def test_from_proto_accepts_a_zero_height_box() -> None:
    assert Box.from_proto(_bounds(5, 0, 5, 1)) == Box(5, 0, 5, 1)


# --- contains --------------------------------------------------------------------------------


def test_contains_a_plain_box_inclusive_of_edges() -> None:
    box = Box(10, 20, 30, 40)
    for lat, lng in [(20.0, 30.0), (10.0, 20.0), (30.0, 40.0), (10.0, 40.0)]:
        assert box.contains(lat, lng)
    for lat, lng in [(9.99, 30.0), (30.01, 30.0), (20.0, 19.99), (20.0, 40.01), (20.0, -30.0)]:
        assert not box.contains(lat, lng)


def test_contains_across_the_antimeridian() -> None:
    box = Box(-10, 170, 10, -170)
    for lng in (170.0, 175.0, 180.0, -180.0, -175.0, -170.0):
        assert box.contains(0, lng)
    for lng in (169.9, -169.9, 0.0, 90.0, -90.0):
        assert not box.contains(0, lng)
    assert not box.contains(11, 180)


def test_contains_the_poles() -> None:
    arctic = Box(80, -180, 90, 180)
    assert arctic.contains(90, 0)
    assert arctic.contains(90, -180)
    assert not arctic.contains(79.9, 0)
    antarctic = Box(-90, -180, -80, 180)
    assert antarctic.contains(-90, 123)
    assert not antarctic.contains(90, 123)


# --- center and covering radius --------------------------------------------------------------


def test_center_of_a_plain_box() -> None:
    assert Box(10, 20, 30, 40).center() == (20, 30)


def test_center_of_an_antimeridian_box_is_on_the_antimeridian() -> None:
    lat, lng = Box(-10, 170, 10, -170).center()
    assert lat == 0
    assert abs(abs(lng) - 180.0) < 1e-9
    assert -180.0 <= lng < 180.0


def test_center_of_an_uneven_antimeridian_box() -> None:
    _, lng = Box(0, 160, 1, -170).center()  # spans 30°, centre 15° east of 160
    assert lng == pytest.approx(175.0)
    _, lng = Box(0, 170, 1, -150).center()  # centre 20° east of 170
    assert lng == pytest.approx(-170.0)


def test_lng_span() -> None:
    assert Box(0, 20, 1, 40).lng_span() == 20
    assert Box(0, 170, 1, -170).lng_span() == 20
    assert Box(0, -180, 1, 180).lng_span() == 360


def _assert_covers(box: Box, steps: int = 12) -> float:
    radius = box.covering_radius_m()
    clat, clng = box.center()
    span = box.lng_span()
    for i in range(steps + 1):
        lat = box.south + (box.north - box.south) * i / steps
        for j in range(steps + 1):
            lng = box.west + span * j / steps
            distance = haversine_m(clat, clng, lat, lng)
            assert distance <= radius, (lat, lng, distance, radius)
    return radius


def test_covering_radius_holds_every_corner_of_a_small_box() -> None:
    box = Box(52.3, 13.1, 52.7, 13.8)
    radius = _assert_covers(box)
    clat, clng = box.center()
    farthest = max(haversine_m(clat, clng, la, lo) for la in (52.3, 52.7) for lo in (13.1, 13.8))
    assert farthest <= radius <= farthest + 2.0  # tight: not a lazy huge radius


def test_covering_radius_across_the_antimeridian_is_small() -> None:
    box = Box(-1, 179, 1, -179)
    radius = _assert_covers(box)
    assert radius < 200_000  # ~157 km diagonal half; not the ~20,000 km the wrong way round


def test_covering_radius_near_a_pole_covers_the_pole() -> None:
    box = Box(80, -10, 90, 10)
    _assert_covers(box)
    clat, clng = box.center()
    assert haversine_m(clat, clng, 90, 0) <= box.covering_radius_m()


def test_covering_radius_of_a_wide_box_covers_the_far_parallel_midpoints() -> None:
    # 120° wide at high latitude: the top edge bulges poleward, its middle is not a corner.
    _assert_covers(Box(60, -60, 70, 60))


def test_covering_radius_of_a_box_wider_than_a_hemisphere() -> None:
    # Centre (0, 0); the point (0, 180) on the box's edge is its antipode, 20,015 km away.
    box = Box(-10, -180, 10, 180)
    assert box.covering_radius_m() >= HALF_CIRCUMFERENCE_M
    _assert_covers(box)


@given(
    south=st.floats(-90, 90),
    height=st.floats(0, 180),
    west=st.floats(-180, 180),
    width=st.floats(0, 180),
)
def test_covering_radius_property_for_boxes_up_to_a_hemisphere_wide(
    south: float, height: float, west: float, width: float
) -> None:
    north = min(90.0, south + height)
    east = west + width
    east = east - 360.0 if east > 180.0 else east
    _assert_covers(Box(south, west, north, east), steps=6)


# --- cells -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lat", "lng", "cell"),
    [
        (0.0, 0.0, (0, 0)),
        (0.5, 0.5, (0, 0)),
        (-0.5, -0.5, (-1, -1)),
        (-0.0, -0.0, (0, 0)),
        (52.52, 13.405, (52, 13)),
        (-33.87, 151.21, (-34, 151)),
        (-33.87, -70.6, (-34, -71)),
        (89.999, 179.999, (89, 179)),
        (90.0, 180.0, (89, 179)),  # pole and antimeridian fold into the edge cells
        (90.0, 0.0, (89, 0)),
        (0.0, 180.0, (0, 179)),
        (-90.0, -180.0, (-90, -180)),
        (-89.5, -179.5, (-90, -180)),
    ],
)
def test_cell_of(lat: float, lng: float, cell: tuple[int, int]) -> None:
    assert cell_of(lat, lng) == cell


def test_cell_of_returns_ints() -> None:
    row, col = cell_of(12.7, -3.2)
    assert type(row) is int
    assert type(col) is int


def test_cells_for_a_small_box() -> None:
    box = Box(52.3, 13.1, 52.7, 13.8)
    assert cells_for_box(box, 64) == [(52, 13)]


def test_cells_for_a_box_over_cell_edges() -> None:
    box = Box(-0.5, -0.5, 1.5, 0.5)
    assert cells_for_box(box, 64) == [(-1, -1), (-1, 0), (0, -1), (0, 0), (1, -1), (1, 0)]


def test_cells_for_an_antimeridian_box_take_both_sides() -> None:
    box = Box(-0.5, 178.5, 0.5, -178.5)
    cells = cells_for_box(box, 64)
    assert cells is not None
    assert sorted(cells) == sorted((row, col) for row in (-1, 0) for col in (178, 179, -180, -179))


def test_cells_for_box_hold_every_point_inside() -> None:
    box = Box(-1.5, 177.2, 1.5, -178.3)
    cells = cells_for_box(box, 64)
    assert cells is not None
    assert len(cells) == len(set(cells))
    for lat in (-1.5, -0.2, 0.0, 1.5):
        for lng in (177.2, 178.9, 180.0, -180.0, -179.4, -178.3):
            assert box.contains(lat, lng)
            assert cell_of(lat, lng) in cells


def test_cells_for_box_up_to_the_limit() -> None:
    box = Box(0.5, 0.5, 7.5, 7.5)  # 8 × 8 cells
    cells = cells_for_box(box, 64)
    assert cells is not None
    assert len(cells) == 64


def test_cells_for_box_none_when_too_many() -> None:
    assert cells_for_box(Box(0.5, 0.5, 7.5, 7.5), 63) is None
    assert cells_for_box(Box(-90, -180, 90, 180), 64) is None
    assert cells_for_box(Box(-10, 170, 10, -170), 64) is None


def test_cells_for_the_whole_globe() -> None:
    cells = cells_for_box(Box(-90, -180, 90, 180), 10**6)
    assert cells is not None
    assert len(cells) == 180 * 360
