"""ExportDriverTrack: a driver's stored track, or one trip, as a GPX, GeoJSON or CSV document in
chunks, read with keyset pages so a driver-month streams in bounded memory.

Choices a caller can rely on:
- Either `driver_id` with `start_time` and `end_time` (the half-open range [start, end), at most
  31 days, as GetDriverTrack), or `trip_id` alone (the trip's first to last fix, inclusive).
- `format` unset means GPX. An empty range is a valid document with no points, not an error.
- Every chunk carries the content type; the first also the file name, which the call's initial
  metadata repeats as a `content-disposition` header (what an HTTP download through Envoy's
  transcoder shows the browser). The file name holds only [A-Za-z0-9._-], so it is a safe header.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.errors import InvalidArgument
from services.domain.trip_ids import decode_trip_id
from services.domain.validation import required_id, validate_id
from services.geo.export_formats import (
    CSV,
    GEOJSON,
    GPX,
    DocumentFormat,
    PageSource,
    TrackInfo,
    chunked,
    utc_iso,
)
from services.geo.track import MAX_HISTORY_RANGE, bounded_time_range
from services.history.store import FixRow, HistoryStore
from services.observability.metrics import EXPORT_BYTES, EXPORT_FIXES

# Rows per keyset page: a few hundred kilobytes of text at most, and few round trips per month.
PAGE_ROWS = 2_000

FORMATS: dict[int, DocumentFormat] = {
    pb.EXPORT_FORMAT_UNSPECIFIED: GPX,
    pb.EXPORT_FORMAT_GPX: GPX,
    pb.EXPORT_FORMAT_GEOJSON: GEOJSON,
    pb.EXPORT_FORMAT_CSV: CSV,
}

_UNSAFE_IN_FILENAME = re.compile(r"[^A-Za-z0-9._-]")
_ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ExportPlan:
    """What to export: whose fixes in which half-open range, in which format, under which name."""

    driver_id: str
    start: datetime
    end: datetime
    document: DocumentFormat
    filename: str
    title: str


def plan_export(request: pb.ExportDriverTrackRequest) -> ExportPlan:
    """The export a request asks for; InvalidArgument naming what is wrong."""
    document = _document_format(request.format)
    if request.trip_id:
        return _trip_plan(request, document)
    driver_id = required_id(request.driver_id)
    start, end = bounded_time_range(request)
    span = f"{utc_iso(start)}/{utc_iso(end)}"
    name = f"{_file_part(driver_id)}_{_file_time(start)}_{_file_time(end)}"
    return ExportPlan(
        driver_id, start, end, document, f"{name}.{document.extension}", f"{driver_id} {span}"
    )


def _trip_plan(request: pb.ExportDriverTrackRequest, document: DocumentFormat) -> ExportPlan:
    if request.driver_id or request.HasField("start_time") or request.HasField("end_time"):
        raise InvalidArgument(
            "give either trip_id alone or driver_id with start_time and end_time, not both"
        )
    trip = decode_trip_id(request.trip_id)
    driver_id = validate_id(trip.driver_id)
    # A trip's times are its first and last fix, both inclusive; the store's ranges are half-open.
    start, end = trip.first, trip.last + _ONE_MICROSECOND
    _check_span(start, end, "trip_id spans more than 31 days: pass a trip_id from ListDriverTrips")
    name = f"{_file_part(driver_id)}_trip_{_file_time(trip.first)}_{_file_time(trip.last)}"
    title = f"{driver_id} trip {utc_iso(trip.first)}/{utc_iso(trip.last)}"
    return ExportPlan(driver_id, start, end, document, f"{name}.{document.extension}", title)


def _document_format(value: int) -> DocumentFormat:
    document = FORMATS.get(value)
    if document is None:
        known = ", ".join(v.name for v in pb.ExportFormat.DESCRIPTOR.values if v.number)
        raise InvalidArgument(f"format {value} is not an export format: use one of {known}")
    return document


def _check_span(start: datetime, end: datetime, message: str) -> None:
    if end - start > MAX_HISTORY_RANGE:
        raise InvalidArgument(f"{message} (asked for {(end - start) / timedelta(days=1):.1f} days)")


def _file_part(text: str) -> str:
    return _UNSAFE_IN_FILENAME.sub("_", text)


def _file_time(moment: datetime) -> str:
    # Colons are not allowed in file names on Windows; whole seconds are enough to tell files apart.
    return utc_iso(moment.replace(microsecond=0)).replace(":", "-")


def content_disposition(plan: ExportPlan) -> tuple[tuple[str, str], ...]:
    """Initial metadata that makes the HTTP download save under the plan's file name."""
    return (("content-disposition", f'attachment; filename="{plan.filename}"'),)


async def export_track(
    history: HistoryStore, plan: ExportPlan
) -> AsyncGenerator[pb.ExportDriverTrackResponse, None]:
    """The document in chunks: content type on each, the file name on the first."""
    info = TrackInfo(plan.driver_id, plan.start, plan.end, plan.title)
    content_type = plan.document.content_type
    filename = plan.filename
    sent = EXPORT_BYTES.labels(plan.document.name)
    async for data in chunked(plan.document.write(info, track_pages(history, plan))):
        yield pb.ExportDriverTrackResponse(
            body={"content_type": content_type, "data": data}, filename=filename
        )
        sent.inc(len(data))
        filename = ""


def track_pages(history: HistoryStore, plan: ExportPlan) -> PageSource:
    """Reads the plan's fixes as keyset pages, oldest first, each time it is called."""

    read = EXPORT_FIXES.labels(plan.document.name)

    async def pages() -> AsyncIterator[Sequence[FixRow]]:
        after: tuple[datetime, int] | None = None
        while True:
            rows = await history.fixes_page(plan.driver_id, plan.start, plan.end, after, PAGE_ROWS)
            read.inc(len(rows))
            if rows:
                yield rows
            if len(rows) < PAGE_ROWS:
                return
            after = (rows[-1].recorded_at, rows[-1].seq)

    return pages
