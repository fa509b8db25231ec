"""SearchNearbyDrivers: live drivers within a radius, nearest first, from Redis's geo index."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverAvailability, DriverLocation
from services.domain.errors import InvalidArgument
from services.domain.geodesy import EARTH_RADIUS_M, haversine_m
from services.domain.points import check_point
from services.live.store import GEO_MAX_LAT, LiveStore

MAX_RADIUS_M = 50_000.0
DEFAULT_MAX_RESULTS = 20
MAX_RESULTS = 500

# Redis measures on its own sphere, so its metres are this much longer than ours.
REDIS_EARTH_RADIUS_M = 6372797.560856
SPHERE_RATIO = REDIS_EARTH_RADIUS_M / EARTH_RADIUS_M
# The index keeps 52-bit geohashes, which put a member within about 0.6 m of its fix; searches are
# padded by this much so no fix inside the exact radius is lost to the rounding.
INDEX_SLACK_M = 2.0

# Redis is asked for 2 × max_results + 10 nearest members at first: stale and busy drivers are
# dropped after the read, and this covers a fleet up to about half busy in one round trip. When
# too few survive, the count is quadrupled until the answer is provably the nearest (see _settled).
OVERFETCH_FACTOR = 2
OVERFETCH_EXTRA = 10
GROWTH = 4
# GEOSEARCH gathers and sorts every member inside the radius before COUNT applies (34 ms for
# 100,000 drivers inside 50 km), so the search starts at this radius and grows by GROWTH: in a
# dense city the first ring already holds the answer, in a sparse one the rings are cheap.
FIRST_RADIUS_M = 1_000.0

AVAILABLE = (
    DriverAvailability.DRIVER_AVAILABILITY_UNSPECIFIED,
    DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE,
)


@dataclass(frozen=True, slots=True)
class IndexCircle:
    """A search circle as the geo index can take it: the centre moved inside the index's latitude
    limit (by `offset_m`) and the radius in Redis's metres, grown to cover the true circle."""

    latitude: float
    longitude: float
    redis_radius_m: float
    offset_m: float

    def lower_bound_m(self, redis_distance_m: float) -> float:
        """Our distance from the true centre is at least this for a member Redis puts at
        `redis_distance_m` from the query centre (triangle inequality plus rounding)."""
        return redis_distance_m / SPHERE_RATIO - INDEX_SLACK_M - self.offset_m


@dataclass(frozen=True, slots=True)
class Found:
    distance_m: float
    driver_id: str
    location: DriverLocation


def index_circle(lat: float, lng: float, radius_m: float) -> IndexCircle | None:
    """The geo-index query covering a circle, or None when the circle lies wholly beyond the
    index's latitude limit (Redis rejects centres there, so a polar one moves to the limit)."""
    query_lat = max(-GEO_MAX_LAT, min(GEO_MAX_LAT, lat))
    offset_m = haversine_m(lat, lng, query_lat, lng)
    if offset_m > radius_m + INDEX_SLACK_M:
        return None
    redis_radius_m = (radius_m + offset_m + INDEX_SLACK_M) * SPHERE_RATIO
    return IndexCircle(query_lat, lng, redis_radius_m, offset_m)


def reaches_polar(lat: float, radius_m: float) -> bool:
    """Whether a circle reaches latitudes the geo index cannot hold (those drivers are in the
    polar set). Along a meridian a circle reaches exactly radius / R radians north and south."""
    reach_deg = math.degrees(radius_m / EARTH_RADIUS_M)
    return lat + reach_deg >= GEO_MAX_LAT or lat - reach_deg <= -GEO_MAX_LAT


def check_radius(radius_m: float) -> float:
    if not (math.isfinite(radius_m) and 0.0 < radius_m <= MAX_RADIUS_M):
        raise InvalidArgument(
            f"radius_m must be greater than 0 and at most {MAX_RADIUS_M:.0f} metres, got {radius_m}"
        )
    return radius_m


def check_max_results(max_results: int) -> int:
    if max_results == 0:
        return DEFAULT_MAX_RESULTS
    if not 1 <= max_results <= MAX_RESULTS:
        raise InvalidArgument(
            f"max_results must be between 1 and {MAX_RESULTS} "
            f"(0 means the default, {DEFAULT_MAX_RESULTS}), got {max_results}"
        )
    return max_results


