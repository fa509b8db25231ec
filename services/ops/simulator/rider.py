"""Riders: ride requests at a steady average rate, each from its own rider with its own token,
with pickups and drop-offs near the centre."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import uuid
from collections.abc import Callable

from grpc import aio

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1 import ride_service_pb2_grpc as ride_grpc
from ridemesh.v1.common_pb2 import LatLng
from services.ops.simulator.city import Grid
from services.ops.simulator.settings import SimSettings
from services.ops.simulator.stats import Stats
from services.ride.states import TERMINAL

log = logging.getLogger(__name__)
Metadata = tuple[tuple[str, str], ...]


def random_point(grid: Grid, radius_m: float, rng: random.Random) -> LatLng:
    """A point uniformly inside `radius_m` of the grid's centre."""
    r = radius_m * math.sqrt(rng.random())
    angle = rng.uniform(0.0, 2 * math.pi)
    lat, lng = grid.to_latlng(r * math.cos(angle), r * math.sin(angle))
    return LatLng(latitude=lat, longitude=lng)


class Riders:
    """Requests rides as a Poisson process of `ride_rate_per_min`, remembering who asked."""

    def __init__(
        self,
        channel: aio.Channel,
        rider_metadata: Callable[[str], Metadata],
        grid: Grid,
        settings: SimSettings,
        stats: Stats,
        rng: random.Random,
        run_id: str,
    ) -> None:
        self._rides = ride_grpc.RideServiceStub(channel)
        self._metadata = rider_metadata
        self._grid = grid
        self._settings = settings
        self._stats = stats
        self._rng = rng
        self._run_id = run_id
        self.requested: dict[str, str] = {}  # ride id -> rider id
        self._pending: set[asyncio.Task[None]] = set()  # RequestRide calls in flight
        self._waiting: set[asyncio.Task[None]] = set()  # riders waiting for a driver

    async def run(self, stop: asyncio.Event) -> None:
        if self._settings.ride_rate_per_min <= 0:
            return
        mean_gap_s = 60.0 / self._settings.ride_rate_per_min
        number = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._rng.expovariate(1.0 / mean_gap_s))
            if stop.is_set():
                break
            number += 1
            task = asyncio.create_task(self._request(f"sim-rider-{self._run_id}-{number}"))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _request(self, rider_id: str) -> None:
        radius = self._settings.trip_radius_m
        request = pb.RequestRideRequest(
            rider_id=rider_id,
            pickup=random_point(self._grid, radius, self._rng),
            dropoff=random_point(self._grid, radius, self._rng),
            request_id=str(uuid.uuid4()),
        )
        try:
            response = await self._rides.RequestRide(request, metadata=self._metadata(rider_id))
        except aio.AioRpcError as exc:
            self._stats.request_errors += 1
            log.info("ride request by %s failed: %s", rider_id, exc.details())
            return
        self._stats.rides_requested += 1
        ride_id = response.ride.ride_id
        self.requested[ride_id] = rider_id
        task = asyncio.create_task(self._impatient(ride_id, rider_id))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _impatient(self, ride_id: str, rider_id: str) -> None:
        """Still no driver after a while: the rider gives up."""
        await asyncio.sleep(self._settings.rider_patience_s)
        if await self._state(ride_id, rider_id) == pb.RIDE_STATE_REQUESTED:
            await self._cancel(ride_id, rider_id, "no driver came")

    async def wind_down(self) -> None:
        """At the end of a run, every ride still open is cancelled by its rider, so none is left
        hanging; then counts how the rides ended."""
        if self._pending:  # requests in flight: their rides must be known to be ended
            await asyncio.wait(self._pending, timeout=10.0)
        for task in list(self._waiting):
            task.cancel()
        items = list(self.requested.items())
        states = await asyncio.gather(*(self._state(ride, rider) for ride, rider in items))
        await asyncio.gather(
            *(
                self._cancel(ride, rider, "the simulation stopped")
                for (ride, rider), state in zip(items, states, strict=True)
                if state not in TERMINAL
            )
        )
        final = await asyncio.gather(*(self._state(ride, rider) for ride, rider in items))
        self._stats.rides_cancelled = sum(1 for s in final if s == pb.RIDE_STATE_CANCELLED)
        self._stats.rides_expired = sum(1 for s in final if s == pb.RIDE_STATE_EXPIRED)

    async def _cancel(self, ride_id: str, rider_id: str, reason: str) -> None:
        request = pb.CancelRideRequest(
            ride_id=ride_id, cancelled_by=pb.PARTY_RIDER, actor_id=rider_id, reason=reason
        )
        try:
            await self._rides.CancelRide(request, metadata=self._metadata(rider_id), timeout=5.0)
        except aio.AioRpcError as exc:  # it ended meanwhile (completed, say): nothing to do
            log.debug("cancelling %s: %s", ride_id, exc.details())

    async def _state(self, ride_id: str, rider_id: str) -> int:
        try:
            response = await self._rides.GetRide(
                pb.GetRideRequest(ride_id=ride_id), metadata=self._metadata(rider_id), timeout=5.0
            )
        except aio.AioRpcError:
            return pb.RIDE_STATE_UNSPECIFIED
        return response.ride.state
