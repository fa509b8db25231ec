"""A driver's activity (the live hash field `v`), which the sampling hints on its stream follow,
and asking a driver's app for a fix now."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

from redis.asyncio import Redis

from ridemesh.v1.location_service_pb2 import (
    DriverActivity,
    FixRequest,
    SamplingHint,
    StreamLocationsResponse,
)
from services.live.names import control_channel, driver_key
from services.live.replies import text

Activity: TypeAlias = DriverActivity.ValueType
UNSPECIFIED = DriverActivity.DRIVER_ACTIVITY_UNSPECIFIED

# One round trip: write `v` unless the current value is not one of ARGV[4..] (when given; a
# missing field counts as 0), give a hash this created the live window's TTL, and tell the
# driver's stream, which turns the activity into a full hint. Returns 1 when changed, 0 when it
# already was that activity (nothing is sent), -1 when the current activity forbade the change.
_SET_LUA = """
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current == ARGV[1] then return 0 end
if #ARGV > 3 then
  local allowed = false
  for i = 4, #ARGV do
    if current == ARGV[i] then allowed = true end
  end
  if not allowed then return -1 end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('SPUBLISH', KEYS[2], ARGV[3])
return 1
"""


def activity_message(activity: Activity) -> StreamLocationsResponse:
    """What goes on the control channel when the activity changes: the activity alone; the
    stream that holds the driver fills in the interval and accuracy from its policy."""
    return StreamLocationsResponse(sampling_hint=SamplingHint(activity=activity))


async def set_activity(
    redis: Redis,
    driver_id: str,
    activity: Activity,
    *,
    only_from: Iterable[Activity] = (),
    live_window_s: float = 300.0,
) -> int:
    """Sets the driver's activity (only when it is now one of `only_from`, if given) and tells
    the driver's stream. Returns 1 changed, 0 unchanged, -1 refused by `only_from`."""
    message = activity_message(activity).SerializeToString()
    reply = await redis.eval(
        _SET_LUA,
        2,
        driver_key(driver_id),
        control_channel(driver_id),
        int(activity),
        int(live_window_s * 1000),
        message,
        *(int(a) for a in only_from),
    )
    return int(reply)


async def get_activity(redis: Redis, driver_id: str) -> Activity:
    """The driver's stored activity (UNSPECIFIED when none is stored)."""
    raw = await redis.hget(driver_key(driver_id), "v")
    if raw is None:
        return UNSPECIFIED
    value = text(raw)
    if not value.isdigit() or int(value) not in DriverActivity.values():
        return UNSPECIFIED  # written by something newer, or broken: the default hint follows
    return int(value)  # type: ignore[return-value]


async def request_fix(redis: Redis, driver_id: str, reason: str) -> None:
    """Asks the driver's app, through whichever replica holds its stream, for a fix now; the
    stream lets at most one through per driver every few seconds."""
    message = StreamLocationsResponse(fix_request=FixRequest(reason=reason))
    await redis.spublish(control_channel(driver_id), message.SerializeToString())
