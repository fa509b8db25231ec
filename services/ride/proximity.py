"""Ride proximity events from the live fix flow: the driver approaching the pickup, at the
pickup, leaving it without starting the ride, and approaching the drop-off.

While a ride is active its effects keep a target in Redis under the driver's keys (the ride, its
state, pickup, drop-off and auto-arrive setting). RideService replicas share every partition's
ingest log as the `rides` group; for each batch they read the targets of the drivers in it, and
for a driver with one, work out the proximity flags its newest fix implies (pure: `step`). A
changed flag goes through a script that applies it only if the fix is newer than the one that
set the flags and the target is still that ride, and logs the events in the event log, so each
event is logged once whichever replica handled which fix. Each flag has an enter and a wider
leave threshold, so a driver waiting at the edge of one does not produce a stream of events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverLocation
from services.domain.geodesy import haversine_m
from services.live.events import LOG_EVENT_LUA, RETENTION_S, LoggedEvent, fix_json, log_args
from services.live.group import GroupConsumer, newest_fixes
from services.live.names import (
    RIDES_GROUP,
    events_meta_key,
    events_stream,
    ingest_stream,
    partition_of,
    partitions,
    ride_target_key,
    ride_targets_key,
)
from services.live.replies import text
from services.ride.states import ACTIVE
from services.ride.steering import approaching_pickup

log = logging.getLogger(__name__)

RideState = pb.RideState
Kind = pb.RideEventKind

# Approaching the pickup: within APPROACH_M, or APPROACH_ETA_S at the current speed; the flag
# drops again beyond APPROACH_LEAVE_M (and the ETA bound), so a new approach is a new event.
APPROACH_M = 500.0
APPROACH_LEAVE_M = 700.0
APPROACH_ETA_S = 120.0
# At the pickup: within AT_PICKUP_M and no faster than STOPPED_MPS. Left it: beyond LEFT_M.
AT_PICKUP_M = 50.0
STOPPED_MPS = 2.0
LEFT_M = 150.0
# Approaching the drop-off (in progress): within DROPOFF_M; the flag drops beyond the leave bound.
DROPOFF_M = 500.0
DROPOFF_LEAVE_M = 700.0
# A target outlives a ride that never reached its end (a replica died) this long.
TARGET_TTL_S = 24 * 3600
# The rides group reads each log at most this often: proximity needs no 10 ms freshness (apps
# send a fix every few seconds), and bigger batches cost fewer round trips per fix (measured:
# RideService 0.22 ms per fix at 2,000 drivers with 10 ms reads).
PACE_S = 0.1

KIND_NAMES = {
    Kind.RIDE_EVENT_KIND_APPROACHING_PICKUP: "ride.approaching_pickup",
    Kind.RIDE_EVENT_KIND_AT_PICKUP: "ride.at_pickup",
    Kind.RIDE_EVENT_KIND_LEFT_PICKUP: "ride.left_pickup",
    Kind.RIDE_EVENT_KIND_APPROACHING_DROPOFF: "ride.approaching_dropoff",
}
KINDS = {name: kind for kind, name in KIND_NAMES.items()}
# Events after which the driver's app samples as near the pickup (services/ride/steering.py).
_NEAR_PICKUP_KINDS = {Kind.RIDE_EVENT_KIND_APPROACHING_PICKUP, Kind.RIDE_EVENT_KIND_AT_PICKUP}

_STAGES = {
    RideState.RIDE_STATE_DRIVER_ASSIGNED: "assigned",
    RideState.RIDE_STATE_DRIVER_ARRIVED: "arrived",
    RideState.RIDE_STATE_IN_PROGRESS: "riding",
}


@dataclass(frozen=True, slots=True)
class Target:
    """A driver's active ride as proximity tracking sees it."""

    ride_id: str
    stage: str  # "assigned", "arrived" or "riding"
    pickup: tuple[float, float]
    dropoff: tuple[float, float]
    auto_arrive: bool = False
    flags: str = ""  # "a" approaching the pickup, "p" at it, "o" approaching the drop-off


def target_fields(ride: pb.Ride) -> dict[str | bytes, str | int | float]:
    """What a ride's effects store as its driver's target (flags are kept by the tracker)."""
    return {
        "r": ride.ride_id,
        "st": _STAGES[ride.state],
        "plat": ride.pickup.latitude,
        "plng": ride.pickup.longitude,
        "dlat": ride.dropoff.latitude,
        "dlng": ride.dropoff.longitude,
        "aa": int(ride.auto_arrive),
    }


