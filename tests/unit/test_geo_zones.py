"""Geofence validation: every rule refuses what breaks it and accepts what meets it."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Point, box

from services.domain.errors import InvalidArgument
from services.geo.zone_index import METRES_PER_DEGREE, Zone, ZoneIndex, ZoneTiming, distance_m
from services.geo.zones import (
    MAX_DISPLAY_NAME,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_VERTICES,
    parse_geofence,
)

SQUARE = [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]


def polygon(*rings: Any) -> str:
    return json.dumps({"type": "Polygon", "coordinates": list(rings)})


def multi(*polygons: Any) -> str:
    return json.dumps({"type": "MultiPolygon", "coordinates": list(polygons)})


def parse(geojson: str, name: str = "zone", labels: dict[str, str] | None = None) -> Any:
    return parse_geofence(name, geojson, labels or {})


def refused(geojson: str, *fragments: str, name: str = "zone", labels: Any = None) -> str:
    with pytest.raises(InvalidArgument) as info:
        parse(geojson, name, labels)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def ring_of(n: int, cx: float = 0.0, cy: float = 0.0, r: float = 1.0) -> list[list[float]]:
    """A closed regular n-gon: n distinct corners, n + 1 positions."""
    points = [
        [cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)]
        for k in range(n)
    ]
    return [*points, points[0]]


# --- what is accepted -------------------------------------------------------------------------


SQUARE_JSON = json.dumps(
    {"type": "Polygon", "coordinates": [[[13, 52], [13.1, 52], [13.1, 52.1], [13, 52.1], [13, 52]]]}
)


def test_polygon_becomes_multipolygon_in_lon_lat_order() -> None:
    parsed = parse(polygon([[13.3, 52.5], [13.5, 52.5], [13.5, 52.6], [13.3, 52.6], [13.3, 52.5]]))
    assert isinstance(parsed.geometry, MultiPolygon)
    assert parsed.geometry.contains(Point(13.4, 52.55))  # x = longitude
    assert not parsed.geometry.contains(Point(52.55, 13.4))


def test_canonical_geojson_keeps_type_and_drops_foreign_members() -> None:
    sent = json.dumps(
        {"coordinates": [SQUARE], "type": "Polygon", "bbox": [0, 0, 1, 1], "x": 1}, indent=2
    )
    parsed = parse(sent)
    assert parsed.geojson == '{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}'
    assert parse(multi([SQUARE])).geojson.startswith('{"type":"MultiPolygon"')


def test_polygon_with_hole_excludes_the_hole() -> None:
    outer = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    hole = [[4, 4], [6, 4], [6, 6], [4, 6], [4, 4]]
    geometry = parse(polygon(outer, hole)).geometry
    assert geometry.contains(Point(2, 2))
    assert not geometry.contains(Point(5, 5))


def test_altitude_is_accepted_and_dropped_from_the_geometry() -> None:
    parsed = parse(polygon([[0, 0, 5], [1, 0, 5], [1, 1, 5], [0, 1, 5], [0, 0, 5]]))
    assert not parsed.geometry.has_z


def test_multipolygon_split_at_the_antimeridian_is_accepted() -> None:
    east = [[170, -10], [180, -10], [180, 10], [170, 10], [170, -10]]
    west = [[-180, -10], [-170, -10], [-170, 10], [-180, 10], [-180, -10]]
    parsed = parse(multi([east], [west]))
    assert len(parsed.geometry.geoms) == 2
    assert parsed.geometry.intersects(Point(180, 0))
    assert parsed.geometry.intersects(Point(-175, 0))


def test_extreme_but_valid_coordinates_are_accepted() -> None:
    parse(polygon([[-180, -90], [0, -90], [0, 90], [-180, 90], [-180, -90]]))
    parse(polygon([[0, -90], [180, -90], [180, 90], [0, 90], [0, -90]]))


def test_exactly_the_vertex_bound_is_accepted() -> None:
    parse(polygon(ring_of(MAX_VERTICES - 1)))  # n corners + the closing repeat


def test_a_ring_of_exactly_four_positions_is_accepted() -> None:
    parse(polygon([[0, 0], [1, 0], [0, 1], [0, 0]]))


# --- the JSON itself ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "{", "not json", '{"type": "Polygon",}'])
def test_not_json_is_refused(text: str) -> None:
    refused(text, "geojson")


def test_absurdly_nested_json_is_refused_not_a_crash() -> None:
    refused("[" * 100_000 + "]" * 100_000, "nested too deeply")


@pytest.mark.parametrize("text", ["[]", "1", '"Polygon"', "null"])
def test_json_that_is_not_an_object_is_refused(text: str) -> None:
    refused(text, "JSON object")


@pytest.mark.parametrize("kind", ["Point", "LineString", "Feature", "GeometryCollection", None])
def test_other_types_are_refused(kind: str | None) -> None:
    refused(json.dumps({"type": kind, "coordinates": [SQUARE]}), "Polygon or MultiPolygon")


@pytest.mark.parametrize(
    "coordinates",
    [None, [], "x", [[]], [{"a": 1}]],
    ids=["none", "empty", "str", "ring-empty", "obj"],
)
def test_malformed_coordinates_are_refused(coordinates: Any) -> None:
    refused(json.dumps({"type": "Polygon", "coordinates": coordinates}), "geojson")


def test_empty_multipolygon_is_refused() -> None:
    refused(multi(), "non-empty array of polygons")


# --- rings --------------------------------------------------------------------------------------


def test_unclosed_ring_is_refused_naming_it() -> None:
    refused(
        polygon([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0.5]]),
        "coordinates[0]",
        "not closed",
        "[0, 0.5]",
    )


def test_unclosed_hole_in_second_polygon_is_named() -> None:
    outer = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    hole = [[4, 4], [6, 4], [6, 6], [4, 6], [4, 5]]
    refused(multi([SQUARE], [outer, hole]), "coordinates[1][1]", "not closed")


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_ring_with_fewer_than_four_positions_is_refused(n: int) -> None:
    ring = [[0, 0], [1, 0], [0, 0]][:n] if n < 3 else [[0, 0], [1, 0], [0, 0]]
    refused(polygon(ring), "at least 4", f"has {len(ring)} positions")


# --- positions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [[0], [0, 0, 0, 0], ["0", 0], [True, 0], [None, 0], 5, {"x": 0}],
    ids=["one", "four", "string", "bool", "null", "scalar", "object"],
)
def test_position_that_is_not_two_or_three_numbers_is_refused(bad: Any) -> None:
    ring: list[Any] = [[0, 0], bad, [1, 1], [0, 1], [0, 0]]
    refused(polygon(ring), "coordinates[0][1]", "finite numbers")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_constants_are_refused(constant: str) -> None:
    text = '{"type":"Polygon","coordinates":[[[0,0],[' + constant + ",0],[1,1],[0,0]]]}"
    refused(text, "not valid JSON", constant)


def test_overflowing_number_is_refused_as_not_finite() -> None:
    text = '{"type":"Polygon","coordinates":[[[0,0],[1e999,0],[1,1],[0,1],[0,0]]]}'
    refused(text, "finite numbers")


def test_huge_integer_is_refused_as_out_of_range_not_a_crash() -> None:
    huge = "1" + "0" * 400
    text = '{"type":"Polygon","coordinates":[[[0,0],[' + huge + ",0],[1,1],[0,1],[0,0]]]}"
    message = refused(text, "longitude", "[-180, 180]")
    assert len(message) < 300


@pytest.mark.parametrize("lng", [-180.0001, 180.0001, 200, -540])
def test_longitude_out_of_range_is_refused(lng: float) -> None:
    refused(polygon([[0, 0], [lng, 0], [1, 1], [0, 1], [0, 0]]), "longitude", "[-180, 180]")


@pytest.mark.parametrize("lat", [-90.0001, 90.0001, 91, -1000])
def test_latitude_out_of_range_is_refused(lat: float) -> None:
    refused(polygon([[0, 0], [1, lat], [1, 1], [0, 1], [0, 0]]), "latitude", "[-90, 90]")


def test_swapped_coordinates_get_a_hint() -> None:
    refused(
        polygon([[52.5, 13.3], [52.5, 113.5], [52.6, 13.5], [52.5, 13.3]]),
        "latitude 113.5",
        "swapped",
    )


# --- size ----------------------------------------------------------------------------------------


def test_more_positions_than_the_bound_is_refused_stating_it() -> None:
    refused(polygon(ring_of(MAX_VERTICES)), "more than 10,000 positions")


def test_the_vertex_bound_counts_all_polygons_together() -> None:
    half = ring_of(MAX_VERTICES // 2)  # 5,001 positions each
    far = ring_of(MAX_VERTICES // 2, cx=10)
    refused(multi([half], [far]), "10,000")


# --- geometry validity ---------------------------------------------------------------------------


def test_self_intersecting_bowtie_is_refused_with_the_reason() -> None:
    refused(polygon([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]), "Self-intersection")


def test_hole_outside_its_shell_is_refused() -> None:
    outer = [[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]
    hole = [[3, 3], [4, 3], [4, 4], [3, 3]]
    refused(polygon(outer, hole), "Hole lies outside shell")


def test_overlapping_polygons_of_a_multipolygon_are_refused() -> None:
    second = [[0.5, 0.5], [2, 0.5], [2, 2], [0.5, 2], [0.5, 0.5]]
    refused(multi([SQUARE], [second]), "not valid", "overlap")


def test_degenerate_ring_is_refused() -> None:
    refused(polygon([[0, 0], [0, 0], [0, 0], [0, 0]]), "not valid")


def test_polygon_wider_than_180_degrees_is_refused_with_the_fix() -> None:
    wide = [[170, 0], [-170, 0], [-170, 10], [170, 10], [170, 0]]  # drawn across the antimeridian
    refused(polygon(wide), "340° of longitude", "antimeridian", "MultiPolygon", "RFC 7946 §3.1.9")


def test_exactly_180_degrees_wide_is_accepted() -> None:
    parse(polygon([[0, 0], [180, 0], [180, 10], [0, 10], [0, 0]]))


# --- display name and labels --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_or_blank_display_name_is_refused(name: str) -> None:
    refused(polygon(SQUARE), "display_name is required", name=name)


def test_display_name_bound() -> None:
    assert parse(polygon(SQUARE), name="n" * MAX_DISPLAY_NAME).display_name == "n" * 200
    refused(polygon(SQUARE), "201 characters", "at most 200", name="n" * 201)


@pytest.mark.parametrize("char", ["\n", "\x00", "\t", "\x7f", "\x85"])
def test_control_characters_in_display_name_are_refused(char: str) -> None:
    refused(polygon(SQUARE), "control character", name=f"Air{char}port")


def test_unicode_display_name_is_accepted() -> None:
    assert (
        parse(polygon(SQUARE), name="Flughafen BER ✈ 東京").display_name == "Flughafen BER ✈ 東京"
    )


def test_label_count_bound() -> None:
    ok = {f"k{i}": "v" for i in range(MAX_LABELS)}
    assert parse(polygon(SQUARE), labels=ok).labels == ok
    refused(polygon(SQUARE), "33 entries", "at most 32", labels={**ok, "one-more": "v"})


@pytest.mark.parametrize("key", ["kind", "a", "0", "city.zone_1-b", "a" * 63])
def test_valid_label_keys_are_accepted(key: str) -> None:
    assert parse(polygon(SQUARE), labels={key: "x"}).labels == {key: "x"}


@pytest.mark.parametrize("key", ["", "Kind", "_x", "-x", ".x", "a b", "é", "a" * 64, "k=v"])
def test_invalid_label_keys_are_refused(key: str) -> None:
    refused(polygon(SQUARE), "label key", "a-z 0-9", labels={key: "x"})


def test_label_value_bound() -> None:
    assert parse(polygon(SQUARE), labels={"k": "v" * MAX_LABEL_VALUE}).labels["k"] == "v" * 256
    refused(polygon(SQUARE), "257 characters", "at most 256", labels={"k": "v" * 257})


# --- properties ----------------------------------------------------------------------------------

coordinate_pairs = st.tuples(
    st.floats(-179.0, 179.0, allow_nan=False), st.floats(-89.0, 89.0, allow_nan=False)
)


@given(coordinate_pairs, st.floats(1e-4, 0.9))
def test_any_small_axis_aligned_box_is_valid_and_contains_its_centre(
    corner: tuple[float, float], size: float
) -> None:
    lng, lat = corner
    box = [[lng, lat], [lng + size, lat], [lng + size, lat + size], [lng, lat + size], [lng, lat]]
    parsed = parse(polygon(box))
    assert parsed.geometry.contains(Point(lng + size / 2, lat + size / 2))
    assert json.loads(parsed.geojson)["coordinates"] == [box]


@given(st.lists(coordinate_pairs, min_size=0, max_size=12))
def test_arbitrary_rings_are_accepted_or_refused_never_crash(points: list[Any]) -> None:
    ring = [list(p) for p in points]
    try:
        parsed = parse(polygon(ring))
    except InvalidArgument as exc:
        message = str(exc)
    else:
        assert parsed.geometry.is_valid
        assert not parsed.geometry.is_empty
        return
    assert message.startswith(("geojson", "display_name")), message


@pytest.mark.parametrize(
    ("timing", "named"),
    [
        (ZoneTiming(entry_delay_s=-1.0), "entry_delay must be from 0 to 86,400 seconds, got -1"),
        (ZoneTiming(dwell_s=7 * 86_400 + 1), "dwell_time must be from 0 to 604,800 seconds"),
        (ZoneTiming(hysteresis_m=math.nan), "hysteresis_m must be from 0 to 1,000 metres, got nan"),
        (ZoneTiming(hysteresis_m=1000.5), "hysteresis_m must be from 0 to 1,000 metres"),
    ],
)
def test_timing_out_of_range_is_refused_naming_the_field_and_range(
    timing: ZoneTiming, named: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(named)):
        parse_geofence("Depot", SQUARE_JSON, {}, timing)


def test_timing_in_range_is_kept() -> None:
    timing = ZoneTiming(entry_delay_s=30.0, dwell_s=600.0, hysteresis_m=25.0)
    assert parse_geofence("Depot", SQUARE_JSON, {}, timing).timing == timing


@pytest.mark.parametrize("latitude", [0.0, 52.0, 70.0, -84.0])
def test_the_hysteresis_band_is_measured_in_metres_at_any_latitude(latitude: float) -> None:
    """A square whose eastern edge is at longitude 10; points east of it by a known number of
    metres (along the parallel) are in a 15 m band when 10 m out and not when 20 m out."""
    zone = Zone(
        "z", "Z", {}, box(9.0, latitude - 0.5, 10.0, latitude + 0.5), ZoneTiming(0, 0, 15.0)
    )
    index = ZoneIndex([zone])
    metres_per_degree_lng = METRES_PER_DEGREE * math.cos(math.radians(latitude))
    for metres, in_band in ((10.0, True), (20.0, False), (14.0, True), (16.0, False)):
        point_lng = 10.0 + metres / metres_per_degree_lng
        assert bool(index.in_margin(latitude, point_lng)) is in_band, (latitude, metres)
        assert distance_m(zone.geometry, latitude, point_lng) == pytest.approx(metres, rel=1e-3)
    assert index.in_margin(latitude, 9.5) == []  # inside is not the band
    assert ZoneIndex([Zone("n", "N", {}, zone.geometry)]).in_margin(latitude, 10.0001) == []
