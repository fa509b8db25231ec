"""Distances on the Earth in metres (haversine on the mean-radius sphere), correct everywhere."""

from __future__ import annotations

import math

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in metres between two points given in degrees."""
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lng2 - lng1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def normalize_lng(lng: float) -> float:
    """Wraps a longitude into [-180, 180)."""
    wrapped = (lng + 180.0) % 360.0 - 180.0
    # A hair below -180 wraps to a hair below 360 before the shift, which rounds up to 360.0.
    return -180.0 if wrapped >= 180.0 else wrapped
