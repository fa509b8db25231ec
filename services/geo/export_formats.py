"""Track documents for ExportDriverTrack (GPX 1.1, GeoJSON, CSV), written page by page in chunks.

Each writer takes a `PageSource` (a callable that reads the track's stored fixes anew, oldest
first, a page at a time) and yields text; `chunked` turns that into byte chunks of a fixed size.
Memory is bounded by one page and one chunk however long the track, so a driver-month streams
like a driver-hour. Choices a reader of the files can rely on:
- Times are UTC in ISO 8601 with a `Z` (fractions of a second only when the fix has them).
- Numbers are plain decimals (no exponent). Coordinates keep every digit stored (the shortest
  round-trip form); speed, heading and accuracy are stored as 4-byte floats and are written with
  7 significant digits, which gives back the decimal the app sent rather than the float's binary
  noise (12.3, not 12.300000190734863).
- GPX: one `<trk>` with one `<trkseg>`; speed and course in Garmin's TrackPointExtension v2
  (what GPX readers understand), which GPX 1.1 admits in `<extensions>`.
- GeoJSON (RFC 7946, [longitude, latitude]): a LineString feature over every fix (only with two
  or more fixes: a line needs two positions), then one Point feature per fix. It reads the track
  twice; the second pass stops at the first pass's last fix, so fixes stored meanwhile after it
  do not make the points disagree with the line.
- CSV (RFC 4180, CRLF line ends): a header row, then one row per fix.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from services.domain.geodesy import haversine_m
from services.history.store import FixRow

# Every chunk but the last is exactly this long: big enough that per-message overhead is small,
# small enough to sit far under gRPC's 4 MiB message limit and to keep memory flat.
CHUNK_BYTES = 64 * 1024

PageSource = Callable[[], AsyncIterator[Sequence[FixRow]]]

CSV_COLUMNS = (
    "driver_id",
    "recorded_at",
    "latitude",
    "longitude",
    "speed_mps",
    "heading_deg",
    "accuracy_m",
    "seq",
)

GPX_NAMESPACE = "http://www.topografix.com/GPX/1/1"
TRACKPOINT_EXTENSION_NAMESPACE = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2"

# Characters XML 1.0 cannot carry at all, even escaped (C0 controls but tab, CR and LF; surrogates;
# U+FFFE and U+FFFF): replaced, so a strange name never makes the whole document unreadable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"})


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """What a document says about itself: whose track and which span (end exclusive)."""

    driver_id: str
    start: datetime
    end: datetime
    title: str


TrackWriter = Callable[[TrackInfo, PageSource], AsyncIterator[str]]


@dataclass(frozen=True, slots=True)
class DocumentFormat:
    """One export format: its media type, file extension and writer."""

    name: str
    content_type: str
    extension: str
    write: TrackWriter


async def chunked(pieces: AsyncIterable[str], size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """UTF-8 bytes of the joined pieces in chunks of exactly `size` bytes, the last one shorter
    (a multi-byte character may straddle two chunks: chunks are joined as bytes)."""
    buffer = bytearray()
    async for piece in pieces:
        buffer += piece.encode()
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z: 2026-12-07T08:00:00Z or 2026-12-07T08:00:00.250000Z."""
    text = moment.isoformat()
    if not text.endswith("+00:00"):  # per-fix hot path: stored times are UTC already
        text = moment.astimezone(UTC).isoformat()
    return text[:-6] + "Z"


def xml_text(value: str) -> str:
    """`value` safe as XML character data or a quoted attribute value."""
    return _NOT_XML.sub("\ufffd", value).translate(_XML_ESCAPES)


def xsd_decimal(value: float) -> str:
    """The shortest round-trip digits of `value` without an exponent (xsd:decimal has none)."""
    text = repr(value)
    return format(Decimal(text), "f") if "e" in text else text


def short_decimal(value: float) -> str:
    """A 4-byte float column's value as the decimal it was sent as (7 significant digits, no
    exponent): 12.300000190734863 is written 12.3."""
    text = f"{value:.7g}"
    return format(Decimal(text), "f") if "e" in text else text


# --- GPX 1.1 ----------------------------------------------------------------------------------


async def write_gpx(info: TrackInfo, pages: PageSource) -> AsyncIterator[str]:
    """A GPX 1.1 document: one track, one segment, a point per fix."""
    name = xml_text(info.title)
    yield (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<gpx version="1.1" creator="Ridemesh" xmlns="{GPX_NAMESPACE}"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        f' xmlns:gpxtpx="{TRACKPOINT_EXTENSION_NAMESPACE}"'
        f' xsi:schemaLocation="{GPX_NAMESPACE} {GPX_NAMESPACE}/gpx.xsd">\n'
        f"<metadata><name>{name}</name></metadata>\n"
        f"<trk><name>{name}</name><trkseg>\n"
    )
    async for page in pages():
        yield "".join(map(_trackpoint, page))
    yield "</trkseg></trk>\n</gpx>\n"


