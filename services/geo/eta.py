"""EstimateEta: from a point or a driver's live position, through a Router (domain/routing.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.errors import InvalidArgument, NotFound
from services.domain.geodesy import haversine_m
from services.domain.points import check_point
from services.domain.routing import LatLngLike, Router
from services.domain.validation import validate_id
from services.live.store import LiveStore


async def estimate_eta(
    live: LiveStore, router: Router, request: pb.EstimateEtaRequest
) -> pb.EstimateEtaResponse:
    """The ETA from a point or a driver's live position to `destination`."""
    destination = _point(*check_point(request, "destination"))
    origin, speed_hint = await _origin(live, request)
    route = await router.route(origin, destination, speed_hint)
    response = pb.EstimateEtaResponse(
        distance_m=route.distance_m,
        straight_line_distance_m=haversine_m(
            origin.latitude, origin.longitude, destination.latitude, destination.longitude
        ),
        detour_factor=route.detour_factor,
        speed_mps=route.speed_mps,
        method=route.method,
    )
    response.eta.FromNanoseconds(round(route.duration_s * 1e9))
    return response


async def _origin(
    live: LiveStore, request: pb.EstimateEtaRequest
) -> tuple[LatLngLike, float | None]:
    """The starting point, and the driver's last reported speed when starting from a driver."""
    kind = request.WhichOneof("origin")
    if kind == "origin_position":
        return _point(*check_point(request, "origin_position")), None
    if kind != "driver_id":
        raise InvalidArgument("origin is required: set origin_position or driver_id")
    location = await live.get_location(validate_id(request.driver_id))
    if location is None:
        raise NotFound(
            f"driver {request.driver_id!r} has no live position "
            f"(no fix in the last {live.live_window_s:.0f} s)"
        )
    return location.position, float(location.speed_mps)


def _point(latitude: float, longitude: float) -> LatLngLike:
    return _LatLng(latitude, longitude)


@dataclass(frozen=True, slots=True)
class _LatLng:
    latitude: float
    longitude: float
