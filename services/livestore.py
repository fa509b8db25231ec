"""The live store in Redis: geo index, last fix per driver, fan-out channels, the ingest log."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from ridemesh.v1.common_pb2 import DriverAvailability, DriverLocation
from services.location.area import Box, cell_of
from services.location.session import StreamId, parse_stream_id

GEO_KEY = "rm:geo"
# Drivers beyond the geo index's latitude limit, scored by fix time (searched by brute force).
POLAR_KEY = "rm:geo:polar"
INGEST_STREAM = "rm:ingest"
PERSIST_GROUP = "persisters"
CELL_PATTERN = "rm:ch:cell:*"

# Redis's geo index cannot hold points beyond ±85.05112878° latitude; such drivers go to a small
# sorted set instead, which searches near the poles scan.
GEO_MAX_LAT = 85.05112878

# One round trip per fix. The live state only moves forward in time (an older fix never
# overwrites a newer one); every fix goes to the ingest log for persistence regardless.
_INGEST_LUA = """
local t = redis.call('HGET', KEYS[2], 't')
local live = (not t) or (tonumber(t) <= tonumber(ARGV[6]))
if live then
  if ARGV[8] == '1' then
    redis.call('GEOADD', KEYS[1], ARGV[2], ARGV[3], ARGV[1])
    redis.call('ZREM', KEYS[6], ARGV[1])
  else
    redis.call('ZREM', KEYS[1], ARGV[1])
    redis.call('ZADD', KEYS[6], ARGV[6], ARGV[1])
  end
  redis.call('HSET', KEYS[2], 'p', ARGV[4], 't', ARGV[6], 's', ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
  redis.call('PUBLISH', KEYS[4], ARGV[4])
  redis.call('PUBLISH', KEYS[5], ARGV[4])
end
return redis.call('XADD', KEYS[3], '*', 'p', ARGV[4])
"""


def driver_key(driver_id: str) -> str:
    return f"rm:driver:{driver_id}"


def driver_channel(driver_id: str) -> str:
    return f"rm:ch:driver:{driver_id}"


def cell_channel(cell: tuple[int, int]) -> str:
    return f"rm:ch:cell:{cell[0]}:{cell[1]}"


class LiveStore:
    """Reads and writes the live state; every method is one Redis round trip."""

    def __init__(self, redis: Redis, live_window_s: float) -> None:
        self._redis = redis
        self._live_window_ms = int(live_window_s * 1000)
        self._ingest = redis.register_script(_INGEST_LUA)

    @property
    def redis(self) -> Redis:
        return self._redis

    async def ingest(self, location: DriverLocation, payload: bytes) -> StreamId:
        """Writes one accepted fix, serialised as `payload`; returns its ingest entry id."""
        lat, lng = location.position.latitude, location.position.longitude
        recorded_ms = location.recorded_at.seconds * 1000 + location.recorded_at.nanos // 1_000_000
        keys = [
            GEO_KEY,
            driver_key(location.driver_id),
            INGEST_STREAM,
            driver_channel(location.driver_id),
            cell_channel(cell_of(lat, lng)),
            POLAR_KEY,
        ]
        args: list[Any] = [
            location.driver_id,
            lng,
            lat,
            payload,
            location.seq,
            recorded_ms,
            self._live_window_ms,
            "1" if abs(lat) <= GEO_MAX_LAT else "0",
        ]
        entry_id = await self._ingest(keys=keys, args=args)
        return parse_stream_id(entry_id)

    async def last_state(self, driver_id: str) -> tuple[int, DriverAvailability.ValueType]:
        """The seq of the driver's live fix (0 when none) and their availability."""
        seq, availability = await self._redis.hmget(driver_key(driver_id), ["s", "a"])
        return (
            int(seq) if seq else 0,
            DriverAvailability.ValueType(int(availability))
            if availability
            else DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE,
        )

    async def get_location(self, driver_id: str) -> DriverLocation | None:
        """The driver's last live fix, or None when the live window has passed."""
        payload: bytes | None = await self._redis.hget(driver_key(driver_id), "p")  # type: ignore[assignment]
        if not payload:
            return None
        location = DriverLocation.FromString(payload)
        return location if self.is_live(location) else None

    def is_live(self, location: DriverLocation) -> bool:
        """A fix is live while it is younger than the live window (the key's TTL counts from
        receipt; a fix that was already old when it arrived must not linger past the window)."""
        age_ms = time.time() * 1000 - location.recorded_at.ToMilliseconds()
        return age_ms <= self._live_window_ms

    async def locations_in_box(self, box: Box, limit: int) -> list[DriverLocation]:
        """Live drivers inside a box, for a watcher's first screen."""
        lat, lng = box.center()
        members: list[bytes] = await self._redis.geosearch(  # type: ignore[assignment]
            GEO_KEY,
            longitude=lng,
            latitude=lat,
            radius=box.covering_radius_m(),
            unit="m",
            count=limit,
        )
        if not members:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for member in members:
            pipe.hget(driver_key(member.decode()), "p")
        found = []
        for payload in await pipe.execute():
            if payload:
                loc = DriverLocation.FromString(payload)
                inside = box.contains(loc.position.latitude, loc.position.longitude)
                if inside and self.is_live(loc):
                    found.append(loc)
        return found

    async def committed_below(self) -> StreamId | None:
        """The ingest watermark: every entry with a smaller id is committed to PostgreSQL."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.xinfo_groups(INGEST_STREAM)
        pipe.xpending(INGEST_STREAM, PERSIST_GROUP)
        try:
            groups, pending = await pipe.execute(raise_on_error=True)
        except Exception as exc:  # no stream or group yet: nothing is committed
            if "no such key" in str(exc).lower() or "NOGROUP" in str(exc):
                return None
            raise
        return watermark(groups, pending)

    async def trim(self, below: StreamId) -> None:
        """Drops ingest entries that are committed, so the log stays small."""
        await self._redis.xtrim(INGEST_STREAM, minid=f"{below[0]}-{below[1]}", approximate=True)


def watermark(groups: list[dict[str, Any]], pending: dict[str, Any]) -> StreamId | None:
    """From XINFO GROUPS and XPENDING: the lowest id not known to be committed (pure)."""
    group = next((g for g in groups if _text(g.get("name")) == PERSIST_GROUP), None)
    if group is None:
        return None
    if pending.get("pending"):
        return parse_stream_id(pending["min"])
    last_ms, last_n = parse_stream_id(group["last-delivered-id"])
    return last_ms, last_n + 1


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