def _trackpoint(row: FixRow) -> str:
    # GPX longitudes are [-180, 180): the antimeridian's +180 is written as -180, the same place.
    longitude = row.longitude - 360.0 if row.longitude >= 180.0 else row.longitude
    course = short_decimal(row.heading_deg)
    if course == "360":  # 360 (or just under it, rounded) reads as north: the course is [0, 360)
        course = "0"
    return (
        f'<trkpt lat="{xsd_decimal(row.latitude)}" lon="{xsd_decimal(longitude)}">'
        f"<time>{utc_iso(row.recorded_at)}</time>"
        "<extensions><gpxtpx:TrackPointExtension>"
        f"<gpxtpx:speed>{short_decimal(row.speed_mps)}</gpxtpx:speed>"
        f"<gpxtpx:course>{course}</gpxtpx:course>"
        "</gpxtpx:TrackPointExtension></extensions></trkpt>\n"
    )


# --- GeoJSON ----------------------------------------------------------------------------------


async def write_geojson(info: TrackInfo, pages: PageSource) -> AsyncIterator[str]:
    """A FeatureCollection: the LineString of the whole track, then a Point per fix."""
    yield '{"type":"FeatureCollection","features":[\n'
    line = _LineWriter(info)
    async for page in pages():
        yield line.page(page)
    yield line.end()
    last = line.last_key
    separator = ",\n" if line.written else ""
    if last is not None:
        async for page in pages():
            points = [_point_feature(row) for row in page if (row.recorded_at, row.seq) <= last]
            if points:
                yield separator + ",\n".join(points)
                separator = ",\n"
    yield "\n]}\n"


class _LineWriter:
    """The LineString feature, written as pages arrive; opened at the second fix."""

    def __init__(self, info: TrackInfo) -> None:
        self._info = info
        self._first: FixRow | None = None
        self._previous: FixRow | None = None
        self.count = 0
        self.distance_m = 0.0
        self.last_key: tuple[datetime, int] | None = None
        self.written = False

    def page(self, rows: Sequence[FixRow]) -> str:
        parts: list[str] = []
        for row in rows:
            previous = self._previous
            if previous is None:
                self._first = row
            else:
                self.distance_m += haversine_m(
                    previous.latitude, previous.longitude, row.latitude, row.longitude
                )
                if self.count == 1:
                    parts.append(
                        '{"type":"Feature","geometry":{"type":"LineString","coordinates":['
                        + _position(previous)
                    )
                parts.append("," + _position(row))
            self._previous = row
            self.count += 1
        if self._previous is not None:
            self.last_key = (self._previous.recorded_at, self._previous.seq)
        return "".join(parts)

    def end(self) -> str:
        if self.count < 2 or self._first is None or self._previous is None:
            return ""
        self.written = True
        driver = _json_string(self._info.driver_id)
        return (
            f']}},"properties":{{"driver_id":{driver},'
            f'"start_time":"{utc_iso(self._first.recorded_at)}",'
            f'"end_time":"{utc_iso(self._previous.recorded_at)}",'
            f'"fix_count":{self.count},"distance_m":{self.distance_m!r}}}}}'
        )


def _position(row: FixRow) -> str:
    return f"[{row.longitude!r},{row.latitude!r}]"


def _point_feature(row: FixRow) -> str:
    return (
        '{"type":"Feature","geometry":{"type":"Point","coordinates":'
        f'{_position(row)}}},"properties":{{"time":"{utc_iso(row.recorded_at)}",'
        f'"seq":{row.seq},"speed_mps":{short_decimal(row.speed_mps)},'
        f'"heading_deg":{short_decimal(row.heading_deg)},'
        f'"accuracy_m":{short_decimal(row.accuracy_m)}}}}}'
    )


def _json_string(value: str) -> str:
    # Ids are a safe alphabet already; escaping anyway keeps the writer correct on its own.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in escaped) + '"'


# --- CSV --------------------------------------------------------------------------------------


async def write_csv(info: TrackInfo, pages: PageSource) -> AsyncIterator[str]:
    """A header row, then one row per fix. Only the driver id can need quoting (every other
    value is a number or a time), so it is quoted once per page by the csv module."""
    yield _csv_line(CSV_COLUMNS)
    async for page in pages():
        drivers = {row.driver_id: _csv_line((row.driver_id,))[:-2] for row in page[:1]}
        parts: list[str] = []
        for row in page:
            driver = drivers.get(row.driver_id)
            if driver is None:  # a page is one driver's; stay correct if it were not
                driver = drivers[row.driver_id] = _csv_line((row.driver_id,))[:-2]
            parts.append(
                f"{driver},{utc_iso(row.recorded_at)},{row.latitude!r},{row.longitude!r},"
                f"{short_decimal(row.speed_mps)},{short_decimal(row.heading_deg)},"
                f"{short_decimal(row.accuracy_m)},{row.seq}\r\n"
            )
        yield "".join(parts)


def _csv_line(values: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()


GPX = DocumentFormat("GPX", "application/gpx+xml", "gpx", write_gpx)
GEOJSON = DocumentFormat("GeoJSON", "application/geo+json", "geojson", write_geojson)
CSV = DocumentFormat("CSV", "text/csv", "csv", write_csv)