async def search_nearby_drivers(
    live: LiveStore, request: pb.SearchNearbyDriversRequest, now_s: float | None = None
) -> pb.SearchNearbyDriversResponse:
    """The live drivers within `radius_m` of `center`, nearest first (ties by driver id)."""
    lat, lng = check_point(request, "center")
    radius_m = check_radius(request.radius_m)
    limit = check_max_results(request.max_results)
    now = time.time() if now_s is None else now_s
    search = _Search(live, lat, lng, radius_m, request.available_only, now)
    found: list[Found] = []
    circle = index_circle(lat, lng, radius_m)
    if circle is not None:
        found += await search.from_index(circle, limit)
    if reaches_polar(lat, radius_m):
        found += await search.from_polar_set()
    found.sort(key=lambda f: (f.distance_m, f.driver_id))
    return pb.SearchNearbyDriversResponse(drivers=[_nearby(f, now) for f in found[:limit]])


class _Search:
    """One search: its centre, filters and clock, and the drivers already read."""

    def __init__(
        self,
        live: LiveStore,
        lat: float,
        lng: float,
        radius_m: float,
        available_only: bool,
        now_s: float,
    ) -> None:
        self._live = live
        self._lat, self._lng, self._radius_m = lat, lng, radius_m
        self._available_only = available_only
        self._now_s = now_s
        self._seen: dict[str, Found | None] = {}

    async def from_index(self, circle: IndexCircle, limit: int) -> list[Found]:
        """The eligible index members inside the radius, enough of them to hold the nearest
        `limit`; members found dead are removed from the index on the way (lazy cleanup)."""
        count = OVERFETCH_FACTOR * limit + OVERFETCH_EXTRA
        full_radius = circle.redis_radius_m
        radius = min(full_radius, (FIRST_RADIUS_M + circle.offset_m) * SPHERE_RATIO)
        while True:
            hits = await self._live.drivers_nearest(
                circle.latitude, circle.longitude, radius, count
            )
            dead = await self._read([member for member, _ in hits if member not in self._seen])
            await self._live.forget_dead(dead, self._now_s)
            found = [f for member, _ in hits if (f := self._seen[member]) is not None]
            truncated = len(hits) == count
            if not truncated and radius >= full_radius:
                return found  # every member of the whole circle was read
            # Members Redis did not return are at least as far as its last one, or the radius.
            reached = hits[-1][1] if truncated else radius
            if _settled(found, circle.lower_bound_m(reached), limit):
                return found
            if truncated:
                count *= GROWTH
            else:
                radius = min(full_radius, radius * GROWTH)

    async def from_polar_set(self) -> list[Found]:
        """The eligible drivers of the polar set inside the radius (brute force: it is small)."""
        # A driver that crossed the limit between the two reads is in both: keep the first.
        polar = await self._live.live_polar_driver_ids(self._now_s)
        ids = [driver_id for driver_id in polar if driver_id not in self._seen]
        await self._read(ids)
        return [f for driver_id in ids if (f := self._seen[driver_id]) is not None]

    async def _read(self, driver_ids: list[str]) -> list[str]:
        """Reads drivers into `_seen` (None unless eligible); returns those that are dead."""
        if not driver_ids:
            return []
        dead = []
        states = await self._live.driver_states(driver_ids)
        for driver_id, (location, availability) in zip(driver_ids, states, strict=True):
            if location is None or not self._live.is_live_at(location, self._now_s):
                dead.append(driver_id)
                self._seen[driver_id] = None
            else:
                self._seen[driver_id] = self._eligible(location, availability)
        return dead

    def _eligible(
        self, location: DriverLocation, availability: DriverAvailability.ValueType
    ) -> Found | None:
        if self._available_only and availability not in AVAILABLE:
            return None
        pos = location.position
        distance_m = haversine_m(self._lat, self._lng, pos.latitude, pos.longitude)
        if distance_m > self._radius_m:
            return None
        # Answer with the driver's availability now, which the hash holds, not at the fix.
        location.availability = availability
        return Found(distance_m, location.driver_id, location)


def _settled(found: list[Found], floor_m: float, limit: int) -> bool:
    """Whether the nearest `limit` are known: every member Redis did not return is at least
    `floor_m` away, so `limit` drivers no farther than that cannot be beaten."""
    return sum(1 for f in found if f.distance_m <= floor_m) >= limit


def _nearby(found: Found, now_s: float) -> pb.NearbyDriver:
    nearby = pb.NearbyDriver(location=found.location, distance_m=found.distance_m)
    # A fix may be stamped a little ahead of our clock (allowed skew): its age is then zero.
    age_ns = int(now_s * 1e9) - found.location.recorded_at.ToNanoseconds()
    nearby.age.FromNanoseconds(max(0, age_ns))
    return nearby
