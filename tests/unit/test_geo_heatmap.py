"""Heatmap request checks and box geometry (pure)."""

from __future__ import annotations

import math

import h3
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1.common_pb2 import BoundingBox, LatLng
from services.domain.area import Box
from services.domain.errors import InvalidArgument
from services.domain.geodesy import EARTH_RADIUS_M, haversine_m
from services.geo.heatmap import (
    MAX_CELLS,
    box_area_m2,
    check_request,
    covering_radius_m,
    estimated_cells,
)

WORLD = Box(-90.0, -180.0, 90.0, 180.0)


def request(
    south: float, west: float, north: float, east: float, res: int
) -> pb.GetSupplyHeatmapRequest:
    bounds = BoundingBox(
        south_west=LatLng(latitude=south, longitude=west),
        north_east=LatLng(latitude=north, longitude=east),
    )
    return pb.GetSupplyHeatmapRequest(bounds=bounds, resolution=res)


def test_the_world_has_the_area_of_the_sphere() -> None:
    assert box_area_m2(WORLD) == pytest.approx(4 * math.pi * EARTH_RADIUS_M**2)


def test_a_box_across_the_antimeridian_has_its_short_span() -> None:
    across = Box(-1.0, 179.0, 1.0, -179.0)
    assert box_area_m2(across) == pytest.approx(box_area_m2(Box(-1.0, 0.0, 1.0, 2.0)))


def test_the_world_at_resolution_zero_is_about_its_122_cells() -> None:
    assert estimated_cells(WORLD, 0) == pytest.approx(len(h3.get_res0_cells()), rel=0.05)
    assert check_request(request(-90, -180, 90, 180, 0)) == (WORLD, 0)


@pytest.mark.parametrize("res", [-1, 11])
def test_resolution_out_of_range_names_the_bound(res: int) -> None:
    with pytest.raises(InvalidArgument, match="resolution must be an H3 resolution from 0 to 10"):
        check_request(request(12.9, 77.5, 13.0, 77.7, res))


def test_a_city_box_at_street_level_is_allowed() -> None:
    box, res = check_request(request(12.95, 77.55, 13.0, 77.65, 10))
    assert res == 10
    assert estimated_cells(box, 10) <= MAX_CELLS


def test_too_many_cells_names_the_limit_and_a_resolution_that_fits() -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_request(request(-90, -180, 90, 180, 3))
    message = str(raised.value)
    assert "at most 20,000 cells" in message
    assert "resolution 2 or coarser" in message
    assert estimated_cells(WORLD, 2) <= MAX_CELLS < estimated_cells(WORLD, 3)


def test_bounds_are_required() -> None:
    with pytest.raises(InvalidArgument, match="bounds needs both"):
        check_request(pb.GetSupplyHeatmapRequest(resolution=3))


def test_a_box_wider_than_half_the_world_is_covered_by_the_whole_sphere() -> None:
    wide = Box(-60.0, -170.0, 60.0, 170.0)
    lat, lng = wide.center()
    # The middle of the east edge is farther than any corner.
    assert haversine_m(lat, lng, 0.0, 170.0) > wide.covering_radius_m()
    assert covering_radius_m(wide) == pytest.approx(math.pi * EARTH_RADIUS_M)


@given(
    st.floats(-90, 90), st.floats(-90, 90), st.floats(-180, 180), st.floats(-180, 180),
    st.floats(0, 1), st.floats(0, 1),
)  # fmt: skip
def test_the_covering_radius_holds_every_point_of_the_box(
    lat_a: float, lat_b: float, west: float, east: float, u: float, v: float
) -> None:
    box = Box(min(lat_a, lat_b), west, max(lat_a, lat_b), east)
    lat = box.south + u * (box.north - box.south)
    lng = (box.west + v * box.lng_span() + 180.0) % 360.0 - 180.0
    assume(box.contains(lat, lng))
    centre = box.center()
    assert haversine_m(*centre, lat, lng) <= covering_radius_m(box) + 1e-6
