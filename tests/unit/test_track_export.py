"""What an ExportDriverTrack request asks for: range or trip, format, limits, file name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.errors import InvalidArgument
from services.domain.trip_ids import TripSpan, encode_trip_id
from services.geo.export_formats import CSV, GEOJSON, GPX
from services.geo.track_export import content_disposition, plan_export

START = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
END = START + timedelta(hours=1)


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _range(
    start: datetime = START, end: datetime = END, **fields: object
) -> pb.ExportDriverTrackRequest:
    request = pb.ExportDriverTrackRequest(driver_id="driver-7", **fields)  # type: ignore[arg-type]
    request.start_time.CopyFrom(_ts(start))
    request.end_time.CopyFrom(_ts(end))
    return request


def test_a_range_exports_that_half_open_range_as_gpx_by_default() -> None:
    plan = plan_export(_range())
    assert (plan.driver_id, plan.start, plan.end) == ("driver-7", START, END)
    assert plan.document is GPX
    assert plan.filename == "driver-7_2026-12-07T08-00-00Z_2026-12-07T09-00-00Z.gpx"
    assert content_disposition(plan) == (
        ("content-disposition", f'attachment; filename="{plan.filename}"'),
    )


@pytest.mark.parametrize(
    ("value", "document"),
    [(pb.EXPORT_FORMAT_GPX, GPX), (pb.EXPORT_FORMAT_GEOJSON, GEOJSON), (pb.EXPORT_FORMAT_CSV, CSV)],
)
def test_each_format_names_its_file(value: int, document: object) -> None:
    plan = plan_export(_range(format=value))
    assert plan.document is document
    assert plan.filename.endswith("." + plan.document.extension)


def test_a_trip_exports_its_first_to_last_fix_inclusive() -> None:
    first, last = START + timedelta(minutes=3, microseconds=5), START + timedelta(minutes=27)
    trip_id = encode_trip_id(TripSpan("driver-7", first, last))
    plan = plan_export(pb.ExportDriverTrackRequest(trip_id=trip_id, format=pb.EXPORT_FORMAT_CSV))
    assert (plan.driver_id, plan.start) == ("driver-7", first)
    assert plan.end == last + timedelta(microseconds=1)  # the store's end is exclusive
    assert plan.filename == "driver-7_trip_2026-12-07T08-03-00Z_2026-12-07T08-27-00Z.csv"


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (pb.ExportDriverTrackRequest(), "driver_id is required"),
        (_range(start=END, end=START), "must be after start_time"),
        (_range(end=START + timedelta(days=31, seconds=1)), "at most 31 days"),
        (_range(format=9), "format 9 is not an export format"),
        (pb.ExportDriverTrackRequest(driver_id="driver-7"), "start_time is required"),
        (pb.ExportDriverTrackRequest(trip_id="not-a-trip"), "trip_id 'not-a-trip' is not valid"),
        (
            pb.ExportDriverTrackRequest(
                trip_id=encode_trip_id(TripSpan("driver-7", START, END)), driver_id="driver-7"
            ),
            "not both",
        ),
        (
            pb.ExportDriverTrackRequest(
                trip_id=encode_trip_id(TripSpan("driver-7", START, START + timedelta(days=40)))
            ),
            "more than 31 days",
        ),
        (
            pb.ExportDriverTrackRequest(trip_id=encode_trip_id(TripSpan('x"\r\n', START, END))),
            "is not valid",
        ),
    ],
)
def test_bad_requests_say_what_to_fix(request_: pb.ExportDriverTrackRequest, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        plan_export(request_)


def test_exactly_31_days_is_allowed() -> None:
    plan = plan_export(_range(end=START + timedelta(days=31)))
    assert plan.end - plan.start == timedelta(days=31)
