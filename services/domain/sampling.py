"""How often and how accurately a driver's app should send fixes, by what the driver is doing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from ridemesh.v1.location_service_pb2 import DriverActivity
from services.domain.geodesy import haversine_m

Activity: TypeAlias = DriverActivity.ValueType

IDLE = DriverActivity.DRIVER_ACTIVITY_IDLE
AVAILABLE = DriverActivity.DRIVER_ACTIVITY_AVAILABLE
TO_PICKUP = DriverActivity.DRIVER_ACTIVITY_TO_PICKUP
NEAR_PICKUP = DriverActivity.DRIVER_ACTIVITY_NEAR_PICKUP
ON_RIDE = DriverActivity.DRIVER_ACTIVITY_ON_RIDE
ACTIVITIES: tuple[Activity, ...] = (IDLE, AVAILABLE, TO_PICKUP, NEAR_PICKUP, ON_RIDE)


@dataclass(frozen=True, slots=True)
class Sampling:
    """Send a fix every `interval_s`, asking the device for `accuracy_m` or better."""

    interval_s: float
    accuracy_m: float


# Parked drivers cost little; a driver about to meet a rider is watched closely (the rider's map
# and the proximity events want a fresh position); riding and cruising sit in between.
DEFAULT_TABLE: Mapping[Activity, Sampling] = {
    IDLE: Sampling(30.0, 50.0),
    AVAILABLE: Sampling(4.0, 20.0),
    TO_PICKUP: Sampling(2.0, 10.0),
    NEAR_PICKUP: Sampling(1.0, 5.0),
    ON_RIDE: Sampling(3.0, 10.0),
}


@dataclass(frozen=True, slots=True)
class SamplingPolicy:
    """The hint per activity, when an available driver counts as idle, and how often an app may
    be asked for a fix now."""

    table: Mapping[Activity, Sampling] = field(default_factory=lambda: dict(DEFAULT_TABLE))
    # An available driver whose fixes stayed within idle_radius_m for idle_after_s is idle.
    idle_radius_m: float = 30.0
    idle_after_s: float = 120.0
    # At most one fix request per driver this often, however many watchers start.
    fix_request_gap_s: float = 2.0

    def __post_init__(self) -> None:
        missing = [DriverActivity.Name(a) for a in ACTIVITIES if a not in self.table]
        if missing:
            raise ValueError(f"the sampling table has no entry for {', '.join(missing)}")
        bad = [DriverActivity.Name(a) for a, s in self.table.items() if not _sane(s)]
        if bad:
            raise ValueError(
                f"sampling of {', '.join(bad)} must have an interval and accuracy above 0"
            )
        if self.idle_radius_m <= 0 or self.idle_after_s <= 0 or self.fix_request_gap_s < 0:
            raise ValueError("idle radius and time must be above 0, the fix request gap not below")

    def sampling(self, activity: Activity) -> Sampling:
        """The hint for `activity`; a driver of unknown activity is treated as available."""
        return self.table.get(activity) or self.table[AVAILABLE]


def _sane(sampling: Sampling) -> bool:
    return sampling.interval_s > 0 and sampling.accuracy_m > 0


def known(activity: Activity) -> Activity:
    """`activity`, or AVAILABLE when it is unknown (a driver with no ride and no idle verdict)."""
    return activity if activity in ACTIVITIES else AVAILABLE


class IdleDetector:
    """Tells whether a driver stood still: every fix within `radius_m` of an anchor for
    `after_s`. A fix beyond the radius moves the anchor there and the driver is moving again.
    The radius widens by a fix's own accuracy, so a parked phone's coarse fixes (an idle driver
    is asked for 50 m) do not count as moves."""

    __slots__ = ("_radius_m", "_after_s", "_anchor", "_since")

    def __init__(self, radius_m: float, after_s: float) -> None:
        self._radius_m = radius_m
        self._after_s = after_s
        self._anchor: tuple[float, float] | None = None
        self._since = 0.0

    def observe(self, lat: float, lng: float, now_s: float, accuracy_m: float = 0.0) -> bool:
        """Takes a fix seen at `now_s` and answers whether the driver is idle now."""
        anchor = self._anchor
        reach = self._radius_m + max(0.0, accuracy_m)
        if anchor is None or haversine_m(anchor[0], anchor[1], lat, lng) > reach:
            self._anchor = (lat, lng)
            self._since = now_s
            return False
        return now_s - self._since >= self._after_s


class FixRequestGate:
    """Lets one fix request through per `gap_s`: several watchers starting at once ask once."""

    __slots__ = ("_gap_s", "_last")

    def __init__(self, gap_s: float) -> None:
        self._gap_s = gap_s
        self._last: float | None = None

    def allow(self, now_s: float) -> bool:
        if self._last is not None and now_s - self._last < self._gap_s:
            return False
        self._last = now_s
        return True
