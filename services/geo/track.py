"""GetDriverTrack: a driver's stored fixes between two times, paged, with distance and GeoJSON.

Choices a caller can rely on:
- Fixes come in (recorded_at, seq) order from the half-open range [start_time, end_time).
- `page_size` 0 means 1,000; above 10,000 or negative is INVALID_ARGUMENT (a bound the caller
  should know about rather than a silent cut, the same rule as SearchNearbyDrivers' limits).
- Pages continue one path: `distance_m` and `geojson` start at the previous page's last fix, so
  the GeoJSON line's length is `distance_m` and the pages' lines join end to start.
- `geojson` is always a LineString: no fixes give empty `coordinates` (RFC 7946 §3.1 allows it),
  a single position (a first page of one fix) is repeated so the line is valid and zero-long.
- `page_token` is opaque; it is only valid with the same driver_id, start_time and end_time
  (page_size may change between pages, as AIP-158 allows).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from google.protobuf.timestamp_pb2 import Timestamp

from ridemesh.v1 import common_pb2
from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.errors import InvalidArgument
from services.domain.geodesy import haversine_m
from services.domain.micros import from_micros, to_micros
from services.domain.validation import required_id
from services.history.store import FixRow, HistoryStore

DEFAULT_PAGE_SIZE = 1_000
MAX_PAGE_SIZE = 10_000

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_MAX_MICROS = (_MAX_SECONDS + 1) * 1_000_000 - 1

# version, fingerprint of the request, last (recorded_at µs since epoch, seq), last (lat, lng).
_TOKEN = struct.Struct("!B8sqqdd")
_TOKEN_VERSION = 1

Position = tuple[float, float]  # (latitude, longitude) in degrees
# Requests with the same start_time and end_time fields, validated alike.
RangeRequest = (
    pb.GetDriverTrackRequest
    | pb.ListDriverTripsRequest
    | pb.GetTripSummaryRequest
    | pb.ExportDriverTrackRequest
    | pb.ReplayFleetRequest
)
# Reads that summarise or copy a range of history (trips, summaries, exports) span at most this.
MAX_HISTORY_RANGE = timedelta(days=31)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the previous page ended: its last fix's key and position."""

    recorded_at: datetime
    seq: int
    latitude: float
    longitude: float


async def get_driver_track(
    history: HistoryStore, request: pb.GetDriverTrackRequest
) -> pb.GetDriverTrackResponse:
    """One page of a driver's track; raises InvalidArgument naming the field that is wrong."""
    driver_id = required_id(request.driver_id)
    start, end = time_range(request)
    page_size = page_size_of(request.page_size)
    fingerprint = request_fingerprint(driver_id, start, end)
    cursor = decode_page_token(request.page_token, fingerprint, start, end)
    after = None if cursor is None else (cursor.recorded_at, cursor.seq)
    # One row more than the page says whether another page exists, without an empty last page.
    rows = await history.fixes_page(driver_id, start, end, after, page_size + 1)
    page, more = rows[:page_size], len(rows) > page_size
    path = [(row.latitude, row.longitude) for row in page]
    if cursor is not None and path:
        path.insert(0, (cursor.latitude, cursor.longitude))
    response = pb.GetDriverTrackResponse(
        points=[driver_location(row) for row in page],
        distance_m=path_length_m(path),
        geojson=linestring_geojson(path),
    )
    if more:
        last = page[-1]
        response.next_page_token = encode_page_token(
            fingerprint, Cursor(last.recorded_at, last.seq, last.latitude, last.longitude)
        )
    return response


def time_range(request: RangeRequest) -> tuple[datetime, datetime]:
    """[start, end) from the request; both required, end after start."""
    if not request.HasField("start_time"):
        raise InvalidArgument("start_time is required")
    if not request.HasField("end_time"):
        raise InvalidArgument("end_time is required")
    start = _timestamp(request.start_time, "start_time")
    end = _timestamp(request.end_time, "end_time")
    if end <= start:
        raise InvalidArgument(
            f"end_time ({end.isoformat()}) must be after start_time ({start.isoformat()})"
        )
    return start, end


def bounded_time_range(request: RangeRequest) -> tuple[datetime, datetime]:
    """`time_range`, at most MAX_HISTORY_RANGE long."""
    start, end = time_range(request)
    if end - start > MAX_HISTORY_RANGE:
        raise InvalidArgument(
            f"end_time must be at most 31 days after start_time, got "
            f"{(end - start) / timedelta(days=1):.1f} days (ask for the range in parts)"
        )
    return start, end


