"""ListDriverTrips and GetTripSummary: trips and stops detected from a driver's stored fixes.

Choices a caller can rely on:
- The range is [start_time, end_time), at most 31 days; trips and stops are cut at its edges
  (detection sees only the fixes inside it).
- `page_size` 0 means 100; above 1,000 is read as 1,000 (AIP-158); negative is INVALID_ARGUMENT.
- A page holds up to `page_size` trips and the stops that ended since the previous page's last
  trip (the last page also those after its own last trip). `page_token` is opaque and only
  valid with the same driver_id, start_time and end_time.
- Paging resumes detection where it finds the same answer: at the start of the stop before the
  previous page's last trip's drive (services.domain.trips), dropping what that page had.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from ridemesh.v1 import common_pb2
from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain import pagetoken
from services.domain.errors import InvalidArgument
from services.domain.micros import from_micros, to_micros
from services.domain.trip_ids import TripSpan, encode_trip_id
from services.domain.trips import Event, Fix, FixKey, Stop, Trip, TripDetector, TripSettings
from services.domain.validation import required_id
from services.geo.track import bounded_time_range
from services.history.ride_spans import ride_spans
from services.history.store import HistoryStore

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
# Fixes per keyset read: large pages keep round trips few over a driver-month (~650k rows).
# A page of trips starts with small reads that double, so it reads little past its last trip.
FETCH_ROWS = 32_768
FIRST_FETCH_ROWS = 2_048

_BAD_TOKEN = (
    "page_token is not valid for this request: pass the next_page_token of a ListDriverTrips "
    "call with the same driver_id, start_time and end_time"
)


@dataclass(frozen=True, slots=True)
class _Query:
    driver_id: str
    start: datetime
    end: datetime


@dataclass
class _Page:
    """Collects one page's events: trips after the previous page's, and stops among them."""

    size: int
    after: FixKey | None
    trips: list[Trip] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    stops_before_last_trip: int = 0
    more: bool = False

    def take(self, events: list[Event]) -> bool:
        """Adds events; True once a trip beyond the page shows there is another page."""
        for event in events:
            if self.after is not None and (event.last.micros, event.last.seq) <= self.after:
                continue  # the previous page had it
            if isinstance(event, Stop):
                self.stops.append(event)
            elif len(self.trips) == self.size:
                self.more = True
                del self.stops[self.stops_before_last_trip :]  # the next page's
                return True
            else:
                self.trips.append(event)
                self.stops_before_last_trip = len(self.stops)
        return False


async def list_driver_trips(
    history: HistoryStore, request: pb.ListDriverTripsRequest, settings: TripSettings
) -> pb.ListDriverTripsResponse:
    """One page of a driver's trips and stops; InvalidArgument names a wrong field."""
    query = _query(request)
    size = page_size_of(request.page_size)
    request_key = f"trips\0{query.driver_id}\0{to_micros(query.start)}\0{to_micros(query.end)}"
    resume, after = _decode_token(request.page_token, request_key, query)
    rides = await ride_spans(history, query.driver_id, query.start, query.end)
    detector = TripDetector(settings, rides)
    page = _Page(size, after)
    pages = history.motion_pages(
        query.driver_id, query.start, query.end, resume, FETCH_ROWS, FIRST_FETCH_ROWS
    )
    async for fixes in pages:
        if page.take(detector.push(fixes)):
            await pages.aclose()
            break
    else:
        page.take(detector.finish())
    response = pb.ListDriverTripsResponse(
        trips=[trip_message(query.driver_id, trip) for trip in page.trips],
        stops=[stop_message(query.driver_id, stop) for stop in page.stops],
    )
    if page.more:
        last = page.trips[-1]
        position = {"r": list(last.resume_from), "k": [last.last.micros, last.last.seq]}
        response.next_page_token = pagetoken.encode(position, request_key)
    return response


async def get_trip_summary(
    history: HistoryStore, request: pb.GetTripSummaryRequest, settings: TripSettings
) -> pb.GetTripSummaryResponse:
    """A driver's totals over the range, from one detection pass over its fixes."""
    query = _query(request)
    rides = await ride_spans(history, query.driver_id, query.start, query.end)
    detector = TripDetector(settings, rides)
    totals = _Totals()
    async for fixes in history.motion_pages(
        query.driver_id, query.start, query.end, None, FETCH_ROWS
    ):
        totals.fixes += len(fixes)
        totals.add(detector.push(fixes))
    totals.add(detector.finish())
    return totals.message(query.driver_id)


