"""Scripted driver days with known trips and stops: drive so far at such speed, park with GPS
jitter, go silent; every fix and its exact time are known, so tests know the answers."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from services.domain.geodesy import EARTH_RADIUS_M, normalize_lng
from services.domain.trips import Fix

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def moment(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def destination(lat: float, lng: float, bearing_deg: float, metres: float) -> tuple[float, float]:
    """The point `metres` from (lat, lng) along the great circle leaving at `bearing_deg`."""
    delta = metres / EARTH_RADIUS_M
    theta = math.radians(bearing_deg)
    phi1, lmb1 = math.radians(lat), math.radians(lng)
    phi2 = math.asin(
        math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    )
    lmb2 = lmb1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * math.sin(phi2),
    )
    return math.degrees(phi2), normalize_lng(math.degrees(lmb2))


@dataclass
class Day:
    """A driver's scripted day: one fix every `step_s` while the app is on."""

    lat: float
    lng: float
    start: datetime
    bearing_deg: float = 90.0
    step_s: float = 4.0
    seed: int = 1
    fixes: list[Fix] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._t = micros(self.start)
        self._seq = 0
        self._emit(self.lat, self.lng, 0.0)

    @property
    def now(self) -> int:
        """The time of the last fix (or of the end of the last gap), µs since the epoch."""
        return self._t

    def _emit(self, lat: float, lng: float, speed: float) -> Fix:
        self._seq += 1
        fix = Fix(self._t, self._seq, lat, lng, speed)
        self.fixes.append(fix)
        return fix

    def _tick(self) -> None:
        self._t += round(self.step_s * 1_000_000)

    def drive(self, metres: float, speed: float = 10.0, *, report_speed: bool = True) -> Day:
        """Drives `metres` along the bearing at `speed`, a fix every step."""
        legs = round(metres / (speed * self.step_s))
        for _ in range(legs):
            self._tick()
            self.lat, self.lng = destination(
                self.lat, self.lng, self.bearing_deg, speed * self.step_s
            )
            self._emit(self.lat, self.lng, speed if report_speed else 0.0)
        return self

    def park(self, seconds: float, jitter_m: float = 4.0) -> Day:
        """Stands still for `seconds`, each fix up to `jitter_m` off the true place, speed 0."""
        for _ in range(round(seconds / self.step_s)):
            self._tick()
            bearing = self._rng.uniform(0.0, 360.0)
            off = jitter_m * math.sqrt(self._rng.random())  # uniform over the disc
            lat, lng = destination(self.lat, self.lng, bearing, off)
            self._emit(lat, lng, 0.0)
        return self

    def turn(self, bearing_deg: float) -> Day:
        self.bearing_deg = bearing_deg
        return self

    def gap(self, seconds: float) -> Day:
        """The app sends nothing for `seconds` (the next fix comes a step after that)."""
        self._t += round(seconds * 1_000_000)
        return self

    def jump(self, metres: float) -> Day:
        """One bad fix `metres` off the road (a GPS glitch), then back on it."""
        self._tick()
        lat, lng = destination(self.lat, self.lng, self.bearing_deg + 90.0, metres)
        self._emit(lat, lng, 10.0)
        return self
