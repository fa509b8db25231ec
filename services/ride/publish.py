"""Announcing a committed change of a ride to everyone watching it."""

from __future__ import annotations

from typing import Any

from ridemesh.v1 import ride_service_pb2 as pb
from services.live.names import ride_channel


async def publish_ride(redis: Any, ride: pb.Ride) -> None:
    """Announces a committed change of `ride` to its watchers (WatchRide, the live map)."""
    await redis.spublish(ride_channel(ride.ride_id), ride.SerializeToString())
