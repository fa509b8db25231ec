"""Checks one GPS fix against the rules every fix must meet, before anything is stored."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ridemesh.v1.common_pb2 import DriverLocation
from ridemesh.v1.location_service_pb2 import LocationUpdate
from services.domain.errors import InvalidArgument

# Ids end up in Redis keys and channel names: keep them to a safe, printable alphabet.
_ID_PATTERN = re.compile(r"[A-Za-z0-9._~:@-]{1,128}")


@dataclass(frozen=True, slots=True)
class FixLimits:
    """How far a fix's timestamp may be from the server's clock."""

    max_future_skew_s: float = 300.0
    max_age_s: float = 7 * 86400.0


def validate_id(value: str, what: str = "driver_id") -> str:
    """Returns the id, or raises InvalidArgument saying what an id may hold."""
    if not _ID_PATTERN.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise InvalidArgument(
            f"{what} {shown!r} is not valid: use 1 to 128 characters from A-Z a-z 0-9 . _ ~ : @ -"
        )
    return value


def required_id(value: str, what: str = "driver_id") -> str:
    """Like validate_id, for a request field that must be set: an empty one is named as missing."""
    if not value:
        raise InvalidArgument(f"{what} is required")
    return validate_id(value, what)


def fix_order(location: DriverLocation) -> tuple[int, int]:
    """Fixes of one driver in the order they were taken: by recorded time, then seq."""
    return location.recorded_at.ToNanoseconds(), location.seq


def validate_update(update: LocationUpdate, now_s: float, limits: FixLimits) -> float:
    """Checks one fix; returns its recorded time in epoch seconds, or raises InvalidArgument."""
    validate_id(update.driver_id)
    if update.seq <= 0:
        raise InvalidArgument(f"seq must be a positive integer, got {update.seq}")
    if not update.HasField("position"):
        raise InvalidArgument("position is required")
    _check_coordinates(update.position.latitude, update.position.longitude)
    _check_finite_range("heading_deg", update.heading_deg, 0.0, 360.0)  # 360 reads as north
    _check_finite_range("speed_mps", update.speed_mps, 0.0, 1000.0)
    _check_finite_range("accuracy_m", update.accuracy_m, 0.0, 100_000.0)
    if not update.HasField("recorded_at"):
        raise InvalidArgument("recorded_at is required")
    recorded_s = update.recorded_at.seconds + update.recorded_at.nanos / 1e9
    if recorded_s > now_s + limits.max_future_skew_s:
        raise InvalidArgument(
            f"recorded_at is {recorded_s - now_s:.0f} s ahead of the server clock; "
            f"at most {limits.max_future_skew_s:.0f} s is allowed (check the device clock)"
        )
    if recorded_s < now_s - limits.max_age_s:
        raise InvalidArgument(
            f"recorded_at is {(now_s - recorded_s) / 86400:.1f} days old; "
            f"fixes older than {limits.max_age_s / 86400:.0f} days are not accepted"
        )
    return recorded_s


def _check_coordinates(latitude: float, longitude: float) -> None:
    if not (math.isfinite(latitude) and math.isfinite(longitude)):
        raise InvalidArgument(
            f"position must be finite numbers, got latitude={latitude}, longitude={longitude}"
        )
    if not -90.0 <= latitude <= 90.0:
        raise InvalidArgument(f"latitude must be between -90 and 90 degrees, got {latitude}")
    if not -180.0 <= longitude <= 180.0:
        raise InvalidArgument(f"longitude must be between -180 and 180 degrees, got {longitude}")


def _check_finite_range(name: str, value: float, low: float, high: float) -> None:
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidArgument(
            f"{name} must be a finite number from {low:g} to {high:g}, got {value}"
        )
