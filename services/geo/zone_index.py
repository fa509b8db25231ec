"""The in-memory spatial index of geofences each GeoQuery replica answers point questions from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shapely import STRtree
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry


@dataclass(frozen=True, slots=True)
class Zone:
    """One geofence as the index holds it; `geometry` is in (longitude, latitude) order."""

    geofence_id: str
    display_name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    geometry: BaseGeometry = field(default_factory=Point)

    def has_labels(self, wanted: Mapping[str, str]) -> bool:
        return all(self.labels.get(key) == value for key, value in wanted.items())


class ZoneIndex:
    """An immutable STRtree over zones; a refresh builds a new index and swaps it in whole."""

    def __init__(self, zones: Iterable[Zone] = ()) -> None:
        self._zones = tuple(zones)
        self._by_id = {zone.geofence_id: zone for zone in self._zones}
        self._tree = STRtree([zone.geometry for zone in self._zones])

    def __len__(self) -> int:
        return len(self._zones)

    def get(self, geofence_id: str) -> Zone | None:
        return self._by_id.get(geofence_id)

    def containing(self, latitude: float, longitude: float) -> list[Zone]:
        """Zones that contain the point, its boundary included (as PostGIS ST_Intersects)."""
        if not self._zones:
            return []
        hits = self._tree.query(Point(longitude, latitude), predicate="intersects")
        return [self._zones[i] for i in sorted(hits)]
