"""The driving between two stops, measured, and cut into trips where a ride changes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from services.domain.geodesy import haversine_m

_MICROS = 1_000_000


class Fix(NamedTuple):
    """What the detector needs of a stored fix: its key, where, and the reported speed."""

    micros: int  # recorded_at in microseconds since the Unix epoch
    seq: int
    latitude: float
    longitude: float
    speed_mps: float  # 0 when the app reported none


FixKey = tuple[int, int]
"""(recorded_at µs, seq): a fix's place in a driver's history."""


def key_of(fix: Fix) -> FixKey:
    return fix.micros, fix.seq


@dataclass(frozen=True, slots=True)
class TripSettings:
    """Thresholds of trip and stop detection; the defaults suit city ride-hailing (docs/history.md).

    Traccar's trips/stops reports are the model: motion by speed and distance, a stop is staying
    within a small radius for a minimum time, a long gap ends a trip, short drives are not trips.
    """

    stop_radius_m: float = 50.0  # GPS drift while parked stays well inside this
    min_stop_s: float = 180.0  # shorter halts (lights, a quick drop-off) stay inside the trip
    min_trip_m: float = 200.0  # a drive shorter than this (re-parking) is not a trip...
    min_trip_s: float = 60.0  # ...nor one shorter than this
    max_gap_s: float = 600.0  # no data for longer ends the trip or stop: nothing is known then
    moving_speed_mps: float = 1.0  # reported (or implied) speed at or above this is moving
    gps_noise_m: float = 10.0  # a still fix closer than this to the last counted one adds nothing
    speed_window_m: float = 100.0  # implied speeds are averaged over at least this much path
    max_plausible_speed_mps: float = 70.0  # faster speeds are GPS errors (252 km/h)
    max_departure_fixes: int = 64  # moving fixes held while leaving a stop's radius
    max_reported_leg_s: float = 30.0  # a longer leg is moving only if its distance says so


@dataclass(frozen=True, slots=True)
class RideSpan:
    """One ride of the driver: assigned, picked up (None: not yet) and ended (None: still on)."""

    ride_id: str
    assigned: int  # µs since the epoch, like Fix.micros
    picked_up: int | None
    ended: int | None


@dataclass(frozen=True, slots=True)
class Trip:
    """One trip: its first and last fix and what was measured between them."""

    first: Fix
    last: Fix
    distance_m: float
    moving_s: float
    max_speed_mps: float
    fix_count: int
    ride_id: str
    # Detection restarted at this fix (without any earlier state) finds this trip again: the
    # anchor of the stop before its drive, or the first fix after a gap or of the range.
    resume_from: FixKey

    @property
    def duration_s(self) -> float:
        return (self.last.micros - self.first.micros) / _MICROS

    @property
    def average_speed_mps(self) -> float:
        duration = self.duration_s
        return self.distance_m / duration if duration > 0 else 0.0


class RideClock:
    """Which ride the driver is on at a time, read forward only; says when a cut is passed."""

    def __init__(self, spans: Sequence[RideSpan]) -> None:
        changes: list[tuple[int, int, str]] = []
        for span in spans:
            changes.append((span.assigned, 1, span.ride_id))
            if span.picked_up is not None:
                changes.append((span.picked_up, 2, span.ride_id))
            if span.ended is not None:
                changes.append((span.ended, 0, ""))  # an end sorts before a same-time start
        changes.sort()
        self._changes = changes
        self._next = 0
        self.ride_id = ""

    def advance(self, micros: int) -> bool:
        """Moves to `micros`; True when a ride was assigned, picked up or ended since last time."""
        passed = False
        changes = self._changes
        while self._next < len(changes) and changes[self._next][0] <= micros:
            self.ride_id = changes[self._next][2]
            self._next += 1
            passed = True
        return passed


class _Piece:
    """Running totals of one trip piece; `ref` is the last fix whose leg was counted."""

    __slots__ = (
        "distance_m",
        "first",
        "fix_count",
        "max_speed",
        "moving_s",
        "prev",
        "ref",
        "ride_id",
        "window_m",
        "window_start",
    )

    def __init__(self, fix: Fix, ride_id: str) -> None:
        self.first = self.prev = self.ref = self.window_start = fix
        self.ride_id = ride_id
        self.distance_m = self.moving_s = self.window_m = 0.0
        self.max_speed = 0.0
        self.fix_count = 1


class Movement:
    """One drive between stops (or a gap, or the range's edges), fed fix by fix.

    The drive is a trip when it covers `min_trip_m` and lasts `min_trip_s`; until then its
    finished pieces are held. Ride changes cut it into pieces that share the fix at the cut, so
    the pieces' distances and durations add up to the drive's.
    """

    def __init__(
        self,
        settings: TripSettings,
        clock: RideClock,
        emit: Callable[[Trip], None],
        on_qualified: Callable[[], None],
    ) -> None:
        self._s = settings
        self._clock = clock
        self._emit = emit
        self._on_qualified = on_qualified
        self._piece: _Piece | None = None
        self._held: list[Trip] = []
        self._first: Fix | None = None
        self._distance_m = 0.0
        self._qualified = False
        self.resume_from: FixKey = (0, 0)

    @property
    def started(self) -> bool:
        return self._piece is not None

    def move(self, fix: Fix) -> None:
        """The next fix of the drive."""
        piece = self._piece
        if piece is None:
            self._clock.advance(fix.micros)
            self._piece = _Piece(fix, self._clock.ride_id)
            self._first = fix
            return
        cut = self._clock.advance(fix.micros)
        self._distance_m += self._leg(piece, fix)
        if cut:
            self._close(piece)
            self._piece = _Piece(fix, self._clock.ride_id)
        if not self._qualified:
            self._check_qualified(fix)

    def end(self) -> None:
        """The drive is over: its pieces are trips if it qualified, else dropped."""
        if self._piece is not None:
            self._close(self._piece)
        self._piece = self._first = None
        self._held.clear()
        self._distance_m = 0.0
        self._qualified = False

    def _check_qualified(self, fix: Fix) -> None:
        assert self._first is not None
        long_enough = fix.micros - self._first.micros >= self._s.min_trip_s * _MICROS
        if long_enough and self._distance_m >= self._s.min_trip_m:
            self._qualified = True
            self._on_qualified()
            for trip in self._held:
                self._emit(trip)
            self._held.clear()

    def _close(self, piece: _Piece) -> None:
        if piece.fix_count < 2:
            return
        trip = Trip(
            first=piece.first,
            last=piece.prev,
            distance_m=piece.distance_m,
            moving_s=piece.moving_s,
            max_speed_mps=piece.max_speed,
            fix_count=piece.fix_count,
            ride_id=piece.ride_id,
            resume_from=self.resume_from,
        )
        if self._qualified:
            self._emit(trip)
        else:
            self._held.append(trip)

    def _leg(self, piece: _Piece, fix: Fix) -> float:
        """Adds the leg to `fix`; returns the metres counted. Hot path: once per moving fix."""
        s = self._s
        speed = fix.speed_mps
        if speed <= s.max_plausible_speed_mps and speed > piece.max_speed:
            piece.max_speed = speed
        dt_s = (fix.micros - piece.prev.micros) / _MICROS
        piece.prev = fix
        piece.fix_count += 1
        ref = piece.ref
        metres = haversine_m(ref.latitude, ref.longitude, fix.latitude, fix.longitude)
        reported = speed >= s.moving_speed_mps
        # GPS drift while standing (at a light) must not add distance: a still fix counts only
        # once it is farther than the noise from the last counted one.
        if not reported and metres < s.gps_noise_m:
            return 0.0
        since_ref_s = (fix.micros - ref.micros) / _MICROS
        # A speed is of its moment: after minutes without fixes it says nothing of the minutes.
        if (reported and dt_s <= s.max_reported_leg_s) or (
            since_ref_s > 0 and metres / since_ref_s >= s.moving_speed_mps
        ):
            piece.moving_s += dt_s
        piece.ref = fix
        piece.distance_m += metres
        piece.window_m += metres
        if piece.window_m >= s.speed_window_m:
            self._window_speed(piece, fix)
        return metres

    def _window_speed(self, piece: _Piece, fix: Fix) -> None:
        # Speed implied over >= speed_window_m of path: single legs are too noisy (a few metres
        # of error over a 4 s leg is metres per second); implausible jumps are ignored.
        window_s = (fix.micros - piece.window_start.micros) / _MICROS
        if window_s > 0:
            implied = piece.window_m / window_s
            if piece.max_speed < implied <= self._s.max_plausible_speed_mps:
                piece.max_speed = implied
        piece.window_start = fix
        piece.window_m = 0.0
