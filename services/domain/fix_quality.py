"""Fix quality filters (pure): which fixes are refused as bad, which are stored without moving the
live position, and which are late, judged against the driver's previous fix on its stream.

- accuracy: a fix whose accuracy radius is worse than the bound is refused.
- duplicate: the same position and time as the previous fix (an app re-sending under a new seq)
  is refused.
- speed jump: a fix farther from the previous one than a plausible speed covers in the time
  between them (plus both accuracy radii, so noisy fixes are not punished) is refused. The
  allowance grows with time, so a driver whose fix was refused is accepted again soon after.
- stationary jitter: a fix within a few metres of where a stopped driver stands (speed about 0)
  is stored, but the live position holds where it was, so parked cars neither creep on watchers'
  maps nor flicker across zone borders.
- late: a fix taken well before it arrived (an app emptying its offline buffer on the stream), or
  older than the driver's previous fix, is stored only: it never moves the live position and
  fires no zone, proximity or ride event. Late fixes skip the motion filters, which compare
  neighbours in time.

Each filter is off when its setting is 0."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ridemesh.v1.location_service_pb2 import FixFilter, LocationUpdate
from services.domain.errors import InvalidArgument
from services.domain.geodesy import haversine_m


@dataclass(frozen=True, slots=True)
class QualitySettings:
    """The filters' bounds; 0 turns a filter off."""

    # Fixes with a worse (larger) accuracy radius than this are refused, in metres.
    max_accuracy_m: float = 100.0
    # A fix implying a faster move from the previous one than this is refused, in m/s
    # (70 m/s is 252 km/h).
    max_speed_mps: float = 70.0
    # Within this many metres of a stationary driver's live position, a fix holds the position.
    jitter_m: float = 8.0
    # A driver reporting at most this speed counts as stationary, in m/s.
    jitter_speed_mps: float = 0.5
    # Fixes taken this long before they arrive are late: stored, never live, in seconds.
    late_after_s: float = 30.0
    # Refuse a fix with the same position and time as the previous one.
    drop_duplicates: bool = True


class Filtered(InvalidArgument):
    """A fix refused by a quality filter; `filter` names which."""

    def __init__(self, message: str, fix_filter: FixFilter.ValueType) -> None:
        super().__init__(message)
        self.filter = fix_filter


class Route(enum.Enum):
    """Where an accepted fix goes."""

    # The live position moves to it, and zones, proximity and watchers see it.
    LIVE = "live"
    # Stored; the live state is refreshed in time but keeps its position (stationary jitter).
    HOLD = "hold"
    # Stored only (late or out of order).
    STORE = "store"


@dataclass(frozen=True, slots=True)
class Seen:
    """A fix as the filters remember it."""

    latitude: float
    longitude: float
    recorded_s: float
    accuracy_m: float


def check_accuracy(update: LocationUpdate, settings: QualitySettings) -> None:
    """Refuses a fix whose accuracy radius is worse than the bound."""
    bound = settings.max_accuracy_m
    if bound and update.accuracy_m > bound:
        raise Filtered(
            f"accuracy_m {update.accuracy_m:g} is worse than the {bound:g} m this server accepts; "
            "the fix was not stored (wait for a better fix)",
            FixFilter.FIX_FILTER_ACCURACY,
        )


def is_duplicate(update: LocationUpdate, recorded_s: float, previous: Seen | None) -> bool:
    """The same position and time as the previous fix."""
    return (
        previous is not None
        and previous.recorded_s == recorded_s
        and previous.latitude == update.position.latitude
        and previous.longitude == update.position.longitude
    )


class FixQuality:
    """One driver stream's filters: the previous fix and where the live position stands."""

    __slots__ = ("settings", "previous", "anchor")

    def __init__(self, settings: QualitySettings) -> None:
        self.settings = settings
        self.previous: Seen | None = None  # the newest fix accepted on this stream
        self.anchor: tuple[float, float] | None = None  # the live position this stream set

    def judge(self, update: LocationUpdate, recorded_s: float, now_s: float) -> Route:
        """Where the fix goes, or Filtered when it is refused. Changes nothing: call `accepted`
        once the fix is taken."""
        settings = self.settings
        check_accuracy(update, settings)
        previous = self.previous
        if settings.drop_duplicates and is_duplicate(update, recorded_s, previous):
            raise Filtered(
                f"seq {update.seq} repeats the position and time of the previous fix; "
                "it was not stored again",
                FixFilter.FIX_FILTER_DUPLICATE,
            )
        late = settings.late_after_s and recorded_s < now_s - settings.late_after_s
        if late or (previous is not None and recorded_s < previous.recorded_s):
            return Route.STORE
        if previous is not None:
            self._check_speed(update, recorded_s, previous)
        return Route.HOLD if self._is_jitter(update) else Route.LIVE

    def accepted(self, update: LocationUpdate, recorded_s: float, route: Route) -> None:
        """Remembers a taken fix: late ones change nothing; a live one moves the anchor."""
        if route is Route.STORE:
            return
        position = update.position
        self.previous = Seen(position.latitude, position.longitude, recorded_s, update.accuracy_m)
        if route is Route.LIVE:
            self.anchor = (position.latitude, position.longitude)

    def _check_speed(self, update: LocationUpdate, recorded_s: float, previous: Seen) -> None:
        limit = self.settings.max_speed_mps
        if not limit:
            return
        position = update.position
        moved = haversine_m(
            previous.latitude, previous.longitude, position.latitude, position.longitude
        )
        allowed = limit * (recorded_s - previous.recorded_s) + previous.accuracy_m
        allowed += update.accuracy_m
        if moved > allowed:
            seconds = recorded_s - previous.recorded_s
            raise Filtered(
                f"seq {update.seq} is {moved:,.0f} m from the previous fix {seconds:g} s earlier, "
                f"faster than the {limit:g} m/s this server accepts as plausible; it was not "
                "stored",
                FixFilter.FIX_FILTER_SPEED_JUMP,
            )

    def _is_jitter(self, update: LocationUpdate) -> bool:
        settings, anchor = self.settings, self.anchor
        if not settings.jitter_m or anchor is None:
            return False
        if update.speed_mps > settings.jitter_speed_mps:
            return False
        position = update.position
        return haversine_m(anchor[0], anchor[1], position.latitude, position.longitude) <= (
            settings.jitter_m
        )
