"""Geofence ENTER/EXIT events: turned from the live fix flow once per transition, and watched."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverLocation
from services.domain.errors import InvalidArgument, NotFound
from services.geo.zone_index import Zone, ZoneIndex
from services.geo.zones import validate_labels
from services.live.events import (
    LOG_EVENT_LUA,
    RETENTION_S,
    EventFeed,
    EventLog,
    LoggedEvent,
    fix_json,
    follow,
    log_args,
)
from services.live.group import CLAIM_IDLE_S, GroupConsumer, newest_fixes
from services.live.names import (
    ZONES_GROUP,
    ended_zones_key,
    events_meta_key,
    events_stream,
    fence_members_key,
    fence_state_key,
    partition_of,
)
from services.live.replies import text

log = logging.getLogger(__name__)

# A driver's zone state is kept this long after their last fix, so idle drivers do not pile up.
STATE_TTL_S = 86400
MAX_WATCH_IDS = 100
# Each round resolves zones a fix leaves; a third round only happens when other replicas keep
# moving the driver's state in between, and the driver's next fix settles it anyway.
_MAX_ROUNDS = 3
_MAX_PIPELINE = 500

# KEYS: the driver's state, the partition's event log and its epoch, the partition's zone
# members and ended zones. The state holds the last applied fix (`t`, `s`, and `f` as JSON) and
# the zones it holds (`z`: "id@S@since" items, S being P (inside, ENTER not yet due), I
# (entered) or D (entered, DWELL sent), since the fix's ms time of that status; a bare "id"
# from older versions is I).
# ARGV: recorded ms, seq, ttl s, driver id, the fix as JSON, the ids of the zones holding the
# fix, the ids of zones whose hysteresis band holds it (outside, but not far enough to leave),
# the ids of held zones the caller does not know (kept as they are), the event log's epoch
# candidate and retention ms, then (id, entry JSON, entry delay ms, dwell ms) of the zones the
# caller can describe.
# Returns 0 when the stored fix is as new or newer (another replica applied this one, or it is
# stale), 1 when applied, or the ids of entered zones left that the caller did not describe
# (nothing is written then; the caller looks them up and calls again).
# Each transition is appended to the event log inside the script, so it is logged once, in the
# driver's state order, whichever replica applied which fix. Zones that ended are neither
# entered nor kept (their EXITs were sent when they ended).
_APPLY_LUA = (
    LOG_EVENT_LUA
    + """
