"""A driver's availability: the live hash field `a` that searches read, and the driver's stream."""

from __future__ import annotations

from redis.asyncio import Redis

from ridemesh.v1.common_pb2 import DriverAvailability
from ridemesh.v1.location_service_pb2 import StreamLocationsResponse
from services.live.names import control_channel, driver_key

# One round trip: write `a`, give a hash this created the live window's TTL (a hash that already
# exists keeps its own, which every fix renews), and tell the driver's stream. The stream stamps
# the value on the driver's later fixes, so maps can colour drivers; the app is told as well.
_SET_LUA = """
redis.call('HSET', KEYS[1], 'a', ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SPUBLISH', KEYS[2], ARGV[3])
"""


async def set_availability(
    redis: Redis,
    driver_id: str,
    availability: DriverAvailability.ValueType,
    live_window_s: float = 300.0,
) -> None:
    """Marks the driver BUSY or AVAILABLE for dispatch and for their own stream."""
    message = StreamLocationsResponse(availability=availability).SerializeToString()
    ttl_ms = int(live_window_s * 1000)
    await redis.eval(
        _SET_LUA,
        2,
        driver_key(driver_id),
        control_channel(driver_id),
        int(availability),
        ttl_ms,
        message,
    )