def parse_target(fields: Mapping[bytes, bytes]) -> Target | None:
    """A target as stored (None when there is none)."""
    if not fields or b"r" not in fields:
        return None
    return Target(
        text(fields[b"r"]),
        text(fields[b"st"]),
        (float(fields[b"plat"]), float(fields[b"plng"])),
        (float(fields[b"dlat"]), float(fields[b"dlng"])),
        fields.get(b"aa") == b"1",
        text(fields.get(b"x", b"")),
    )


def step(
    target: Target, lat: float, lng: float, speed_mps: float
) -> tuple[str, list[tuple[int, float]]]:
    """The flags a fix implies and the events it raises, as (kind, distance in metres) (pure)."""
    flags = set(target.flags)
    events: list[tuple[int, float]] = []
    if target.stage == "riding":
        flags -= {"a", "p"}
        to_drop = haversine_m(lat, lng, *target.dropoff)
        if "o" not in flags and to_drop <= DROPOFF_M:
            flags.add("o")
            events.append((Kind.RIDE_EVENT_KIND_APPROACHING_DROPOFF, to_drop))
        elif "o" in flags and to_drop > DROPOFF_LEAVE_M:
            flags.discard("o")
        return "".join(sorted(flags)), events
    to_pickup = haversine_m(lat, lng, *target.pickup)
    eta_s = to_pickup / speed_mps if speed_mps > 1.0 else float("inf")
    near = to_pickup <= APPROACH_M or eta_s <= APPROACH_ETA_S
    at = to_pickup <= AT_PICKUP_M and speed_mps <= STOPPED_MPS
    # A driver already at the pickup is reported there, not also approaching it.
    if target.stage == "assigned" and not flags & {"a", "p"} and near and not at:
        flags.add("a")
        events.append((Kind.RIDE_EVENT_KIND_APPROACHING_PICKUP, to_pickup))
    elif "a" in flags and to_pickup > APPROACH_LEAVE_M and eta_s > APPROACH_ETA_S:
        flags.discard("a")
    if "p" not in flags and at:
        flags |= {"p", "a"}
        events.append((Kind.RIDE_EVENT_KIND_AT_PICKUP, to_pickup))
    elif "p" in flags and to_pickup > LEFT_M:
        flags.discard("p")
        events.append((Kind.RIDE_EVENT_KIND_LEFT_PICKUP, to_pickup))
    return "".join(sorted(flags)), events


def ride_event(event: LoggedEvent) -> pb.RideEvent:
    """A logged ride event as the API shows it (pure)."""
    fix = event.fix
    message = pb.RideEvent(
        event_id=event.event_id,
        kind=KINDS[event.kind],
        ride_id=str(event.subject["id"]),
        driver_id=str(fix["d"]),
        distance_m=float(event.subject.get("m", 0.0)),
    )
    message.event_time.FromMilliseconds(int(fix["t"]))
    message.position.latitude = fix["lat"]
    message.position.longitude = fix["lng"]
    return message


def is_ride_event(event: LoggedEvent) -> bool:
    return event.kind in KINDS


# KEYS: the driver's target, the partition's event log and its epoch.
# ARGV: ride id, fix ms time, seq, new flags, the fix as JSON, the log's epoch candidate and
# retention ms, then (kind, subject JSON) per event. Returns 1 when applied, 0 when the target
# is another ride's (or gone) or the fix is not newer than the one that set the flags.
_STEP_LUA = (
    LOG_EVENT_LUA
    + """
local state = redis.call('HMGET', KEYS[1], 'r', 't', 's')
if state[1] ~= ARGV[1] then return 0 end
local t, s = tonumber(ARGV[2]), tonumber(ARGV[3])
if state[2] then
  local old_t, old_s = tonumber(state[2]), tonumber(state[3])
  if old_t > t or (old_t == t and old_s >= s) then return 0 end
end
redis.call('HSET', KEYS[1], 'x', ARGV[4], 't', ARGV[2], 's', ARGV[3])
for i = 8, #ARGV, 2 do
  log_event(KEYS[2], KEYS[3], ARGV[6], tonumber(ARGV[7]), ARGV[i], ARGV[5], ARGV[i + 1])
end
return 1
"""
)


# Called with (ride id, driver id, the fix) when a ride with auto-arrive gets AT_PICKUP.
Arrive = Callable[[str, str, DriverLocation], Awaitable[None]]


async def _no_arrival(ride_id: str, driver_id: str, location: DriverLocation) -> None:
    return None


