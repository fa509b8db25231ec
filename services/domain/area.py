"""Bounding boxes (antimeridian-aware) and the coarse grid cells whose channels carry area fixes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ridemesh.v1.common_pb2 import BoundingBox
from services.domain.errors import InvalidArgument
from services.domain.geodesy import EARTH_RADIUS_M, haversine_m, normalize_lng

# Fixes are also published on the channel of their 1°×1° cell, so an area watcher subscribes
# to the few cells its box touches instead of to every driver.
CELL_DEGREES = 1


@dataclass(frozen=True, slots=True)
class Box:
    """A latitude/longitude box; `west > east` means it crosses the antimeridian."""

    south: float
    west: float
    north: float
    east: float

    @classmethod
    def from_proto(cls, bounds: BoundingBox) -> Box:
        """Validates a BoundingBox message, raising InvalidArgument naming what is wrong."""
        if not (bounds.HasField("south_west") and bounds.HasField("north_east")):
            raise InvalidArgument("bounds needs both south_west and north_east corners")
        sw, ne = bounds.south_west, bounds.north_east
        values = (sw.latitude, sw.longitude, ne.latitude, ne.longitude)
        if not all(math.isfinite(v) for v in values):
            raise InvalidArgument("bounds corners must be finite numbers")
        for lat in (sw.latitude, ne.latitude):
            if not -90.0 <= lat <= 90.0:
                raise InvalidArgument(f"bounds latitude must be between -90 and 90, got {lat}")
        for lng in (sw.longitude, ne.longitude):
            if not -180.0 <= lng <= 180.0:
                raise InvalidArgument(f"bounds longitude must be between -180 and 180, got {lng}")
        if sw.latitude > ne.latitude:
            raise InvalidArgument(
                f"bounds south_west latitude {sw.latitude} is north of north_east {ne.latitude}"
            )
        return cls(sw.latitude, sw.longitude, ne.latitude, ne.longitude)

    @property
    def crosses_antimeridian(self) -> bool:
        return self.west > self.east

    def contains(self, lat: float, lng: float) -> bool:
        if not self.south <= lat <= self.north:
            return False
        if self.crosses_antimeridian:
            return lng >= self.west or lng <= self.east
        return self.west <= lng <= self.east

    def lng_span(self) -> float:
        span = self.east - self.west
        return span + 360.0 if span < 0 else span

    def center(self) -> tuple[float, float]:
        return (self.south + self.north) / 2, normalize_lng(self.west + self.lng_span() / 2)

    def covering_radius_m(self) -> float:
        """A radius around `center()` that holds the whole box (for a geo-index search)."""
        lat, lng = self.center()
        if self.contains(-lat, normalize_lng(lng + 180.0)):
            # The box holds the centre's antipode: only the whole sphere covers it.
            return math.pi * EARTH_RADIUS_M
        # Otherwise the farthest points of a lat/lng box from its centre are its corners.
        corners = [(la, lo) for la in (self.south, self.north) for lo in (self.west, self.east)]
        return max(haversine_m(lat, lng, la, lo) for la, lo in corners) + 1.0


def cell_of(lat: float, lng: float) -> tuple[int, int]:
    """The grid cell holding a point; the poles and 180° fold into the edge cells."""
    row = min(math.floor(lat / CELL_DEGREES), 90 // CELL_DEGREES - 1)
    col = min(math.floor(lng / CELL_DEGREES), 180 // CELL_DEGREES - 1)
    return row, col


def cells_for_box(box: Box, max_cells: int) -> list[tuple[int, int]] | None:
    """Every cell the box touches, or None when there are more than `max_cells`."""
    row_lo, _ = cell_of(box.south, 0.0)
    row_hi, _ = cell_of(box.north, 0.0)
    if box.crosses_antimeridian:
        cols = _cols(box.west, 180.0) + _cols(-180.0, box.east)
    else:
        cols = _cols(box.west, box.east)
    if (row_hi - row_lo + 1) * len(cols) > max_cells:
        return None
    return [(row, col) for row in range(row_lo, row_hi + 1) for col in cols]


def _cols(west: float, east: float) -> list[int]:
    return list(range(cell_of(0.0, west)[1], cell_of(0.0, east)[1] + 1))