def _timestamp(value: Timestamp, field: str) -> datetime:
    if not (_MIN_SECONDS <= value.seconds <= _MAX_SECONDS and 0 <= value.nanos < 1_000_000_000):
        raise InvalidArgument(
            f"{field} must be a valid timestamp between 0001-01-01 and 9999-12-31 UTC"
        )
    # Stored times have microseconds. Rounding nanoseconds UP keeps both bounds exact:
    # t >= start ⇔ t >= ceil(start) and t < end ⇔ t < ceil(end) for whole-microsecond t.
    micros = value.seconds * 1_000_000 - (-value.nanos // 1_000)
    return from_micros(min(micros, _MAX_MICROS))


def page_size_of(requested: int) -> int:
    """The page size to use: the default for 0, else 1 to MAX_PAGE_SIZE."""
    if requested < 0:
        raise InvalidArgument(f"page_size must not be negative, got {requested}")
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be at most {MAX_PAGE_SIZE:,}, got {requested:,}")
    return requested or DEFAULT_PAGE_SIZE


def request_fingerprint(driver_id: str, start: datetime, end: datetime) -> bytes:
    """8 bytes that differ (almost surely) between requests a token must not be reused across."""
    key = f"{driver_id}\0{to_micros(start)}\0{to_micros(end)}".encode()
    return hashlib.blake2b(key, digest_size=8, person=b"rm-track").digest()


def encode_page_token(fingerprint: bytes, cursor: Cursor) -> str:
    """An opaque, URL-safe token for the page after `cursor`."""
    packed = _TOKEN.pack(
        _TOKEN_VERSION,
        fingerprint,
        to_micros(cursor.recorded_at),
        cursor.seq,
        cursor.latitude,
        cursor.longitude,
    )
    return base64.urlsafe_b64encode(packed).decode("ascii")


def decode_page_token(
    token: str, fingerprint: bytes, start: datetime, end: datetime
) -> Cursor | None:
    """The cursor in `token` (None for an empty token), checked against this request."""
    if not token:
        return None
    invalid = InvalidArgument(
        "page_token is not valid for this request: pass the next_page_token of a GetDriverTrack "
        "call with the same driver_id, start_time and end_time"
    )
    try:
        version, print_, micros, seq, lat, lng = _TOKEN.unpack(
            base64.urlsafe_b64decode(token.encode("ascii"))
        )
        recorded_at = from_micros(micros)
    except (binascii.Error, struct.error, UnicodeError, ValueError, OverflowError) as exc:
        raise invalid from exc
    if version != _TOKEN_VERSION or print_ != fingerprint or not start <= recorded_at < end:
        raise invalid
    if not (math.isfinite(lat) and math.isfinite(lng) and abs(lat) <= 90 and abs(lng) <= 180):
        raise invalid
    return Cursor(recorded_at, seq, lat, lng)


def path_length_m(path: Sequence[Position]) -> float:
    """Sum of great-circle legs along the path, in metres (0 for fewer than two positions)."""
    return math.fsum(haversine_m(a[0], a[1], b[0], b[1]) for a, b in pairwise(path))


def linestring_geojson(path: Sequence[Position]) -> str:
    """The path as a GeoJSON LineString geometry in [longitude, latitude] order.

    Longitudes stay in [-180, 180], so a path across the antimeridian is drawn the long way
    round by naive renderers; the distance is unaffected (it is great-circle)."""
    coordinates = [[lng, lat] for lat, lng in path]
    if len(coordinates) == 1:
        coordinates.append(coordinates[0])  # a LineString needs two positions
    return json.dumps({"type": "LineString", "coordinates": coordinates}, separators=(",", ":"))


def driver_location(row: FixRow) -> common_pb2.DriverLocation:
    """A stored fix as the API's DriverLocation (history does not keep availability)."""
    # Per-point hot path (up to 10,000 a page): Timestamps from integer microseconds are ~3x
    # cheaper than Timestamp.FromDatetime, and exact.
    return common_pb2.DriverLocation(
        driver_id=row.driver_id,
        position=common_pb2.LatLng(latitude=row.latitude, longitude=row.longitude),
        heading_deg=row.heading_deg,
        speed_mps=row.speed_mps,
        accuracy_m=row.accuracy_m,
        seq=row.seq,
        recorded_at=_to_timestamp(row.recorded_at),
        received_at=_to_timestamp(row.received_at),
    )


def _to_timestamp(moment: datetime) -> Timestamp:
    seconds, micros = divmod(to_micros(moment), 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1_000)
