"""Redis pub/sub channel names shared by every part of RideService, and the ride publisher."""

from __future__ import annotations

from typing import Any

from ridemesh.v1 import ride_service_pb2 as pb


def ride_channel(ride_id: str) -> str:
    """Ride proto bytes, published after every committed change of that ride."""
    return f"rm:ch:ride:{ride_id}"


def control_channel(driver_id: str) -> str:
    """StreamLocationsResponse bytes for the driver's own stream (offer / offer_withdrawn)."""
    return f"rm:ch:control:{driver_id}"


def chat_channel(ride_id: str) -> str:
    """ChatMessage bytes of a ride's chat."""
    return f"rm:ch:chat:{ride_id}"


async def publish_ride(redis: Any, ride: pb.Ride) -> None:
    """Announces a committed change of `ride` to its watchers."""
    await redis.publish(ride_channel(ride.ride_id), ride.SerializeToString())