@dataclass
class _Totals:
    distance_m: float = 0.0
    driving_us: int = 0
    moving_s: float = 0.0
    stopped_us: int = 0
    max_speed_mps: float = 0.0
    trips: int = 0
    stops: int = 0
    fixes: int = 0

    def add(self, events: list[Event]) -> None:
        for event in events:
            span_us = event.last.micros - event.first.micros
            if isinstance(event, Stop):
                self.stops += 1
                self.stopped_us += span_us
                continue
            self.trips += 1
            self.driving_us += span_us
            self.distance_m += event.distance_m
            self.moving_s += event.moving_s
            self.max_speed_mps = max(self.max_speed_mps, event.max_speed_mps)

    def message(self, driver_id: str) -> pb.GetTripSummaryResponse:
        driving_s = self.driving_us / 1_000_000
        return pb.GetTripSummaryResponse(
            driver_id=driver_id,
            distance_m=self.distance_m,
            driving_time=_duration(self.driving_us),
            moving_time=_duration(round(self.moving_s * 1_000_000)),
            stopped_time=_duration(self.stopped_us),
            average_speed_mps=self.distance_m / driving_s if driving_s > 0 else 0.0,
            max_speed_mps=self.max_speed_mps,
            trip_count=self.trips,
            stop_count=self.stops,
            fix_count=self.fixes,
        )


def _query(request: pb.ListDriverTripsRequest | pb.GetTripSummaryRequest) -> _Query:
    driver_id = required_id(request.driver_id)
    start, end = bounded_time_range(request)
    return _Query(driver_id, start, end)


def page_size_of(requested: int) -> int:
    """0 means the default; above the maximum is read as the maximum; negative is an error."""
    return pagetoken.page_size(requested, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _decode_token(
    token: str, request_key: str, query: _Query
) -> tuple[FixKey | None, FixKey | None]:
    """(where detection resumes, the last trip already sent), or (None, None) for page one."""
    if not token:
        return None, None
    position = pagetoken.decode(token, request_key)
    resume, after = _key(position.get("r")), _key(position.get("k"))
    lowest, highest = to_micros(query.start), to_micros(query.end)
    if resume is None or after is None or not lowest <= resume[0] <= after[0] < highest:
        raise InvalidArgument(_BAD_TOKEN)
    return resume, after


def _key(value: object) -> FixKey | None:
    if isinstance(value, list) and len(value) == 2:
        micros, seq = value
        if type(micros) is int and type(seq) is int:
            return micros, seq
    return None


def trip_message(driver_id: str, trip: Trip) -> pb.Trip:
    """A detected trip as the API's Trip, named by its driver and first and last fix times."""
    span = TripSpan(driver_id, from_micros(trip.first.micros), from_micros(trip.last.micros))
    return pb.Trip(
        trip_id=encode_trip_id(span),
        driver_id=driver_id,
        start_time=_timestamp(trip.first.micros),
        end_time=_timestamp(trip.last.micros),
        start_position=_position(trip.first),
        end_position=_position(trip.last),
        distance_m=trip.distance_m,
        duration=_duration(trip.last.micros - trip.first.micros),
        moving_time=_duration(round(trip.moving_s * 1_000_000)),
        average_speed_mps=trip.average_speed_mps,
        max_speed_mps=trip.max_speed_mps,
        ride_id=trip.ride_id,
        fix_count=trip.fix_count,
    )


def stop_message(driver_id: str, stop: Stop) -> pb.Stop:
    """A detected stop as the API's Stop, placed at its first still fix."""
    return pb.Stop(
        driver_id=driver_id,
        position=_position(stop.first),
        start_time=_timestamp(stop.first.micros),
        end_time=_timestamp(stop.last.micros),
        duration=_duration(stop.last.micros - stop.first.micros),
    )


def _position(fix: Fix) -> common_pb2.LatLng:
    return common_pb2.LatLng(latitude=fix.latitude, longitude=fix.longitude)


def _timestamp(micros: int) -> Timestamp:
    seconds, rest = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=rest * 1_000)


def _duration(micros: int) -> Duration:
    seconds, rest = divmod(micros, 1_000_000)
    return Duration(seconds=seconds, nanos=rest * 1_000)
