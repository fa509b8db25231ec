"""The in-memory spatial index of geofences each GeoQuery replica answers point questions from."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shapely import STRtree
from shapely.affinity import scale
from shapely.geometry import Point, box
from shapely.geometry.base import BaseGeometry

from services.domain.geodesy import EARTH_RADIUS_M

# Metres along one degree of a great circle (a degree of latitude).
METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180.0


@dataclass(frozen=True, slots=True)
class ZoneTiming:
    """When a zone's events fire: ENTER after `entry_delay_s` inside, one DWELL after `dwell_s`
    inside, EXIT only beyond `hysteresis_m` outside. Zeros: at the first fix across the line."""

    entry_delay_s: float = 0.0
    dwell_s: float = 0.0
    hysteresis_m: float = 0.0


@dataclass(frozen=True, slots=True)
class Zone:
    """One geofence as the index holds it; `geometry` is in (longitude, latitude) order."""

    geofence_id: str
    display_name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    geometry: BaseGeometry = field(default_factory=Point)
    timing: ZoneTiming = field(default_factory=ZoneTiming)

    def has_labels(self, wanted: Mapping[str, str]) -> bool:
        return all(self.labels.get(key) == value for key, value in wanted.items())


class ZoneIndex:
    """An immutable STRtree over zones; a refresh builds a new index and swaps it in whole."""

    def __init__(self, zones: Iterable[Zone] = ()) -> None:
        self._zones = tuple(zones)
        self._by_id = {zone.geofence_id: zone for zone in self._zones}
        self._tree = STRtree([zone.geometry for zone in self._zones])
        self._max_margin_m = max((zone.timing.hysteresis_m for zone in self._zones), default=0.0)

    def __len__(self) -> int:
        return len(self._zones)

    def get(self, geofence_id: str) -> Zone | None:
        return self._by_id.get(geofence_id)

    def in_margin(self, latitude: float, longitude: float) -> list[Zone]:
        """Zones with hysteresis whose band holds the point: outside the zone, but no farther
        than its `hysteresis_m` from it (metres on a local projection around the point)."""
        if self._max_margin_m <= 0.0:
            return []
        dlat = self._max_margin_m / METRES_PER_DEGREE
        dlng = min(180.0, dlat / max(math.cos(math.radians(latitude)), 1e-9))
        window = box(longitude - dlng, latitude - dlat, longitude + dlng, latitude + dlat)
        point = Point(longitude, latitude)
        found = []
        for i in sorted(self._tree.query(window, predicate="intersects")):
            zone = self._zones[i]
            margin = zone.timing.hysteresis_m
            if margin <= 0.0 or zone.geometry.intersects(point):
                continue
            if distance_m(zone.geometry, latitude, longitude) <= margin:
                found.append(zone)
        return found

    def containing(self, latitude: float, longitude: float) -> list[Zone]:
        """Zones that contain the point, its boundary included (as PostGIS ST_Intersects)."""
        if not self._zones:
            return []
        hits = self._tree.query(Point(longitude, latitude), predicate="intersects")
        return [self._zones[i] for i in sorted(hits)]


def distance_m(geometry: BaseGeometry, latitude: float, longitude: float) -> float:
    """Metres from the point to the geometry, on an equirectangular projection centred on the
    point: longitudes shrink by cos(latitude), so short distances are right at any latitude
    (good to well under 1% within the kilometre a hysteresis band spans)."""
    local = scale(
        geometry, xfact=math.cos(math.radians(latitude)), yfact=1.0, origin=(longitude, latitude)
    )
    return float(local.distance(Point(longitude, latitude))) * METRES_PER_DEGREE
