"""Zones that end (deleted, or past their expiry time): every driver inside is sent an EXIT
carrying the reason, then the zone's row goes.

Deleting a zone marks its row ended in PostgreSQL, in the RPC's transaction; the EXITs follow at
once, and a sweeper on every GeoQuery replica finishes any zone whose EXITs are still owed
(Redis was away, the replica died) and ends zones whose expiry time passed. Ending is
idempotent, so two replicas sweeping the same zone send each EXIT once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from redis.asyncio import Redis

from services.geo.fence_events import zone_entry
from services.geo.geofence_store import EndedZone
from services.geo.zone_cache import announce_change
from services.geo.zone_index import Zone
from services.live.events import LOG_EVENT_LUA, RETENTION_S, log_args
from services.live.names import (
    ended_zones_key,
    events_meta_key,
    events_stream,
    fence_members_key,
    fence_state_key,
    partitions,
)
from services.live.replies import text
from services.server.failures import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 1.0

# A zone that ended, for one driver of a partition: the zone leaves the driver's state, with an
# EXIT when it was entered (not when its ENTER was still pending). Idempotent.
# KEYS: the driver's state, the partition's event log, its epoch, its zone members.
# ARGV: zone id, driver id, the zone's entry JSON, the reason, the end's ms time, the event
# log's epoch candidate and retention ms.
_END_LUA = (
    LOG_EVENT_LUA
    + """
redis.call('ZREM', KEYS[4], ARGV[1] .. '|' .. ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'z', 'f')
if not state[1] then return 0 end
local kept, found = {}, nil
for item in string.gmatch(state[1], '[^,]+') do
  local id, status = string.match(item, '^([^@]+)@(%a)@')
  if not id then id, status = item, 'I' end
  if id == ARGV[1] then found = status else kept[#kept + 1] = item end
end
if not found then return 0 end
redis.call('HSET', KEYS[1], 'z', table.concat(kept, ','))
if found == 'P' or not state[2] then return 0 end
local fix = cjson.decode(state[2])
fix['t'] = tonumber(ARGV[5])
log_event(KEYS[2], KEYS[3], ARGV[6], tonumber(ARGV[7]), 'geofence.exit', cjson.encode(fix),
  ARGV[3], ARGV[4])
return 1
"""
)


class ZoneEnder:
    """Ends zones in Redis: every partition stops entering them, and every driver holding one is
    sent its EXIT (with the reason) and has it dropped. Idempotent, so a sweep that died half
    way is simply run again."""

    def __init__(self, redis: Redis, *, retention_s: float = RETENTION_S) -> None:
        self._redis = redis
        self._end = redis.register_script(_END_LUA)
        self._retention_s = retention_s

    async def end(self, zone: Zone, reason: str, at_ms: int) -> int:
        """Returns how many EXITs were sent."""
        entry = zone_entry(zone)
        pipe = self._redis.pipeline(transaction=False)
        for partition in partitions():
            pipe.sadd(ended_zones_key(partition), zone.geofence_id)
        await pipe.execute()
        exits = 0
        prefix = f"{zone.geofence_id}|"
        for partition in partitions():
            members: Any = await self._redis.zrange(
                fence_members_key(partition),
                f"[{prefix}",
                f"({zone.geofence_id}}}",  # "}" sorts right after "|"
                bylex=True,
            )
            for member in members:
                driver_id = text(member)[len(prefix) :]
                keys = [
                    fence_state_key(driver_id),
                    events_stream(partition),
                    events_meta_key(partition),
                    fence_members_key(partition),
                ]
                args: list[Any] = [zone.geofence_id, driver_id, entry, reason, at_ms]
                args += log_args(self._retention_s)
                exits += int(await self._end(keys, args))
        return exits


class EndedZones(Protocol):
    """The part of the zone store the sweeper uses (services.geo.geofence_store)."""

    async def ended(self, limit: int = 100) -> list[EndedZone]: ...

    async def forget(self, geofence_id: str) -> None: ...


class ZoneSweeper:
    """Sends the EXITs of zones that ended, then drops their rows; ends expired zones first."""

    def __init__(
        self,
        store: EndedZones,
        redis: Redis,
        *,
        every_s: float = SWEEP_EVERY_S,
        retention_s: float = RETENTION_S,
    ) -> None:
        self._store = store
        self._redis = redis
        self._ender = ZoneEnder(redis, retention_s=retention_s)
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="zone-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def sweep(self) -> int:
        """Ends every zone owed; returns the EXITs sent."""
        async with self._lock:
            exits = 0
            ended = await self._store.ended()
            for item in ended:
                at_ms = round(item.ended_at.timestamp() * 1000)
                exits += await self._ender.end(item.zone, item.reason, at_ms)
                await self._store.forget(item.zone.geofence_id)
            if ended:
                await announce_change(self._redis)
            return exits

    async def sweep_now(self) -> None:
        """Sends the EXITs of a zone just deleted at once; if Redis or PostgreSQL is away they
        are owed, and the next sweep sends them."""
        try:
            await self.sweep()
        except Exception as exc:
            raise_if_cancelling(exc)
            log.warning("ending zones deferred to the sweeper (%s)", type(exc).__name__)

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # PostgreSQL or Redis away: the next sweep retries
                raise_if_cancelling(exc)
                log.warning("ending zones paused (%s); retrying", type(exc).__name__)
            await asyncio.sleep(self._every_s)
