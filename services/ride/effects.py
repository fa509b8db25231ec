"""A ride change's side effects in Redis, applied after its PostgreSQL commit, and repaired when
Redis failed in between or lost them.

Each state change sets `effects_due` on the ride row in its own transaction (an outbox of one
flag). Applying the effects clears it; a sweeper applies whatever is still owed a moment later,
and when Redis comes back empty it owes every ride in progress again. The effects are idempotent:
they set the state a ride implies (the driver BUSY and assigned while it is active, AVAILABLE and
unassigned once it ended, the driver's activity that its sampling hints follow, the request out
of the open set), and announce the ride again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Protocol

from redis.asyncio import Redis

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverAvailability
from ridemesh.v1.location_service_pb2 import RideOfferWithdrawn, StreamLocationsResponse
from services.live.names import (
    LIVE_EPOCH_KEY,
    OPEN_REQUESTS_KEY,
    assigned_key,
    control_channel,
    offer_key,
)
from services.ride.availability import set_availability
from services.ride.proximity import clear_target, set_target
from services.ride.publish import publish_ride
from services.ride.states import ACTIVE, TERMINAL, state_name
from services.ride.steering import follow_ride
from services.server.failures import raise_if_cancelling, unavailable

log = logging.getLogger(__name__)

AVAILABLE = DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE
BUSY = DriverAvailability.DRIVER_AVAILABILITY_BUSY
# The assignment record outlives a ride that never reached its end (a replica died) this long.
ASSIGNMENT_TTL_S = 24 * 3600
# A change's own RPC applies its effects at once; the sweeper takes over after this long.
OWED_AFTER_S = 2.0
REPAIR_EVERY_S = 1.0


class EffectsStore(Protocol):
    """The part of the ride store the effects use (services.ride.store.RideStore)."""

    async def effects_applied(self, ride: pb.Ride) -> None: ...

    async def effects_owed(self, older_than_s: float, limit: int = 100) -> list[pb.Ride]: ...

    async def owe_effects_of_active_rides(self) -> int: ...


def withdrawn_message(ride_id: str, reason: str) -> StreamLocationsResponse:
    """Tells a driver's app that an offer it holds is gone."""
    return StreamLocationsResponse(
        offer_withdrawn=RideOfferWithdrawn(ride_id=ride_id, reason=reason)
    )


class RideEffects:
    """Applies what a committed ride change means for the live state."""

    def __init__(
        self,
        store: EffectsStore,
        redis: Redis,
        live_window_s: float,
        owed_after_s: float = OWED_AFTER_S,
    ) -> None:
        self._store = store
        self._redis = redis
        self._live_window_s = live_window_s
        self._owed_after_s = owed_after_s

    async def settle(self, ride: pb.Ride) -> None:
        """After a commit: applies the change's effects now. With Redis away they stay owed
        (the change itself is committed, so its RPC still succeeds) and the sweeper applies
        them once Redis is back."""
        try:
            await self.apply(ride)
        except Exception as exc:
            failure = unavailable(exc)
            if failure is None:
                raise
            log.warning(
                "ride %s is %s; its effects in Redis wait for the sweeper: %s",
                ride.ride_id,
                state_name(ride.state),
                failure,
                extra={"ride_id": ride.ride_id},
            )

    async def apply(self, ride: pb.Ride) -> None:
        """Sets what the ride's state implies, announces it, and marks the effects applied."""
        if ride.state in ACTIVE:
            await self._busy(ride)
        elif ride.state in TERMINAL:
            await self._free(ride)
        await publish_ride(self._redis, ride)
        await self._store.effects_applied(ride)

    async def repair_forever(self) -> None:
        """Applies owed effects every REPAIR_EVERY_S, until cancelled."""
        while True:
            await asyncio.sleep(REPAIR_EVERY_S)
            try:
                await self.repair()
            except Exception as exc:  # Redis or PostgreSQL away: the next round tries again
                raise_if_cancelling(exc)
                failure = unavailable(exc)
                if failure is None:
                    log.exception("ride effects repair failed")
                else:
                    log.warning("ride effects repair waits: %s", failure)

    async def repair(self) -> int:
        """One round: owes every active ride again if Redis lost its data, then applies what is
        owed. Returns how many rides were repaired."""
        # A missing epoch means Redis restarted empty (or was flushed): every BUSY flag and
        # assignment is gone. SET NX makes one replica notice it, once.
        if await self._redis.set(LIVE_EPOCH_KEY, secrets.token_hex(8), nx=True):
            owed = await self._store.owe_effects_of_active_rides()
            if owed:
                log.warning("the live store lost ride state; reapplying %d rides in progress", owed)
        repaired = 0
        for ride in await self._store.effects_owed(self._owed_after_s):
            await self.apply(ride)
            repaired += 1
        return repaired

    async def _busy(self, ride: pb.Ride) -> None:
        """The driver is busy, assigned to the ride's rider (who may now watch them), and the
        request no longer open."""
        await self._redis.set(assigned_key(ride.driver_id), ride.rider_id, ex=ASSIGNMENT_TTL_S)
        await set_target(self._redis, ride)
        await follow_ride(self._redis, ride, self._live_window_s)
        await set_availability(self._redis, ride.driver_id, BUSY, self._live_window_s)
        await self._redis.zrem(OPEN_REQUESTS_KEY, ride.ride_id)

    async def _free(self, ride: pb.Ride) -> None:
        """The ride's driver is free again, an outstanding offer is withdrawn (RideStore.cancel
        names its driver in `offered_driver_id`), and the request leaves the open set."""
        if ride.driver_id:
            await self._redis.delete(assigned_key(ride.driver_id))
            await clear_target(self._redis, ride)
            await follow_ride(self._redis, ride, self._live_window_s)
            await set_availability(self._redis, ride.driver_id, AVAILABLE, self._live_window_s)
        if ride.offered_driver_id:
            reason = ride.end_reason or f"the ride is {state_name(ride.state)}"
            message = withdrawn_message(ride.ride_id, reason).SerializeToString()
            await self._redis.spublish(control_channel(ride.offered_driver_id), message)
        await self._redis.zrem(OPEN_REQUESTS_KEY, ride.ride_id)
        await self._redis.delete(offer_key(ride.ride_id))
