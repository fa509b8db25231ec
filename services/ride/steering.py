"""What a ride means for its driver's app: the activity its sampling hints follow, and a fix now
when someone starts watching the ride's driver."""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.location_service_pb2 import DriverActivity
from services.live.activity import Activity, request_fix, set_activity
from services.ride.states import DRIVER_ARRIVED, DRIVER_ASSIGNED, IN_PROGRESS, TERMINAL
from services.server.failures import raise_if_cancelling, unavailable

log = logging.getLogger(__name__)

TO_PICKUP = DriverActivity.DRIVER_ACTIVITY_TO_PICKUP
NEAR_PICKUP = DriverActivity.DRIVER_ACTIVITY_NEAR_PICKUP
ON_RIDE = DriverActivity.DRIVER_ACTIVITY_ON_RIDE
AVAILABLE = DriverActivity.DRIVER_ACTIVITY_AVAILABLE
UNSPECIFIED = DriverActivity.DRIVER_ACTIVITY_UNSPECIFIED

# A driver at the pickup stays close to it until the ride starts.
_BY_STATE = {DRIVER_ASSIGNED: TO_PICKUP, DRIVER_ARRIVED: NEAR_PICKUP, IN_PROGRESS: ON_RIDE}


def ride_activity(ride: pb.Ride) -> Activity | None:
    """The activity the ride's state gives its driver (None: the ride has no say, it is still
    looking for one)."""
    if ride.state in TERMINAL:
        return AVAILABLE
    return _BY_STATE.get(ride.state)


async def follow_ride(redis: Redis, ride: pb.Ride, live_window_s: float) -> None:
    """Sets the driver's activity from the ride's state (part of the ride's effects: idempotent,
    and repaired with them)."""
    activity = ride_activity(ride)
    if activity is not None and ride.driver_id:
        await set_activity(redis, ride.driver_id, activity, live_window_s=live_window_s)


async def approaching_pickup(redis: Redis, driver_id: str) -> None:
    """The driver is close to the pickup: NEAR_PICKUP, unless the ride moved on meanwhile (only
    a driver on the way to a pickup, or of unknown activity, changes)."""
    await set_activity(redis, driver_id, NEAR_PICKUP, only_from=(TO_PICKUP, UNSPECIFIED))


async def ask_for_fix(redis: Redis, driver_id: str) -> None:
    """A rider opened the map of a ride with this driver: its app sends a fix now. Best effort: a
    watch goes on without it when Redis is away."""
    try:
        await request_fix(redis, driver_id, "a rider opened the map")
    except Exception as exc:
        raise_if_cancelling(exc)
        failure = unavailable(exc)
        if failure is None:
            raise
        log.warning("could not ask driver %s for a fix: %s", driver_id, failure)
