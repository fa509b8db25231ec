"""Trips and stops from a driver's fixes, detected in one pass with bounded memory (no I/O).

The rules (defaults in TripSettings, described for users in docs/history.md):
- A stop is staying within `stop_radius_m` of one fix (the anchor) for at least `min_stop_s`,
  from the first still fix (reported speed under `moving_speed_mps`) to the last still one; it
  is placed at its first still fix. Drift while parked never leaves the radius, so it never
  makes trips.
- A trip is the driving between two stops, a gap, or the range's edges, when it covers at
  least `min_trip_m` and lasts at least `min_trip_s`; it starts at the last fix of the stop
  before and ends at the first fix of the stop after. Driving too short to be a trip (moving
  the car in a car park) joins the stops on either side into one.
- More than `max_gap_s` without a fix ends the trip or stop in progress: a gap is neither.
- A ride's assignment, pickup and end cut a trip into pieces, each naming its ride
  (trip_pieces.RideClock); stops are not cut.

Memory: a candidate stop holds its fixes until it is confirmed or broken, at most twice
`min_stop_s` of fixes (90 at one every 4 s), and a stop being left at most
`max_departure_fixes`; everything else is running totals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.domain.geodesy import EARTH_RADIUS_M, haversine_m
from services.domain.trip_pieces import (
    Fix,
    FixKey,
    Movement,
    RideClock,
    RideSpan,
    Trip,
    TripSettings,
    key_of,
)

__all__ = [
    "Fix",
    "FixKey",
    "RideSpan",
    "Stop",
    "Trip",
    "TripDetector",
    "TripSettings",
    "key_of",
    "within_radius",
]

_MICROS = 1_000_000
_M_PER_DEG = math.radians(EARTH_RADIUS_M)  # metres per degree of a great circle
_FLAT_MAX_LAT = 85.0  # nearer the poles the flat distance is left to haversine


@dataclass(frozen=True, slots=True)
class Stop:
    """A time the driver stayed in one place: from its first still fix to its last."""

    first: Fix
    last: Fix

    @property
    def duration_s(self) -> float:
        return (self.last.micros - self.first.micros) / _MICROS


Event = Trip | Stop


def within_radius(anchor: Fix, fix: Fix, radius_m: float) -> bool:
    """Whether `fix` is within `radius_m` of `anchor` (great-circle). Hot path: once per fix."""
    # A flat-Earth distance is exact to far under 1% this close to the anchor, and cheaper;
    # haversine decides near the radius and near the poles. Far away both say outside.
    d_lng = fix.longitude - anchor.longitude
    if d_lng > 180.0:
        d_lng -= 360.0
    elif d_lng < -180.0:
        d_lng += 360.0
    mid_lat = 0.5 * (fix.latitude + anchor.latitude)
    if -_FLAT_MAX_LAT < mid_lat < _FLAT_MAX_LAT:
        x = d_lng * math.cos(math.radians(mid_lat))
        y = fix.latitude - anchor.latitude
        flat = _M_PER_DEG * math.sqrt(x * x + y * y)
        if flat < 0.99 * radius_m:
            return True
        if flat > 1.01 * radius_m:
            return False
    metres = haversine_m(anchor.latitude, anchor.longitude, fix.latitude, fix.longitude)
    return metres <= radius_m


class _Stay:
    """A confirmed stop still going on: the radius anchor, first and last still fix, and the
    moving fixes since the last still one (the driver may be leaving)."""

    __slots__ = ("anchor", "first", "last", "leaving")

    def __init__(self, anchor: Fix, first: Fix) -> None:
        self.anchor = anchor
        self.first = self.last = first
        self.leaving: list[Fix] = []


class TripDetector:
    """Fed one driver's fixes in (recorded_at, seq) order; returns trips and stops as they end,
    in time order. `finish` ends whatever is in progress (the data or the range ended)."""

    def __init__(self, settings: TripSettings, rides: Sequence[RideSpan] = ()) -> None:
        self._s = settings
        self._out: list[Event] = []
        self._movement = Movement(settings, RideClock(rides), self._out.append, self._flush_stop)
        self._prev: Fix | None = None
        self._candidate: list[Fix] = []  # fixes within the radius of candidate[0], unconfirmed
        self._first_still = -1  # index in _candidate of its first still fix
        self._stay: _Stay | None = None
        self._open_stop: Stop | None = None  # the last stop, held until a trip follows it

    def push(self, fixes: Iterable[Fix]) -> list[Event]:
        """Feeds fixes; returns the trips and stops they ended."""
        gap = self._s.max_gap_s * _MICROS
        for fix in fixes:
            prev = self._prev
            if prev is None or fix.micros - prev.micros > gap:
                if prev is not None:
                    self._end_run()
                # A run starts: detection restarted at this fix finds the same drive.
                self._movement.resume_from = key_of(fix)
            self._prev = fix
            if self._stay is not None:
                self._stay_fix(self._stay, fix)
            else:
                self._candidate_fix(fix)
        return self._drain()

    def finish(self) -> list[Event]:
        """Ends the trip or stop in progress; returns what that ended."""
        self._end_run()
        return self._drain()

    def _drain(self) -> list[Event]:
        out = self._out[:]
        self._out.clear()
        return out

    def _within(self, anchor: Fix, fix: Fix) -> bool:
        return within_radius(anchor, fix, self._s.stop_radius_m)

    def _candidate_fix(self, fix: Fix) -> None:
        candidate = self._candidate
        still = fix.speed_mps < self._s.moving_speed_mps
        if candidate and not self._within(candidate[0], fix):
            for moved in candidate:
                self._movement.move(moved)
            candidate.clear()
            self._first_still = -1
        candidate.append(fix)
        if still and self._first_still < 0:
            self._first_still = len(candidate) - 1
        min_stop = self._s.min_stop_s * _MICROS
        begin = candidate[max(self._first_still, 0)]
        # Confirmed at a still fix min_stop after the first (any fix when none is still), or
        # in any case once the candidate is twice that old, which bounds what it holds.
        long_enough = fix.micros - begin.micros >= min_stop
        if (long_enough and (still or self._first_still < 0)) or (
            fix.micros - candidate[0].micros >= 2 * min_stop
        ):
            self._confirm()

    def _confirm(self) -> None:
        """The candidate lasted long enough: the drive before it ends at its first still fix."""
        candidate, movement = self._candidate, self._movement
        begin = max(self._first_still, 0)
        if movement.started or begin > 0:
            for moved in candidate[: begin + 1]:
                movement.move(moved)
            movement.end()
        stay = _Stay(candidate[0], candidate[begin])
        for fix in candidate[begin + 1 :]:
            self._hold(stay, fix)
        self._stay = stay
        candidate.clear()
        self._first_still = -1

    def _stay_fix(self, stay: _Stay, fix: Fix) -> None:
        if self._within(stay.anchor, fix):
            self._hold(stay, fix)
            return
        self._leave(stay)
        self._candidate_fix(fix)

    def _hold(self, stay: _Stay, fix: Fix) -> None:
        still = fix.speed_mps < self._s.moving_speed_mps
        if still or len(stay.leaving) >= self._s.max_departure_fixes:
            # Still (or moving about inside the radius for long): the stop goes on.
            stay.last = fix
            stay.leaving.clear()
        else:
            stay.leaving.append(fix)

    def _leave(self, stay: _Stay) -> None:
        """The stop is over: it ends at its last still fix, where the next drive starts."""
        self._stay = None
        if stay.last.micros > stay.first.micros:  # not when no fix but the first stood still
            self._add_stop(Stop(stay.first, stay.last))
        # Detection restarted at the stop's anchor finds this stop, then the same drive.
        self._movement.resume_from = key_of(stay.anchor)
        self._movement.move(stay.last)
        for fix in stay.leaving:
            self._movement.move(fix)

    def _end_run(self) -> None:
        """A gap or the end of the data: whatever is going on ends at the last fix."""
        if self._stay is not None:
            self._leave(self._stay)
        else:
            for fix in self._candidate:
                self._movement.move(fix)
            self._candidate.clear()
            self._first_still = -1
        self._movement.end()
        self._flush_stop()
        self._prev = None

    def _add_stop(self, stop: Stop) -> None:
        # An open stop means the driving since it was too short to be a trip: one stop.
        held = self._open_stop
        self._open_stop = stop if held is None else Stop(held.first, stop.last)

    def _flush_stop(self) -> None:
        if self._open_stop is not None:
            self._out.append(self._open_stop)
            self._open_stop = None
