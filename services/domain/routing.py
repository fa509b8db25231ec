"""Routing for ETAs: an estimate, not a route — great-circle metres × a detour factor over a speed.

The answer knows nothing of roads, traffic or turns: it is the straight-line distance stretched by
a stated factor and driven at a stated speed. A road-routing engine (OSRM, Valhalla) plugs in by
implementing `Router` and being passed in place of `GreatCircleRouter` (GeoQueryService's
EstimateEta and RideService's WatchRide both take one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ridemesh.v1.geo_query_service_pb2 import EtaMethod
from services.domain.geodesy import haversine_m

# A driver's reported speed is used only inside this range: below it they are stopped (at a light,
# at pickup), above it the fix is a GPS glitch rather than a car; either way the default is better.
MIN_PLAUSIBLE_SPEED_MPS = 1.0
MAX_PLAUSIBLE_SPEED_MPS = 70.0


class EtaSettings(Protocol):
    """The two settings a great-circle router is made from (server.config.Settings has them)."""

    @property
    def eta_detour_factor(self) -> float: ...

    @property
    def eta_default_speed_mps(self) -> float: ...


class LatLngLike(Protocol):
    @property
    def latitude(self) -> float: ...

    @property
    def longitude(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Route:
    """A way from origin to destination as a router sees it."""

    distance_m: float
    duration_s: float
    method: EtaMethod.ValueType
    # Travel distance over great-circle distance, and the speed assumed (what the answer states).
    detour_factor: float
    speed_mps: float


class Router(Protocol):
    """Where a routing engine plugs in. `speed_hint_mps` is the driver's recent speed when
    known; a router with traffic data may ignore it."""

    async def route(
        self, origin: LatLngLike, destination: LatLngLike, speed_hint_mps: float | None = None
    ) -> Route: ...


@dataclass(frozen=True, slots=True)
class GreatCircleRouter:
    """Haversine metres × `detour_factor`, at the hinted speed when plausible, else the default."""

    detour_factor: float
    default_speed_mps: float

    def __post_init__(self) -> None:
        if not self.detour_factor >= 1.0:
            raise ValueError(f"detour_factor must be at least 1, got {self.detour_factor}")
        if not self.default_speed_mps > 0.0:
            raise ValueError(f"default_speed_mps must be positive, got {self.default_speed_mps}")

    @classmethod
    def from_settings(cls, settings: EtaSettings) -> GreatCircleRouter:
        return cls(settings.eta_detour_factor, settings.eta_default_speed_mps)

    def speed_for(self, speed_hint_mps: float | None) -> float:
        if speed_hint_mps is not None and (
            MIN_PLAUSIBLE_SPEED_MPS <= speed_hint_mps <= MAX_PLAUSIBLE_SPEED_MPS
        ):
            return speed_hint_mps
        return self.default_speed_mps

    async def route(
        self, origin: LatLngLike, destination: LatLngLike, speed_hint_mps: float | None = None
    ) -> Route:
        straight_m = haversine_m(
            origin.latitude, origin.longitude, destination.latitude, destination.longitude
        )
        distance_m = straight_m * self.detour_factor
        speed_mps = self.speed_for(speed_hint_mps)
        return Route(
            distance_m=distance_m,
            duration_s=distance_m / speed_mps,
            method=EtaMethod.ETA_METHOD_GREAT_CIRCLE,
            detour_factor=self.detour_factor,
            speed_mps=speed_mps,
        )
