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
from services.simulator.city import Grid
from services.simulator.settings import SimSettings
from services.simulator.stats import Stats

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
        self._pending: set[asyncio.Task[None]] = set()

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
        if self._pending:
            await asyncio.wait(self._pending, timeout=5.0)

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
        self.requested[response.ride.ride_id] = rider_id

    async def tally_expired(self) -> None:
        """Counts, at the end, the requested rides that expired with nobody accepting them."""
        states = await asyncio.gather(
            *(self._state(ride_id, rider) for ride_id, rider in self.requested.items())
        )
        self._stats.rides_expired = sum(1 for s in states if s == pb.RIDE_STATE_EXPIRED)

    async def _state(self, ride_id: str, rider_id: str) -> int:
        try:
            response = await self._rides.GetRide(
                pb.GetRideRequest(ride_id=ride_id), metadata=self._metadata(rider_id), timeout=5.0
            )
        except aio.AioRpcError:
            return pb.RIDE_STATE_UNSPECIFIED
        return response.ride.state