class ProximityTracker:
    """Turns the fixes of drivers with an active ride into proximity events (see the module)."""

    def __init__(
        self,
        redis: Redis,
        *,
        arrive: Arrive = _no_arrival,
        retention_s: float = RETENTION_S,
        claim_idle_s: float = 10.0,
        every_s: float | None = PACE_S,
    ) -> None:
        self._redis = redis
        self._arrive = arrive
        self._retention_s = retention_s
        self._step = redis.register_script(_STEP_LUA)
        self._group = GroupConsumer(
            redis, RIDES_GROUP, self._handle, claim_idle_s=claim_idle_s, every_s=every_s
        )
        self.applied = 0
        self._partition_of_stream = {ingest_stream(p): p for p in partitions()}

    async def start(self) -> None:
        await self._group.start()

    async def stop(self) -> None:
        await self._group.stop()

    async def _handle(self, stream: str, entries: list[Any]) -> None:
        newest = newest_fixes(entries)
        if newest:
            await self._apply(self._partition_of_stream[stream], newest.values())
        if entries:
            await self._redis.xack(stream, RIDES_GROUP, *(entry_id for entry_id, _ in entries))

    async def _apply(self, partition: int, locations: Iterable[DriverLocation]) -> None:
        # Only drivers with a target (those on a ride) cost a read of it; asking about the batch's
        # drivers costs the batch, not the partition's rides.
        candidates = list(locations)
        on_ride: Any = await self._redis.smismember(
            ride_targets_key(partition), [location.driver_id for location in candidates]
        )
        batch = [location for location, yes in zip(candidates, on_ride, strict=True) if yes]
        if not batch:
            return
        pipe = self._redis.pipeline(transaction=False)
        for location in batch:
            pipe.hgetall(ride_target_key(location.driver_id))
        targets = await pipe.execute()
        for location, fields in zip(batch, targets, strict=True):
            target = parse_target(fields)
            if target is None:  # expired with a ride that never ended: forget the driver
                await self._redis.srem(ride_targets_key(partition), location.driver_id)
                continue
            position = location.position
            flags, events = step(target, position.latitude, position.longitude, location.speed_mps)
            if flags == target.flags and not events:
                continue
            applied = await self._log(location, target, flags, events)
            if not applied:
                continue
            self.applied += 1
            kinds = {kind for kind, _ in events}
            if kinds & _NEAR_PICKUP_KINDS:  # a driver may be at the pickup without approaching
                await approaching_pickup(self._redis, location.driver_id)
            arrived = Kind.RIDE_EVENT_KIND_AT_PICKUP in kinds and target.stage == "assigned"
            if arrived and target.auto_arrive:
                await self._arrive(target.ride_id, location.driver_id, location)

    async def _log(
        self,
        location: DriverLocation,
        target: Target,
        flags: str,
        events: list[tuple[int, float]],
    ) -> bool:
        partition = partition_of(location.driver_id)
        keys = [
            ride_target_key(location.driver_id),
            events_stream(partition),
            events_meta_key(partition),
        ]
        args: list[Any] = [
            target.ride_id,
            location.recorded_at.ToMilliseconds(),
            location.seq,
            flags,
            fix_json(location),
            *log_args(self._retention_s),
        ]
        for kind, distance in events:
            subject = json.dumps({"id": target.ride_id, "m": round(distance, 1)})
            args += [KIND_NAMES[kind], subject]  # type: ignore[index]
        return bool(await self._step(keys, args))


async def set_target(redis: Redis, ride: pb.Ride) -> None:
    """Keeps the driver's target in step with an active ride (its effects call this); a new
    ride, or a new stage, starts with no flags but keeps the fix order of the last flags."""
    key = ride_target_key(ride.driver_id)
    fields: Any = target_fields(ride)
    stored: Any = await redis.hmget(key, ["r", "st"])
    if [text(v) if v is not None else None for v in stored] != [fields["r"], fields["st"]]:
        pipe = redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        if stored[0] is None or text(stored[0]) != ride.ride_id:
            pipe.hdel(key, "x", "t", "s")
        pipe.expire(key, TARGET_TTL_S)
        pipe.sadd(ride_targets_key(partition_of(ride.driver_id)), ride.driver_id)
        await pipe.execute()


async def clear_target(redis: Redis, ride: pb.Ride) -> None:
    """Drops the driver's target once the ride ended (only if it is still that ride's)."""
    if not ride.driver_id:
        return
    key = ride_target_key(ride.driver_id)
    if text(await redis.hget(key, "r") or b"") == ride.ride_id:
        pipe = redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.srem(ride_targets_key(partition_of(ride.driver_id)), ride.driver_id)
        await pipe.execute()


def target_applies(ride: pb.Ride) -> bool:
    return ride.state in ACTIVE and bool(ride.driver_id)
