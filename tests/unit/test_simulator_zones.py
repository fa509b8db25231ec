"""The demo zones: valid closed polygons inside the city, scaled with it, where the default
city's landmarks are."""

from __future__ import annotations

import json

import pytest
from shapely.geometry import Point, shape

from services.domain.geodesy import haversine_m
from services.ops.simulator.city import Grid
from services.ops.simulator.zones import DEMO_ZONES

BENGALURU = Grid(12.9716, 77.5946, 150.0, 3000.0)


@pytest.mark.parametrize("radius_m", [300.0, 3000.0, 8000.0])
def test_every_zone_is_a_closed_valid_polygon_inside_the_city(radius_m: float) -> None:
    grid = Grid(-33.45, -70.66, 150.0, radius_m)
    for zone in DEMO_ZONES:
        geometry = json.loads(zone.geojson(grid))
        ring = geometry["coordinates"][0]
        assert geometry["type"] == "Polygon"
        assert ring[0] == ring[-1]
        assert len(ring) == 5
        assert shape(geometry).is_valid
        for lng, lat in ring:
            assert haversine_m(grid.center_lat, grid.center_lng, lat, lng) <= radius_m


def test_in_the_default_city_the_zones_sit_on_the_landmarks_they_stand_for() -> None:
    station, park, business = (shape(json.loads(z.geojson(BENGALURU))) for z in DEMO_ZONES)
    assert station.contains(Point(77.5697, 12.9781))  # KSR Bengaluru City station
    assert park.contains(Point(77.5929, 12.9763))  # Cubbon Park
    assert business.contains(Point(77.6066, 12.9756))  # MG Road


def test_zone_sizes_are_in_metres_in_proportion_to_the_city() -> None:
    park = json.loads(DEMO_ZONES[1].geojson(BENGALURU))["coordinates"][0]
    (w_lng, s_lat), (e_lng, _), (_, n_lat) = park[0], park[1], park[2]
    width = haversine_m(s_lat, w_lng, s_lat, e_lng)
    height = haversine_m(s_lat, w_lng, n_lat, w_lng)
    assert width == pytest.approx(0.3 * 3000.0, rel=1e-3)
    assert height == pytest.approx(0.3 * 3000.0, rel=1e-3)
