"""Export documents: GPX validates against the GPX 1.1 schema, GeoJSON and CSV parse back to the
stored values, names are escaped, chunks join to the document, empty tracks are valid."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.geo.export_formats import (
    CSV_COLUMNS,
    GPX_NAMESPACE,
    TRACKPOINT_EXTENSION_NAMESPACE,
    PageSource,
    TrackInfo,
    chunked,
    short_decimal,
    write_csv,
    write_geojson,
    write_gpx,
    xml_text,
    xsd_decimal,
)
from services.geo.track import path_length_m
from services.history.store import FixRow
from tests.gpx_schema import assert_valid_gpx

START = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
END = START + timedelta(hours=1)
INFO = TrackInfo("driver-7", START, END, "driver-7 2026-12-07T08:00:00Z/2026-12-07T09:00:00Z")
GPX = f"{{{GPX_NAMESPACE}}}"
TPX = f"{{{TRACKPOINT_EXTENSION_NAMESPACE}}}"


def _row(n: int, lat: float = 52.52, lng: float = 13.405, driver: str = "driver-7") -> FixRow:
    return FixRow(
        driver_id=driver,
        latitude=lat + n * 1e-4,
        longitude=lng + n * 1e-4,
        heading_deg=90.0,
        speed_mps=12.300000190734863,  # 12.3 as a 4-byte float comes back like this
        accuracy_m=4.5,
        recorded_at=START + timedelta(seconds=4 * n, microseconds=250_000 * (n % 2)),
        seq=n + 1,
        received_at=START + timedelta(seconds=4 * n + 1),
    )


def _source(rows: Sequence[FixRow], page: int = 3) -> PageSource:
    async def pages() -> AsyncIterator[Sequence[FixRow]]:
        for i in range(0, len(rows), page):
            yield rows[i : i + page]

    return pages


async def _document(writer: object, rows: Sequence[FixRow], size: int = 1 << 20) -> bytes:
    assert callable(writer)
    chunks = [chunk async for chunk in chunked(writer(INFO, _source(rows)), size)]
    return b"".join(chunks)


ROWS = [_row(n) for n in range(10)]


async def test_gpx_validates_and_holds_every_fix_in_order() -> None:
    root = assert_valid_gpx(await _document(write_gpx, ROWS))
    assert root.get("version") == "1.1"
    assert root.get("creator") == "Ridemesh"
    (track,) = root.findall(f"{GPX}trk")
    assert track.findtext(f"{GPX}name") == INFO.title
    (segment,) = track.findall(f"{GPX}trkseg")
    points = segment.findall(f"{GPX}trkpt")
    assert [(float(p.get("lat")), float(p.get("lon"))) for p in points] == [
        (r.latitude, r.longitude) for r in ROWS
    ]
    assert points[0].findtext(f"{GPX}time") == "2026-12-07T08:00:00Z"
    assert points[1].findtext(f"{GPX}time") == "2026-12-07T08:00:04.250000Z"
    extension = points[0].find(f"{GPX}extensions/{TPX}TrackPointExtension")
    assert extension.findtext(f"{TPX}speed") == "12.3"
    assert extension.findtext(f"{TPX}course") == "90"


async def test_empty_track_is_a_valid_document_of_each_format() -> None:
    root = assert_valid_gpx(await _document(write_gpx, []))
    assert root.findall(f".//{GPX}trkpt") == []
    assert json.loads(await _document(write_geojson, [])) == {
        "type": "FeatureCollection",
        "features": [],
    }
    assert list(csv.reader(io.StringIO((await _document(write_csv, [])).decode()))) == [
        list(CSV_COLUMNS)
    ]


async def test_gpx_writes_the_antimeridian_and_tiny_numbers_as_the_schema_allows() -> None:
    rows = [_row(0, lat=-0.00001, lng=180.0), _row(1, lat=1e-7, lng=-179.99999)]
    edge = [replace(rows[0], heading_deg=360.0), replace(rows[1], heading_deg=359.99999)]
    root = assert_valid_gpx(await _document(write_gpx, edge))
    points = root.findall(f".//{GPX}trkpt")
    assert points[0].get("lon") == "-180.0"  # +180 and -180 are the same meridian
    assert points[0].get("lat") == "-0.00001"  # xsd:decimal has no exponent
    assert [p.findtext(f".//{TPX}course") for p in points] == ["0", "0"]  # north


async def test_gpx_escapes_names_and_drops_characters_xml_cannot_hold() -> None:
    info = TrackInfo("a<b>&\"c'\x01", START, END, "a<b>&\"c'\x01 \ud800")
    document = b"".join([c async for c in chunked(write_gpx(info, _source(ROWS[:2])))])
    root = assert_valid_gpx(document)
    assert root.findtext(f"{GPX}trk/{GPX}name") == "a<b>&\"c'\ufffd \ufffd"


def test_xml_text_and_decimals() -> None:
    assert xml_text("<&>\"'") == "&lt;&amp;&gt;&quot;&apos;"
    assert xsd_decimal(1e-7) == "0.0000001"
    assert xsd_decimal(52.52) == "52.52"
    assert float(xsd_decimal(1.2345678901234567e-5)) == 1.2345678901234567e-5
    # 4-byte floats as the decimals they were sent as, never with an exponent.
    assert short_decimal(12.300000190734863) == "12.3"
    assert short_decimal(359.989990234375) == "359.99"
    assert short_decimal(9.999999747378752e-06) == "0.00001"
    assert short_decimal(0.0) == "0"


async def test_geojson_has_the_line_then_a_point_per_fix_in_lon_lat_order() -> None:
    collection = json.loads(await _document(write_geojson, ROWS))
    assert collection["type"] == "FeatureCollection"
    line, *points = collection["features"]
    assert line["geometry"]["type"] == "LineString"
    assert line["geometry"]["coordinates"] == [[r.longitude, r.latitude] for r in ROWS]
    assert line["properties"]["fix_count"] == len(ROWS)
    assert line["properties"]["driver_id"] == "driver-7"
    assert line["properties"]["start_time"] == "2026-12-07T08:00:00Z"
    path = [(r.latitude, r.longitude) for r in ROWS]
    assert line["properties"]["distance_m"] == pytest.approx(path_length_m(path))
    assert len(points) == len(ROWS)
    assert [p["geometry"]["coordinates"] for p in points] == [
        [r.longitude, r.latitude] for r in ROWS
    ]
    assert points[3]["properties"] == {
        "time": "2026-12-07T08:00:12.250000Z",
        "seq": 4,
        "speed_mps": 12.3,
        "heading_deg": 90.0,
        "accuracy_m": 4.5,
    }


async def test_geojson_of_one_fix_is_a_point_without_a_line() -> None:
    collection = json.loads(await _document(write_geojson, ROWS[:1]))
    assert [f["geometry"]["type"] for f in collection["features"]] == ["Point"]


async def test_geojson_points_stop_where_the_line_stopped() -> None:
    """A fix stored between the two passes (after the line's last) is not among the points."""
    calls = 0

    async def growing() -> AsyncIterator[Sequence[FixRow]]:
        nonlocal calls
        calls += 1
        yield ROWS[:5] if calls == 1 else ROWS[:6]

    text = b"".join([c async for c in chunked(write_geojson(INFO, growing))])
    line, *points = json.loads(text)["features"]
    assert len(line["geometry"]["coordinates"]) == len(points) == 5


async def test_csv_round_trips_every_value() -> None:
    text = (await _document(write_csv, ROWS)).decode()
    assert "\r\n" in text  # RFC 4180 line ends
    header, *records = list(csv.reader(io.StringIO(text)))
    assert tuple(header) == CSV_COLUMNS
    assert len(records) == len(ROWS)
    for record, row in zip(records, ROWS, strict=True):
        values = dict(zip(CSV_COLUMNS, record, strict=True))
        assert values["driver_id"] == row.driver_id
        assert datetime.fromisoformat(values["recorded_at"]) == row.recorded_at
        assert float(values["latitude"]) == row.latitude
        assert float(values["longitude"]) == row.longitude
        assert values["speed_mps"] == "12.3"
        assert float(values["heading_deg"]) == row.heading_deg
        assert float(values["accuracy_m"]) == row.accuracy_m
        assert int(values["seq"]) == row.seq


async def test_csv_quotes_a_driver_id_that_needs_it() -> None:
    rows = [_row(0, driver='a,"b"\nc')]
    (_, record) = list(csv.reader(io.StringIO((await _document(write_csv, rows)).decode())))
    assert record[0] == 'a,"b"\nc'


@settings(max_examples=30, deadline=None)
@given(size=st.integers(min_value=1, max_value=5000), count=st.integers(0, 40))
async def test_chunks_join_to_the_same_document_and_have_the_chunk_size(
    size: int, count: int
) -> None:
    rows = [_row(n) for n in range(count)]
    whole = await _document(write_gpx, rows)
    chunks = [c async for c in chunked(write_gpx(INFO, _source(rows, page=7)), size)]
    assert b"".join(chunks) == whole
    assert all(len(c) == size for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= size


async def test_chunked_splits_multibyte_text_only_between_chunks() -> None:
    async def pieces() -> AsyncIterator[str]:
        for _ in range(100):
            yield "é€"

    chunks = [c async for c in chunked(pieces(), 7)]
    assert b"".join(chunks).decode() == "é€" * 100
