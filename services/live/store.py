"""The live store in Redis: each partition's geo index, each driver's last fix, and one round
trip per batch of fixes (one script per partition in it, sent together)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from ridemesh.v1.common_pb2 import DriverAvailability, DriverLocation
from services.domain.area import Box, cell_of
from services.domain.geodesy import haversine_m
from services.live.ingest import StreamId, parse_stream_id
from services.live.names import (
    assigned_key,
    cell_channel,
    driver_channel,
    driver_key,
    geo_key,
    ingest_stream,
    partition_of,
    partitions,
    polar_key,
)
from services.live.replies import text

# Redis's geo index cannot hold points beyond ±85.05112878° latitude; such drivers go to a small
# sorted set instead, which searches near the poles scan.
GEO_MAX_LAT = 85.05112878

# Many fixes of one partition in one script call (one script run; every key and channel in the
# partition's slot). KEYS: the partition's geo index, ingest stream and polar set, then per fix
# its driver's hash, driver channel and cell channel. ARGV: the live window (ms), then per fix:
# driver_id, lng, lat, payload, seq, recorded ms, indexable, live ('1', or '0' for a fix that is
# only stored), and the payload to store when it differs from the live one ('' when the same).
# The live state only moves forward in time (an older fix never overwrites a newer one); every
# fix goes to the ingest log for persistence regardless. An entry whose fix did not reach the
# live state is marked 'l' (live readers skip it); a fix held at its live position carries the
# stored fix in 'p' and the live one in 'v'. Returns each fix's entry id, in order.
_INGEST_LUA = """
local ids = {}
local window = ARGV[1]
for i = 0, (#KEYS - 3) / 3 - 1 do
  local hash, driver_ch, cell_ch = KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i]
  local a = 1 + 9 * i
  local member, payload, recorded = ARGV[a + 1], ARGV[a + 4], ARGV[a + 6]
  local stored = ARGV[a + 9]
  local t = redis.call('HGET', hash, 't')
  if ARGV[a + 8] == '1' and ((not t) or (tonumber(t) <= tonumber(recorded))) then
    if ARGV[a + 7] == '1' then
      redis.call('GEOADD', KEYS[1], ARGV[a + 2], ARGV[a + 3], member)
      redis.call('ZREM', KEYS[3], member)
    else
      redis.call('ZREM', KEYS[1], member)
      redis.call('ZADD', KEYS[3], recorded, member)
    end
    redis.call('HSET', hash, 'p', payload, 't', recorded, 's', ARGV[a + 5])
    redis.call('PEXPIRE', hash, window)
    redis.call('SPUBLISH', driver_ch, payload)
    redis.call('SPUBLISH', cell_ch, payload)
    if stored == '' then
      ids[i + 1] = redis.call('XADD', KEYS[2], '*', 'p', payload)
    else
      ids[i + 1] = redis.call('XADD', KEYS[2], '*', 'p', stored, 'v', payload)
    end
  else
    if stored == '' then stored = payload end
    ids[i + 1] = redis.call('XADD', KEYS[2], '*', 'p', stored, 'l', '1')
  end
