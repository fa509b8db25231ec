"""GetSupplyHeatmap: available live drivers and open ride requests per H3 cell in a box."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable

import h3

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1.common_pb2 import LatLng
from services.domain.area import Box
from services.domain.errors import InvalidArgument
from services.domain.geodesy import EARTH_RADIUS_M
from services.geo.nearby import AVAILABLE, index_circle
from services.live.names import OPEN_REQUESTS_KEY
from services.live.store import GEO_MAX_LAT, LiveStore

MAX_RESOLUTION = 10
# One answer covers at most about this many cells (estimated from the box's area), so a single
# call cannot ask for the whole world at a street-level resolution.
MAX_CELLS = 20_000


def box_area_m2(box: Box) -> float:
    """The area of a latitude/longitude box on our sphere."""
    band = math.sin(math.radians(box.north)) - math.sin(math.radians(box.south))
    return EARTH_RADIUS_M**2 * math.radians(box.lng_span()) * band


def covering_radius_m(box: Box) -> float:
    """A radius around the box's centre that holds the box. Past 180° of longitude the farthest
    point can lie mid-way along the west or east edge rather than at a corner (which is all
    `Box.covering_radius_m` looks at), so such boxes take the whole sphere."""
    if box.lng_span() > 180.0:
        return math.pi * EARTH_RADIUS_M
    return box.covering_radius_m()


def estimated_cells(box: Box, resolution: int) -> float:
    return box_area_m2(box) / float(h3.average_hexagon_area(resolution, unit="m^2"))


def check_request(request: pb.GetSupplyHeatmapRequest) -> tuple[Box, int]:
    """The box and resolution, or InvalidArgument naming the field and its bound."""
    resolution = request.resolution
    if not 0 <= resolution <= MAX_RESOLUTION:
        raise InvalidArgument(
            f"resolution must be an H3 resolution from 0 to {MAX_RESOLUTION}, got {resolution}"
        )
    box = Box.from_proto(request.bounds)
    cells = estimated_cells(box, resolution)
    if cells > MAX_CELLS:
        finest = max(r for r in range(MAX_RESOLUTION + 1) if estimated_cells(box, r) <= MAX_CELLS)
        raise InvalidArgument(
            f"bounds cover about {cells:,.0f} H3 cells at resolution {resolution}; at most "
            f"{MAX_CELLS:,} cells are allowed: shrink the box or use resolution {finest} or coarser"
        )
    return box, resolution


async def supply_heatmap(
    live: LiveStore, request: pb.GetSupplyHeatmapRequest, now_s: float | None = None
) -> pb.GetSupplyHeatmapResponse:
    """Per cell: available drivers with a live fix, and open requests, in `bounds`."""
    box, resolution = check_request(request)
    now = time.time() if now_s is None else now_s
    drivers = Counter(_cells(await _available_drivers(live, box, now), resolution))
    requests = Counter(_cells(await _open_requests(live, box), resolution))
    cells = []
    for cell in sorted(drivers.keys() | requests.keys()):
        lat, lng = h3.cell_to_latlng(cell)
        cells.append(
            pb.HeatmapCell(
                h3_cell=cell,
                center=LatLng(latitude=lat, longitude=lng),
                available_drivers=drivers[cell],
                open_requests=requests[cell],
            )
        )
    return pb.GetSupplyHeatmapResponse(cells=cells, resolution=resolution)


async def _available_drivers(live: LiveStore, box: Box, now_s: float) -> list[tuple[float, float]]:
    """Positions of the available, live drivers in the box: from the geo index, plus the polar
    set when the box reaches beyond the index's latitude limit. Dead index members are dropped."""
    ids = await _index_members(live, box)
    if box.north >= GEO_MAX_LAT or box.south <= -GEO_MAX_LAT:
        known = set(ids)  # a driver crossing the limit between the two reads is in both
        ids += [i for i in await live.live_polar_driver_ids(now_s) if i not in known]
    positions, dead = [], []
    for driver_id, (location, availability) in zip(ids, await live.driver_states(ids), strict=True):
        if location is None or not live.is_live_at(location, now_s):
            dead.append(driver_id)
        elif availability in AVAILABLE:
            lat, lng = location.position.latitude, location.position.longitude
            if box.contains(lat, lng):
                positions.append((lat, lng))
    await live.forget_dead(dead, now_s)
    return positions


async def _open_requests(live: LiveStore, box: Box) -> list[tuple[float, float]]:
    """Pickup positions of the open requests in the box, as the request index holds them."""
    circle = index_circle(*box.center(), covering_radius_m(box))
    if circle is None:
        return []
    hits = await live.geo_within(
        OPEN_REQUESTS_KEY, circle.latitude, circle.longitude, circle.redis_radius_m
    )
    return [(lat, lng) for _, lat, lng in hits if box.contains(lat, lng)]


async def _index_members(live: LiveStore, box: Box) -> list[str]:
    circle = index_circle(*box.center(), covering_radius_m(box))
    if circle is None:  # the box lies wholly beyond the index's latitude limit
        return []
    hits = await live.drivers_within(circle.latitude, circle.longitude, circle.redis_radius_m)
    return [member for member, _, _ in hits]


def _cells(positions: Iterable[tuple[float, float]], resolution: int) -> Iterable[str]:
    return (str(h3.latlng_to_cell(lat, lng, resolution)) for lat, lng in positions)
