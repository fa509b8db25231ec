"""Checks a point given in a request: present, finite and on the Earth."""

from __future__ import annotations

import math

from google.protobuf.message import Message

from services.domain.errors import InvalidArgument


def check_point(message: Message, field: str) -> tuple[float, float]:
    """The (latitude, longitude) of the LatLng `message.<field>`, or InvalidArgument naming it."""
    if not message.HasField(field):
        raise InvalidArgument(f"{field} is required")
    point = getattr(message, field)
    lat, lng = float(point.latitude), float(point.longitude)
    if not (math.isfinite(lat) and math.isfinite(lng)):
        raise InvalidArgument(f"{field} must be finite numbers, got ({lat}, {lng})")
    if not -90.0 <= lat <= 90.0:
        raise InvalidArgument(f"{field}.latitude must be between -90 and 90 degrees, got {lat}")
    if not -180.0 <= lng <= 180.0:
        raise InvalidArgument(f"{field}.longitude must be between -180 and 180 degrees, got {lng}")
    return lat, lng
