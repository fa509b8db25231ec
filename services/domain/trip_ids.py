"""Trip ids: an opaque name for one trip of one driver (its first and last fix's times), which
ListDriverTrips hands out and ExportDriverTrack takes back."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime

from services.domain.errors import InvalidArgument
from services.domain.micros import from_micros, to_micros

_VERSION = "t1"


@dataclass(frozen=True, slots=True)
class TripSpan:
    """A trip's driver and the recorded times of its first and last fix, both inclusive."""

    driver_id: str
    first: datetime
    last: datetime


def encode_trip_id(span: TripSpan) -> str:
    """The trip's id: base64url of "t1", the driver, and both times in microseconds."""
    text = "\n".join(
        (_VERSION, span.driver_id, str(to_micros(span.first)), str(to_micros(span.last)))
    )
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_trip_id(trip_id: str) -> TripSpan:
    """The span a trip id names; InvalidArgument when it is not one ListDriverTrips made."""
    try:
        raw = base64.urlsafe_b64decode(trip_id + "=" * (-len(trip_id) % 4)).decode()
        version, driver_id, first, last = raw.split("\n")
        span = TripSpan(driver_id, from_micros(int(first)), from_micros(int(last)))
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(
            f"trip_id {trip_id[:64]!r} is not valid: pass a trip_id from ListDriverTrips unchanged"
        ) from exc
    if version != _VERSION or not driver_id or span.last < span.first:
        raise InvalidArgument(
            f"trip_id {trip_id[:64]!r} is not valid: pass a trip_id from ListDriverTrips unchanged"
        )
    return span
