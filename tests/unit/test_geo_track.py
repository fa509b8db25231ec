"""Pure parts of GetDriverTrack: arguments, page tokens, path length and GeoJSON."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.errors import InvalidArgument
from services.geo.track import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Cursor,
    decode_page_token,
    driver_location,
    encode_page_token,
    linestring_geojson,
    page_size_of,
    path_length_m,
    request_fingerprint,
    time_range,
)
from services.history.store import FixRow

START = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
END = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def _ts(moment: datetime, extra_nanos: int = 0) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    stamp.nanos += extra_nanos
    return stamp


def _request(**fields: object) -> pb.GetDriverTrackRequest:
    base: dict[str, object] = {
        "driver_id": "d1",
        "start_time": _ts(START),
        "end_time": _ts(END),
    }
    base.update(fields)
    return pb.GetDriverTrackRequest(**base)  # type: ignore[arg-type]


def test_page_size_default_bound_and_negative() -> None:
    assert page_size_of(0) == DEFAULT_PAGE_SIZE == 1_000
    assert page_size_of(1) == 1
    assert page_size_of(MAX_PAGE_SIZE) == 10_000
    with pytest.raises(InvalidArgument, match=r"page_size must be at most 10,000, got 10,001"):
        page_size_of(MAX_PAGE_SIZE + 1)
    with pytest.raises(InvalidArgument, match="page_size must not be negative, got -1"):
        page_size_of(-1)


def test_time_range_requires_both_ends_in_order() -> None:
    assert time_range(_request()) == (START, END)
    with pytest.raises(InvalidArgument, match="start_time is required"):
        time_range(pb.GetDriverTrackRequest(driver_id="d1", end_time=_ts(END)))
    with pytest.raises(InvalidArgument, match="end_time is required"):
        time_range(pb.GetDriverTrackRequest(driver_id="d1", start_time=_ts(START)))
    with pytest.raises(InvalidArgument, match=r"end_time \(.*\) must be after start_time"):
        time_range(_request(end_time=_ts(START)))
    with pytest.raises(InvalidArgument, match="must be after start_time"):
        time_range(_request(start_time=_ts(END), end_time=_ts(START)))


def test_time_range_rejects_timestamps_outside_the_protobuf_range() -> None:
    with pytest.raises(InvalidArgument, match="start_time must be a valid timestamp"):
        time_range(_request(start_time=Timestamp(seconds=-62_135_596_801)))
    with pytest.raises(InvalidArgument, match="end_time must be a valid timestamp"):
        time_range(_request(end_time=Timestamp(seconds=253_402_300_800)))
    with pytest.raises(InvalidArgument, match="start_time must be a valid timestamp"):
        time_range(_request(start_time=Timestamp(seconds=0, nanos=-1)))
    # The last representable instant still works as an open end.
    _, end = time_range(_request(end_time=Timestamp(seconds=253_402_300_799, nanos=999_999_999)))
    assert end.year == 9999


def test_nanoseconds_round_up_to_the_stored_microsecond() -> None:
    # A fix stored at START is after START + 1 ns, so the range must start at START + 1 µs.
    start, end = time_range(_request(start_time=_ts(START, 1), end_time=_ts(END, 1)))
    assert start == START + timedelta(microseconds=1)
    assert end == END + timedelta(microseconds=1)
    start, _ = time_range(_request(start_time=_ts(START, 1_000)))
    assert start == START + timedelta(microseconds=1)


def test_page_token_round_trips_the_cursor() -> None:
    fingerprint = request_fingerprint("d1", START, END)
    cursor = Cursor(START + timedelta(minutes=7, microseconds=3), 42, -33.8688, 151.2093)
    token = encode_page_token(fingerprint, cursor)
    assert token.isascii()
    assert "+" not in token
    assert "/" not in token
    assert decode_page_token(token, fingerprint, START, END) == cursor
    assert decode_page_token("", fingerprint, START, END) is None


@pytest.mark.parametrize(
    ("driver_id", "start", "end"),
    [
        ("d2", START, END),
        ("d1", START + timedelta(seconds=1), END),
        ("d1", START, END + timedelta(microseconds=1)),
    ],
)
def test_page_token_of_another_request_is_rejected(
    driver_id: str, start: datetime, end: datetime
) -> None:
    token = encode_page_token(request_fingerprint("d1", START, END), Cursor(START, 1, 0.0, 0.0))
    with pytest.raises(InvalidArgument, match="page_token is not valid for this request"):
        decode_page_token(token, request_fingerprint(driver_id, start, end), start, end)


def _raw_token(**changes: object) -> str:
    fingerprint = request_fingerprint("d1", START, END)
    cursor = Cursor(START, 1, 10.0, 20.0)
    token = encode_page_token(fingerprint, cursor)
    raw = bytearray(base64.urlsafe_b64decode(token))
    if "version" in changes:
        raw[0] = int(changes["version"])  # type: ignore[call-overload]
    if "truncate" in changes:
        raw = raw[:-1]
    return base64.urlsafe_b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    "token",
    [
        "not base64 at all!",
        "AAAA",
        "é",
        _raw_token(version=2),
        _raw_token(truncate=True),
        encode_page_token(
            request_fingerprint("d1", START, END), Cursor(END, 1, 0.0, 0.0)
        ),  # cursor outside the range
        encode_page_token(request_fingerprint("d1", START, END), Cursor(START, 1, math.nan, 0.0)),
        encode_page_token(request_fingerprint("d1", START, END), Cursor(START, 1, 0.0, 181.0)),
    ],
)
def test_malformed_page_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token is not valid"):
        decode_page_token(token, request_fingerprint("d1", START, END), START, END)


def test_path_length_sums_great_circle_legs() -> None:
    assert path_length_m([]) == 0.0
    assert path_length_m([(52.5, 13.4)]) == 0.0
    # A quarter of the equator, then a quarter meridian to the pole.
    quarter = math.pi / 2 * 6_371_008.8
    assert path_length_m([(0.0, 0.0), (0.0, 90.0)]) == pytest.approx(quarter, rel=1e-12)
    assert path_length_m([(0.0, 0.0), (0.0, 90.0), (90.0, 90.0)]) == pytest.approx(
        2 * quarter, rel=1e-12
    )


def test_path_length_across_the_antimeridian_is_the_short_way() -> None:
    # 0.2° of longitude on the equator, not 359.8°.
    leg = path_length_m([(0.0, 179.9), (0.0, -179.9)])
    assert leg == pytest.approx(math.radians(0.2) * 6_371_008.8, rel=1e-9)


def test_linestring_is_lng_lat_and_always_a_linestring() -> None:
    assert json.loads(linestring_geojson([])) == {"type": "LineString", "coordinates": []}
    assert json.loads(linestring_geojson([(52.5, 13.4)])) == {
        "type": "LineString",
        "coordinates": [[13.4, 52.5], [13.4, 52.5]],
    }
    line = json.loads(linestring_geojson([(52.5, 13.4), (-33.8688, 151.2093)]))
    assert line == {"type": "LineString", "coordinates": [[13.4, 52.5], [151.2093, -33.8688]]}


def test_driver_location_carries_every_stored_field() -> None:
    received = START + timedelta(seconds=1, microseconds=250)
    row = FixRow("d1", -33.8688, 151.2093, 270.5, 12.25, 3.5, START, 9, received)
    location = driver_location(row)
    assert location.driver_id == "d1"
    assert (location.position.latitude, location.position.longitude) == (-33.8688, 151.2093)
    assert (location.heading_deg, location.speed_mps, location.accuracy_m) == (270.5, 12.25, 3.5)
    assert location.seq == 9
    assert location.recorded_at.ToDatetime(tzinfo=UTC) == START
    assert location.received_at.ToDatetime(tzinfo=UTC) == received