local function ids(csv, ended)
  local list, set = {}, {}
  for id in string.gmatch(csv, '[^,]+') do
    if not ended[id] then list[#list + 1] = id; set[id] = true end
  end
  return list, set
end
local state = redis.call('HMGET', KEYS[1], 't', 's', 'z')
local t, s = tonumber(ARGV[1]), tonumber(ARGV[2])
local old_t = 0
if state[1] then
  old_t = tonumber(state[1])
  local old_s = tonumber(state[2])
  if old_t > t or (old_t == t and old_s >= s) then return 0 end
end
local driver, fix = ARGV[4], ARGV[5]
local held, order, legacy = {}, {}, {}
for item in string.gmatch(state[3] or '', '[^,]+') do
  local id, status, since = string.match(item, '^([^@]+)@(%a)@(%d+)$')
  if not id then id, status, since = item, 'I', old_t; legacy[id] = true end
  held[id] = {status, tonumber(since)}
  order[#order + 1] = id
end
local ended = {}
local candidates = ARGV[6] .. ',' .. ARGV[7] .. ',' .. ARGV[8]
for _, id in ipairs(order) do candidates = candidates .. ',' .. id end
for id in string.gmatch(candidates, '[^,]+') do
  if ended[id] == nil then ended[id] = redis.call('SISMEMBER', KEYS[5], id) == 1 end
end
local inside_list, inside = ids(ARGV[6], ended)
local _, near = ids(ARGV[7], ended)
local _, unknown_here = ids(ARGV[8], ended)
local gone = {}
for id, is_ended in pairs(ended) do if is_ended then gone[id] = true end end
local entry, delay, dwell = {}, {}, {}
for i = 11, #ARGV, 4 do
  entry[ARGV[i]] = ARGV[i + 1]
  delay[ARGV[i]] = tonumber(ARGV[i + 2])
  dwell[ARGV[i]] = tonumber(ARGV[i + 3])
end
local unknown = {}
for _, id in ipairs(order) do
  local left = not inside[id] and not near[id] and not gone[id] and not unknown_here[id]
  if left and held[id][1] ~= 'P' and not entry[id] then unknown[#unknown + 1] = id end
end
if #unknown > 0 then return unknown end
local events, kept = {}, {}
local function keep(id, status, since)
  kept[#kept + 1] = id .. '@' .. status .. '@' .. string.format('%d', since)
  if not held[id] or legacy[id] then redis.call('ZADD', KEYS[4], 0, id .. '|' .. driver) end
end
local function advance(id, status, since)
  if status == 'P' and inside[id] and t - since >= delay[id] then
    events[#events + 1] = {'geofence.enter', id}
    status, since = 'I', t
  end
  if status == 'I' and dwell[id] > 0 and t - since >= dwell[id] then
    events[#events + 1] = {'geofence.dwell', id}
    status = 'D'
  end
  keep(id, status, since)
end
local exits = {}
for _, id in ipairs(order) do
  local status, since = held[id][1], held[id][2]
  if gone[id] then
    redis.call('ZREM', KEYS[4], id .. '|' .. driver)
  elseif unknown_here[id] then
    keep(id, status, since)
  elseif inside[id] or near[id] then
    advance(id, status, since)
  else
    if status ~= 'P' then exits[#exits + 1] = {'geofence.exit', id} end
    redis.call('ZREM', KEYS[4], id .. '|' .. driver)
  end
end
for _, id in ipairs(inside_list) do
  if not held[id] and entry[id] then advance(id, 'P', t) end
end
redis.call('HSET', KEYS[1], 't', ARGV[1], 's', ARGV[2], 'f', fix, 'z', table.concat(kept, ','))
redis.call('EXPIRE', KEYS[1], ARGV[3])
-- EXITs first: a driver leaving one zone for a neighbour leaves first.
for _, list in ipairs({exits, events}) do
  for _, event in ipairs(list) do
    log_event(KEYS[2], KEYS[3], ARGV[9], tonumber(ARGV[10]), event[1], fix, entry[event[2]])
  end
end
return 1
"""
)


class HasZoneIndex(Protocol):
    """Anything holding the current zone index (the zone cache); read per use, never kept."""

    @property
    def index(self) -> ZoneIndex: ...


@dataclass(slots=True)
class FenceStats:
    """What a tracker did with the fixes it saw (skipped + applied + stale + unresolved =
    handled)."""

    handled: int = 0
    skipped: int = 0
    applied: int = 0
    stale: int = 0
    retried: int = 0
    unresolved: int = 0
    failed_batches: int = 0


Described = tuple[str, int, int]


def described(entry: str, zone: Zone) -> Described:
    """What the script is told of a zone: its entry, entry delay and dwell time in ms."""
    timing = zone.timing
    return entry, round(timing.entry_delay_s * 1000), round(timing.dwell_s * 1000)


@dataclass(slots=True)
class PendingFix:
    """One fix on its way through the script, with what this replica knows about its zones."""

    location: DriverLocation
    index: ZoneIndex
    zone_ids: str
    # Described zones: their entry (as published) and entry delay and dwell time in ms.
    entries: dict[str, Described]
    # Held zones this replica's index does not know (kept as they are).
    unknown: list[str] = field(default_factory=list)
    # Zones whose hysteresis band holds the fix (outside, not far enough to leave).
    near_ids: str = ""


def zone_entry(zone: Zone) -> str:
    """A zone as the published message carries it, so watchers need no lookup (zones never
    change; a zone deleted or not yet loaded elsewhere is still described)."""
    return json.dumps(
        {"id": zone.geofence_id, "n": zone.display_name, "l": dict(zone.labels)},
        separators=(",", ":"),
    )


def script_keys(driver_id: str) -> list[str]:
    """KEYS of the apply script for one driver's fix (pure)."""
    partition = partition_of(driver_id)
    return [
        fence_state_key(driver_id),
        events_stream(partition),
        events_meta_key(partition),
        fence_members_key(partition),
        ended_zones_key(partition),
    ]


def script_args(pending: PendingFix, retention_s: float = RETENTION_S) -> list[Any]:
    """ARGV of the apply script for one fix (pure)."""
    location = pending.location
    args: list[Any] = [
        location.recorded_at.ToMilliseconds(),
        location.seq,
        STATE_TTL_S,
        location.driver_id,
        fix_json(location),
        pending.zone_ids,
        pending.near_ids,
        ",".join(pending.unknown),
        *log_args(retention_s),
    ]
    for geofence_id, (entry, delay_ms, dwell_ms) in pending.entries.items():
        args += (geofence_id, entry, delay_ms, dwell_ms)
    return args


class _EntryCache:
    """Zone entries encoded once per index: the index is swapped whole on refresh."""

    def __init__(self) -> None:
        self._index: ZoneIndex | None = None
        self._entries: dict[str, str] = {}

    def get(self, index: ZoneIndex, zone: Zone) -> str:
        if index is not self._index:
            self._index, self._entries = index, {}
        entry = self._entries.get(zone.geofence_id)
        if entry is None:
            entry = self._entries[zone.geofence_id] = zone_entry(zone)
        return entry


class FenceTracker:
    """Applies every fix in the world to its driver's zone state in Redis, publishing transitions.

    The replicas share the work: each reads every partition's ingest log as one consumer of the
    zones group, so each fix is handed to one replica (at least once: entries a replica read and
    did not acknowledge, because it died, are taken over by another after CLAIM_IDLE_S). An entry
    is acknowledged once its fix is applied. The script applies a fix only if it is newer than
    the driver's stored state, so a fix handed out twice, or a late one, changes nothing and
    publishes nothing: watchers see each transition once.
    """

    def __init__(
        self,
        redis: Redis,
        zones: HasZoneIndex,
        *,
        claim_idle_s: float = CLAIM_IDLE_S,
        retry_s: float = 1.0,
        every_s: float | None = None,
        retention_s: float = RETENTION_S,
    ) -> None:
        self._redis = redis
        self._retention_s = retention_s
        self._zones = zones
        self._apply = redis.register_script(_APPLY_LUA)
        self._entries = _EntryCache()
        self.stats = FenceStats()
        self._group = GroupConsumer(
            redis,
            ZONES_GROUP,
            self._handle,
            claim_idle_s=claim_idle_s,
            retry_s=retry_s,
            every_s=every_s,
            on_failure=self._failed,
        )
        self.consumer = self._group.consumer

    async def start(self) -> None:
        """Returns once every fix entered from now on will be handed to some replica."""
        await self._group.start()

    async def stop(self) -> None:
        await self._group.stop()

    def _failed(self) -> None:
        self.stats.failed_batches += 1

    async def _handle(self, stream: str, entries: list[Any]) -> None:
        """Applies the newest fix per driver among `entries`, then acknowledges them all."""
        newest = newest_fixes(entries)
        self.stats.skipped += sum(1 for _, fields in entries if fields) - len(newest)
        batch = list(newest.values())
        for start in range(0, len(batch), _MAX_PIPELINE):
            await self._apply_batch(batch[start : start + _MAX_PIPELINE])
        if entries:
            await self._redis.xack(stream, ZONES_GROUP, *(entry_id for entry_id, _ in entries))

    async def _apply_batch(self, locations: Sequence[DriverLocation]) -> None:
        pending = [self._prepare(location) for location in locations]
        for _ in range(_MAX_ROUNDS):
            results = await self._run(pending)
            retry = []
            for item, result in zip(pending, results, strict=True):
                if isinstance(result, list):
                    self._describe(item, [text(r) for r in result])
                    retry.append(item)
                elif result == 1:
                    self.stats.applied += 1
                else:
                    self.stats.stale += 1
            self.stats.handled += len(pending) - len(retry)
            self.stats.retried += len(retry)
            pending = retry
            if not pending:
                return
        self.stats.unresolved += len(pending)
        self.stats.handled += len(pending)
        log.warning("%d fixes left unapplied: their drivers' zone state kept moving", len(pending))

    def _prepare(self, location: DriverLocation) -> PendingFix:
        index = self._zones.index  # read per fix: a refreshed index takes effect at once
        lat, lng = location.position.latitude, location.position.longitude
        zones = index.containing(lat, lng)
        near = index.in_margin(lat, lng)
        entries = {z.geofence_id: described(self._entries.get(index, z), z) for z in zones + near}
        inside = ",".join(sorted(z.geofence_id for z in zones))
        return PendingFix(
            location, index, inside, entries, near_ids=",".join(z.geofence_id for z in near)
        )

    def _describe(self, item: PendingFix, left: list[str]) -> None:
        # A zone the driver left is described from this fix's index. One this index does not
        # hold is kept as it is, with no event: it may be new and not loaded here yet (another
        # replica entered it), and a zone that ended is dropped by the script itself, which
        # knows the ended zones (they sent their EXITs when they ended).
        for geofence_id in left:
            zone = item.index.get(geofence_id)
            if zone is None:
                item.unknown.append(geofence_id)
            else:
                item.entries[geofence_id] = described(self._entries.get(item.index, zone), zone)

    async def _run(self, pending: Sequence[PendingFix]) -> list[Any]:
        """One EVALSHA per fix in one pipeline. EVALSHA directly, not the Script in a pipeline,
        which asks SCRIPT EXISTS first every time; a Redis that lost its scripts (a restart)
        gets the script loaded and the batch sent again."""
        replies = await self._pipeline(pending)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            await self._redis.script_load(_APPLY_LUA)
            replies = await self._pipeline(pending)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _pipeline(self, pending: Sequence[PendingFix]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for item in pending:
            keys = script_keys(item.location.driver_id)
            pipe.evalsha(self._apply.sha, len(keys), *keys, *script_args(item, self._retention_s))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


_TRANSITIONS = {
    "geofence.enter": pb.GeofenceTransition.GEOFENCE_TRANSITION_ENTER,
    "geofence.exit": pb.GeofenceTransition.GEOFENCE_TRANSITION_EXIT,
    "geofence.dwell": pb.GeofenceTransition.GEOFENCE_TRANSITION_DWELL,
}


def is_zone_event(event: LoggedEvent) -> bool:
    return event.kind in _TRANSITIONS


def zone_event(event: LoggedEvent) -> pb.GeofenceEvent:
    """A logged zone event as the API shows it (pure)."""
    fix, zone = event.fix, event.subject
    message = pb.GeofenceEvent(
        transition=_TRANSITIONS[event.kind],
        driver_id=fix["d"],
        geofence_id=zone["id"],
        geofence_display_name=zone["n"],
        event_id=event.event_id,
        reason=event.reason,
    )
    message.event_time.FromMilliseconds(int(fix["t"]))
    message.position.latitude = fix["lat"]
    message.position.longitude = fix["lng"]
    return message


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a watcher wants: of any of `geofence_ids` (all when empty) AND carrying all
    of `labels`."""

    geofence_ids: frozenset[str]
    labels: Mapping[str, str]

    def accepts(self, event: LoggedEvent) -> bool:
        if event.kind not in _TRANSITIONS:
            return False
        zone = event.subject
        if self.geofence_ids and zone["id"] not in self.geofence_ids:
            return False
        labels = zone.get("l", {})
        return all(labels.get(key) == value for key, value in self.labels.items())


def event_filter(index: ZoneIndex, request: pb.WatchGeofenceEventsRequest) -> EventFilter:
    """Validates a watch request against the zones this replica knows; raises naming the fault.
    (A resumed watch may name a zone that ended since: its EXITs are still in the log.)"""
    ids = list(request.geofence_ids)
    if len(ids) > MAX_WATCH_IDS:
        raise InvalidArgument(
            f"geofence_ids has {len(ids)} entries; at most {MAX_WATCH_IDS} are allowed "
            "(watch by labels to follow more zones)"
        )
    if any(not geofence_id for geofence_id in ids):
        raise InvalidArgument("geofence_ids must not contain an empty id")
    labels = validate_labels(request.labels)
    missing = sorted({geofence_id for geofence_id in ids if index.get(geofence_id) is None})
    if missing and not request.resume_token:
        shown = ", ".join(repr(m[:80]) for m in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise NotFound(f"no geofence with id {shown}{more}")
    return EventFilter(frozenset(ids), labels)


async def watch_geofence_events(
    feed: EventFeed,
    log_: EventLog,
    zones: HasZoneIndex,
    request: pb.WatchGeofenceEventsRequest,
) -> AsyncIterator[pb.WatchGeofenceEventsResponse]:
    """Streams the zone events the request asks for: after its resume token, or from now on."""
    wanted = event_filter(zones.index, request)
    async for event, token in follow(feed, log_, request.resume_token, wanted.accepts):
        yield pb.WatchGeofenceEventsResponse(event=zone_event(event), resume_token=token)
