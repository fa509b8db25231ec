"""The demo zones a simulated city carries so geofence events flow: a station, a park and a
business district, placed and sized in proportion to the city's radius. In the default city
(Bengaluru, 3 km) they sit about where KSR City station, Cubbon Park and MG Road are;
Kempegowda airport, 30 km north, lies outside the simulated city and is left out."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from grpc import aio

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from services.ops.simulator.city import Grid
from services.ops.simulator.driver import Metadata

log = logging.getLogger(__name__)
SOURCE_LABEL = ("source", "simulator")


@dataclass(frozen=True)
class DemoZone:
    """A rectangle centred `east`, `north` from the city centre, `width` × `height` in size, all
    as fractions of the city's radius."""

    name: str
    kind: str
    east: float
    north: float
    width: float
    height: float

    def geojson(self, grid: Grid) -> str:
        """The zone as a GeoJSON Polygon, counter-clockwise, closed, longitude first."""
        r = grid.radius_m
        x0, x1 = (self.east - self.width / 2) * r, (self.east + self.width / 2) * r
        y0, y1 = (self.north - self.height / 2) * r, (self.north + self.height / 2) * r
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
        ring = [[lng, lat] for lat, lng in (grid.to_latlng(x, y) for x, y in corners)]
        return json.dumps({"type": "Polygon", "coordinates": [ring]})


DEMO_ZONES = (
    DemoZone("City railway station", "station", -0.85, 0.22, 0.2, 0.12),
    DemoZone("Central park", "park", -0.06, 0.17, 0.3, 0.3),
    DemoZone("Business district", "business", 0.43, 0.15, 0.23, 0.12),
)


async def ensure_demo_zones(
    channel: aio.Channel, metadata: Metadata, grid: Grid
) -> list[pb.Geofence]:
    """Creates the demo zones this city lacks (by name, among zones labelled source=simulator
    near this centre) and returns all of them. Needs an ops or service token."""
    geo = geo_grpc.GeoQueryServiceStub(channel)
    city = f"{grid.center_lat:.4f},{grid.center_lng:.4f}"
    existing: dict[str, pb.Geofence] = {}
    token = ""
    while True:
        page = await geo.ListGeofences(
            pb.ListGeofencesRequest(page_size=500, page_token=token, filter="source=simulator"),
            metadata=metadata,
            timeout=10.0,
        )
        for zone in page.geofences:
            if zone.labels.get("city") == city:
                existing[zone.display_name] = zone
        token = page.next_page_token
        if not token:
            break
    for demo in DEMO_ZONES:
        if demo.name in existing:
            continue
        zone = pb.Geofence(
            display_name=demo.name,
            geojson=demo.geojson(grid),
            labels={SOURCE_LABEL[0]: SOURCE_LABEL[1], "kind": demo.kind, "city": city},
        )
        created = await geo.CreateGeofence(
            pb.CreateGeofenceRequest(geofence=zone), metadata=metadata, timeout=10.0
        )
        existing[demo.name] = created.geofence
        log.info("created demo zone %s (%s)", demo.name, created.geofence.geofence_id)
    return [existing[d.name] for d in DEMO_ZONES]
