"""Helpers for the geo tests: drivers written through LiveStore.ingest at points around a centre."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from ridemesh.v1.common_pb2 import DriverAvailability, DriverLocation, LatLng
from services.domain.geodesy import EARTH_RADIUS_M, normalize_lng
from services.live.names import driver_key
from services.live.store import LiveStore
from services.ops.mesh.redis_server import RedisServer

REDIS_DB = 5
LIVE_WINDOW_S = 300.0


@asynccontextmanager
async def flushed_redis(redis_server: RedisServer, db: int = REDIS_DB) -> AsyncIterator[Redis]:
    """A client on a suite's own logical database, emptied first (the server is shared)."""
    redis = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/{db}")
    await redis.flushdb()
    try:
        yield redis
    finally:
        await redis.aclose()


def destination(
    lat: float, lng: float, bearing_deg: float, distance_m: float
) -> tuple[float, float]:
    """The point `distance_m` from (lat, lng) along `bearing_deg` on our sphere (over the pole
    and across 180° as needed)."""
    phi1, lmb1 = math.radians(lat), math.radians(lng)
    theta, delta = math.radians(bearing_deg), distance_m / EARTH_RADIUS_M
    sin_phi2 = math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    phi2 = math.asin(max(-1.0, min(1.0, sin_phi2)))
    y = math.sin(theta) * math.sin(delta) * math.cos(phi1)
    x = math.cos(delta) - math.sin(phi1) * sin_phi2
    lmb2 = lmb1 + math.atan2(y, x)
    return math.degrees(phi2), normalize_lng(math.degrees(lmb2))


def scatter(
    rng: random.Random, lat: float, lng: float, max_m: float, n: int
) -> list[tuple[float, float]]:
    """`n` points spread evenly by area within `max_m` of a centre."""
    return [
        destination(lat, lng, rng.uniform(0, 360), max_m * math.sqrt(rng.random()))
        for _ in range(n)
    ]


def location(
    driver_id: str, lat: float, lng: float, recorded_s: float, speed_mps: float = 0.0
) -> DriverLocation:
    """A DriverLocation as LocationService builds one from an accepted fix."""
    loc = DriverLocation(
        driver_id=driver_id,
        position=LatLng(latitude=lat, longitude=lng),
        speed_mps=speed_mps,
        seq=1,
        availability=DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE,
    )
    loc.recorded_at.FromNanoseconds(int(recorded_s * 1e9))
    loc.received_at.FromNanoseconds(int(recorded_s * 1e9))
    return loc


async def ingest(
    live: LiveStore, driver_id: str, lat: float, lng: float, recorded_s: float, speed: float = 0.0
) -> DriverLocation:
    loc = location(driver_id, lat, lng, recorded_s, speed)
    await live.ingest(loc, loc.SerializeToString())
    return loc


async def set_availability(
    redis: Redis, driver_id: str, availability: DriverAvailability.ValueType
) -> None:
    """What RideService will do when a driver takes or finishes a ride."""
    await redis.hset(driver_key(driver_id), "a", int(availability))