end
return ids
"""
# Drops geo-index members whose driver is no longer live (KEYS[1] a partition's index, KEYS[i>1]
# the hashes of drivers in it, ARGV[1] the oldest live recorded ms, ARGV[i>1] the members). The
# check is repeated here, atomically with ingest, so a fix that lands after the caller's read
# survives.
_FORGET_LUA = """
local removed = 0
for i = 2, #KEYS do
  local t = redis.call('HGET', KEYS[i], 't')
  if (not t) or tonumber(t) < tonumber(ARGV[1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""


# Last fix and availability of many drivers of one partition (KEYS = their hashes); false
# becomes a nil reply.
_STATES_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'p', 'a')
  out[2 * i - 1] = v[1] or false
  out[2 * i] = v[2] or false
end
return out
"""
STATES_CHUNK = 1000


# At most this many fixes share one ingest pipeline.
INGEST_BATCH = 256


@dataclass(frozen=True, slots=True)
class Fix:
    """One accepted fix on its way in: what the live state shows (`location`, serialised as
    `payload`), whether it may move the live state at all, and the fix to store when it is not
    the one shown (a fix held at the driver's standing position)."""

    location: DriverLocation
    payload: bytes
    live: bool = True
    stored: bytes = b""


def _ingest_arguments(
    partition: int, fixes: list[Fix], live_window_ms: int
) -> tuple[list[str], list[Any]]:
    """The ingest script's keys and arguments for a batch of one partition's fixes (the hot
    path: plain lists, one pass)."""
    keys = [geo_key(partition), ingest_stream(partition), polar_key(partition)]
    args: list[Any] = [live_window_ms]
    for fix in fixes:
        location = fix.location
        lat, lng = location.position.latitude, location.position.longitude
        recorded = location.recorded_at
        driver_id = location.driver_id
        keys += [
            driver_key(driver_id),
            driver_channel(driver_id),
            cell_channel(partition, cell_of(lat, lng)),
        ]
        args += [
            driver_id,
            lng,
            lat,
            fix.payload,
            location.seq,
            recorded.seconds * 1000 + recorded.nanos // 1_000_000,
            "1" if abs(lat) <= GEO_MAX_LAT else "0",
            "1" if fix.live else "0",
            fix.stored,
        ]
    return keys, args


class LiveStore:
    """Reads and writes the live state; every method is one Redis round trip (ingest shares
    its round trip with the fixes accepted alongside)."""

    def __init__(self, redis: Redis, live_window_s: float) -> None:
        self._redis = redis
        self._live_window_ms = int(live_window_s * 1000)
        self._shas = {
            source: redis.register_script(source).sha
            for source in (_INGEST_LUA, _STATES_LUA, _FORGET_LUA)
        }
        self._queued: list[tuple[Fix, asyncio.Future[StreamId]]] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def redis(self) -> Redis:
        return self._redis

    async def ingest(
        self, location: DriverLocation, payload: bytes, *, live: bool = True, stored: bytes = b""
    ) -> StreamId:
        """Writes one accepted fix, serialised as `payload`; returns its ingest entry id. With
        `live` False the fix is only stored (the live state and its readers never see it); with
        `stored` the live state shows `location` while `stored` is what history keeps.

        Fixes accepted while a write is in flight wait for it and then go together, as one
        pipeline: under load one round trip (one write, one read, one pool checkout) carries
        many fixes, in the order they were accepted; alone, a fix goes at once."""
        done: asyncio.Future[StreamId] = asyncio.get_running_loop().create_future()
        self._queued.append((Fix(location, payload, live, stored), done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued(), name="live-ingest")
        return await done

    async def _write_queued(self) -> None:
        while self._queued:
            batch = self._queued[:INGEST_BATCH]
            del self._queued[:INGEST_BATCH]
            replies: list[Any]
            try:
                replies = await self._ingest_batch([fix for fix, _ in batch])
            except Exception as exc:  # the connection failed: no fix in it is taken
                replies = [exc] * len(batch)
            for (_, done), reply in zip(batch, replies, strict=True):
                if done.done():  # its caller went away (the stream was cancelled)
                    continue
                if isinstance(reply, Exception):
                    done.set_exception(reply)
                else:
                    done.set_result(parse_stream_id(reply))

    async def _ingest_batch(self, fixes: list[Fix]) -> list[Any]:
        """One script call per partition in the batch, sent together; each fix's entry id (or
        the error of its partition's call), in order."""
        groups: dict[int, list[int]] = {}
        for i, fix in enumerate(fixes):
            groups.setdefault(partition_of(fix.location.driver_id), []).append(i)
        calls = [
            _ingest_arguments(p, [fixes[i] for i in members], self._live_window_ms)
            for p, members in groups.items()
        ]
        replies: list[Any] = [None] * len(fixes)
        for members, reply in zip(
            groups.values(), await self._scripts(_INGEST_LUA, calls), strict=True
        ):
            for n, i in enumerate(members):
                replies[i] = reply if isinstance(reply, Exception) else reply[n]
        return replies

    async def _scripts(self, source: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Runs a script once per (keys, args) call, all in one pipeline (one call goes alone);
        each call's reply, or its error. EVALSHA directly, not the Script object, which would
        first ask SCRIPT EXISTS every time; a Redis that lost its script cache (a restart, a
        promoted replica) is given the script and asked again."""
        sha = self._shas[source]
        replies = await self._evalsha_all(sha, calls)
        unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:
            await self._redis.script_load(source)
            again = await self._evalsha_all(sha, [calls[i] for i in unknown])
            for i, reply in zip(unknown, again, strict=True):
                replies[i] = reply
        return replies

    async def _evalsha_all(self, sha: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        if len(calls) == 1:
            keys, args = calls[0]
            try:
                return [await self._redis.evalsha(sha, len(keys), *keys, *args)]
            except NoScriptError as exc:
                return [exc]
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        if all(isinstance(reply, Exception) for reply in replies):
            first = replies[0]
            if not isinstance(first, NoScriptError | ResponseError):
                raise first  # the connection failed: nothing was taken
        return replies

    async def last_state(self, driver_id: str) -> tuple[int, DriverAvailability.ValueType]:
        """The seq of the driver's live fix (0 when none) and their availability."""
        seq, availability = await self._redis.hmget(driver_key(driver_id), ["s", "a"])
        return int(seq) if seq else 0, _availability(availability)

    async def get_location(self, driver_id: str) -> DriverLocation | None:
        """The driver's last live fix, or None when the live window has passed."""
        payload: bytes | None = await self._redis.hget(driver_key(driver_id), "p")  # type: ignore[assignment]
        if not payload:
            return None
        location = DriverLocation.FromString(payload)
        return location if self.is_live(location) else None

    async def assigned_rider(self, driver_id: str) -> str | None:
        """The rider of the active ride the driver is assigned to, None when there is none."""
        rider: bytes | None = await self._redis.get(assigned_key(driver_id))  # type: ignore[assignment]
        return rider.decode() if rider else None

    def is_live(self, location: DriverLocation) -> bool:
        """A fix is live while it is younger than the live window (the key's TTL counts from
        receipt; a fix that was already old when it arrived must not linger past the window)."""
        return self.is_live_at(location, time.time())

    @property
    def live_window_s(self) -> float:
        return self._live_window_ms / 1000

    def is_live_at(self, location: DriverLocation, now_s: float) -> bool:
        """`is_live` against a given clock (callers that stamp one `now` for a whole answer)."""
        return now_s * 1000 - location.recorded_at.ToMilliseconds() <= self._live_window_ms

    async def drivers_nearest(
        self, lat: float, lng: float, radius_m: float, count: int | None
    ) -> list[tuple[str, float]]:
        """Drivers within `radius_m` (Redis's metres), nearest first, with Redis's distance; at
        most `count` (all when None). Every partition's geo index is asked, together, and the
        answers merged: each partition's nearest `count` hold the union's nearest `count`."""
        pipe = self._redis.pipeline(transaction=False)
        for partition in partitions():
            pipe.geosearch(**_nearest(geo_key(partition), lat, lng, radius_m, count))
        merged = sorted(
            (hit for reply in await pipe.execute() for hit in _nearest_hits(reply)),
            key=lambda hit: hit[1],
        )
        return merged if count is None else merged[:count]

    async def geo_within(
        self, key: str, lat: float, lng: float, radius_m: float
    ) -> list[tuple[str, float, float]]:
        """Members of one geo set within `radius_m` (Redis's metres) of a point, with the
        (latitude, longitude) the index holds for each."""
        return _within_hits(await self._redis.geosearch(**_within(key, lat, lng, radius_m)))

    async def drivers_within(
        self, lat: float, lng: float, radius_m: float
    ) -> list[tuple[str, float, float]]:
        """`geo_within` over every partition's geo index, asked together."""
        pipe = self._redis.pipeline(transaction=False)
        for partition in partitions():
            pipe.geosearch(**_within(geo_key(partition), lat, lng, radius_m))
        return [hit for reply in await pipe.execute() for hit in _within_hits(reply)]

    async def driver_states(
        self, driver_ids: Sequence[str]
    ) -> list[tuple[DriverLocation | None, DriverAvailability.ValueType]]:
        """Each driver's last fix (None when the hash expired) and availability, in one pipeline.
        A script reads a chunk of one partition's drivers per call: far cheaper than one HMGET
        each."""
        if not driver_ids:
            return []
        groups: dict[int, list[int]] = {}
        for i, driver_id in enumerate(driver_ids):
            groups.setdefault(partition_of(driver_id), []).append(i)
        chunks = [
            members[start : start + STATES_CHUNK]
            for members in groups.values()
            for start in range(0, len(members), STATES_CHUNK)
        ]
        calls: list[tuple[list[str], list[Any]]] = [
            ([driver_key(driver_ids[i]) for i in chunk], []) for chunk in chunks
        ]
        states: list[tuple[DriverLocation | None, DriverAvailability.ValueType]] = [
            (None, DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE)
        ] * len(driver_ids)
        for chunk, reply in zip(chunks, await self._scripts(_STATES_LUA, calls), strict=True):
            if isinstance(reply, Exception):
                raise reply
            for n, i in enumerate(chunk):
                payload, availability = reply[2 * n], reply[2 * n + 1]
                location = DriverLocation.FromString(payload) if payload else None
                states[i] = (location, _availability(availability))
        return states

    async def live_polar_driver_ids(self, now_s: float) -> list[str]:
        """Drivers beyond the geo index's latitude limit whose fix is live, from every
        partition. The polar sets are scored by fix time, so stale members are pruned here too
        (they only ever shrink by this)."""
        oldest_live_ms = int(now_s * 1000) - self._live_window_ms
        pipe = self._redis.pipeline(transaction=False)
        for partition in partitions():
            pipe.zremrangebyscore(polar_key(partition), "-inf", f"({oldest_live_ms}")
            pipe.zrangebyscore(polar_key(partition), oldest_live_ms, "+inf")
        replies = await pipe.execute()
        return [text(member) for members in replies[1::2] for member in members]

    async def forget_dead(self, driver_ids: Sequence[str], now_s: float) -> int:
        """Removes drivers with no live fix from the geo index; returns how many. Each is checked
        again inside Redis, so a driver whose fresh fix arrived meanwhile is kept."""
        if not driver_ids:
            return 0
        oldest_live_ms = int(now_s * 1000) - self._live_window_ms
        groups: dict[int, list[str]] = {}
        for driver_id in driver_ids:
            groups.setdefault(partition_of(driver_id), []).append(driver_id)
        calls = [
            ([geo_key(p), *(driver_key(d) for d in members)], [oldest_live_ms, *members])
            for p, members in groups.items()
        ]
        removed = 0
        for reply in await self._scripts(_FORGET_LUA, calls):
            if isinstance(reply, Exception):
                raise reply
            removed += int(reply)
        return removed

    async def indexed_drivers(self) -> int:
        """How many drivers the geo indexes hold (live or not yet forgotten)."""
        pipe = self._redis.pipeline(transaction=False)
        for partition in partitions():
            pipe.zcard(geo_key(partition))
        return sum(await pipe.execute())

    async def locations_in_box(self, box: Box, limit: int) -> list[DriverLocation]:
        """Live drivers inside a box, for a watcher's first screen."""
        lat, lng = box.center()
        # Redis refuses a centre beyond its latitude limit: move it there and widen to match.
        clamped = max(-GEO_MAX_LAT, min(GEO_MAX_LAT, lat))
        radius = box.covering_radius_m() + haversine_m(lat, lng, clamped, lng)
        # Redis measures on a slightly larger sphere than ours: pad so no box corner is missed.
        members = [
            member
            for member, _ in await self.drivers_nearest(clamped, lng, radius * 1.001 + 10.0, limit)
        ]
        if box.north > GEO_MAX_LAT or box.south < -GEO_MAX_LAT:
            members += await self.live_polar_driver_ids(time.time())
        found = []
        for location, _ in await self.driver_states(members):
            if location is None or not self.is_live(location):
                continue
            if box.contains(location.position.latitude, location.position.longitude):
                found.append(location)
        return found[:limit]


def _availability(raw: bytes | str | None) -> DriverAvailability.ValueType:
    if not raw:
        return DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE
    return DriverAvailability.ValueType(int(raw))


def _circle(key: str, lat: float, lng: float, radius_m: float, **options: Any) -> dict[str, Any]:
    """GEOSEARCH's arguments for members within `radius_m` metres of a point, plus `options`."""
    return {
        "name": key,
        "longitude": lng,
        "latitude": lat,
        "radius": radius_m,
        "unit": "m",
    } | options


def _nearest(
    key: str, lat: float, lng: float, radius_m: float, count: int | None
) -> dict[str, Any]:
    """Members within a radius, nearest first, with their distance; at most `count`."""
    return _circle(key, lat, lng, radius_m, sort="ASC", count=count, withdist=True)


def _nearest_hits(reply: Any) -> list[tuple[str, float]]:
    return [(text(member), float(dist)) for member, dist in reply]


def _within(key: str, lat: float, lng: float, radius_m: float) -> dict[str, Any]:
    """Members within a radius, with the positions the index holds."""
    return _circle(key, lat, lng, radius_m, withcoord=True)


def _within_hits(reply: Any) -> list[tuple[str, float, float]]:
    return [(text(member), float(pos[1]), float(pos[0])) for member, pos in reply]
