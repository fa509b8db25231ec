"""One simulated driver app: its own StreamLocations stream, fixes on a timer (the server's
sampling hint when it honours hints, and one at once when asked), offers answered, rides driven
through every state, and a jittered reconnect when the stream drops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

from grpc import aio

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1 import ride_service_pb2 as ride_pb
from ridemesh.v1 import ride_service_pb2_grpc as ride_grpc
from ridemesh.v1.common_pb2 import LatLng
from services.ops.simulator.city import Grid, drive_to, gps_fix, roam, snap_to_street
from services.ops.simulator.pacing import Pacer
from services.ops.simulator.settings import SimSettings
from services.ops.simulator.stats import Stats

log = logging.getLogger(__name__)
Metadata = tuple[tuple[str, str], ...]


@dataclass
class Trip:
    """The ride a driver is on: where it goes next, and whether the rider is aboard."""

    ride_id: str
    pickup: tuple[float, float]
    dropoff: tuple[float, float]
    arrived: bool = False  # at the pickup, waiting for the rider to get in
    aboard: bool = False


class SimulatedDriver:
    """A driver's phone: streams fixes as the car moves, and works the rides it is offered."""

    def __init__(
        self,
        driver_id: str,
        metadata: Metadata,
        channel: aio.Channel,
        grid: Grid,
        settings: SimSettings,
        stats: Stats,
        rng: random.Random,
    ) -> None:
        self.driver_id = driver_id
        self._metadata = metadata
        self._location = location_grpc.LocationServiceStub(channel)
        self._rides = ride_grpc.RideServiceStub(channel)
        self._grid = grid
        self._settings = settings
        self._stats = stats
        self._rng = rng
        self.car = grid.random_intersection(rng)
        self.speed_mps = rng.uniform(*settings.speed_mps)
        self.seq = 0  # continues across reconnects, as a real app's would
        self._acked = 0
        self.trip: Trip | None = None
        self._outbox: asyncio.Queue[pb.StreamLocationsRequest | None] = asyncio.Queue()
        self._answering: set[asyncio.Task[None]] = set()
        self._accepting = False  # an AcceptRide in flight: a second offer is declined meanwhile
        # A parked driver stays where it is until a ride takes it somewhere (and parks there).
        self.parked = rng.random() < settings.parked_fraction
        # The server's latest sampling hint, and whether it asked for a fix now.
        self.hint: pb.SamplingHint | None = None
        self._fix_now = False
        self._wake = asyncio.Event()
        # When each recent fix went out (monotonic s) and the activity hinted then (tests read it).
        self.sent: deque[tuple[float, int]] = deque(maxlen=512)
        self._moved_at: float | None = None
        self._moving = asyncio.Lock()

    async def run(self, stop: asyncio.Event, pacer: Pacer) -> None:
        """Keeps a stream open until `stop`, reconnecting with jittered exponential backoff."""
        attempt = 0
        while not stop.is_set():
            await pacer.wait()
            try:
                await self._session(stop)
                attempt = 0
            except aio.AioRpcError as exc:
                if stop.is_set():
                    break
                self._stats.reconnects += 1
                low, high = self._settings.reconnect_backoff_s
                delay = min(high, low * 2**attempt) * self._rng.uniform(0.5, 1.0)
                attempt += 1
                log.debug("%s: stream dropped (%s), retrying in %.1fs", self.driver_id, exc, delay)
                await _sleep_or_stop(stop, delay)
        if self._answering:  # let offers being answered finish before the channel closes
            await asyncio.wait(self._answering, timeout=5.0)

    async def _session(self, stop: asyncio.Event) -> None:
        """One stream: returns when stopped (after closing it), raises when it drops."""
        self._outbox = asyncio.Queue()
        # Fixes queued on a dropped stream are lost, so acks on this one count from here.
        self._acked = max(self._acked, self.seq)
        call = self._location.StreamLocations(self._requests(), metadata=self._metadata)
        reader = asyncio.create_task(self._read(call))
        try:
            await self._drive(stop, reader)
        finally:
            self._outbox.put_nowait(None)  # half-close: the server ends the call
            try:
                await asyncio.wait_for(reader, 2.0)
            except TimeoutError:
                call.cancel()

    async def _requests(self) -> AsyncIterator[pb.StreamLocationsRequest]:
        while (request := await self._outbox.get()) is not None:
            yield request

    async def _drive(self, stop: asyncio.Event, reader: asyncio.Task[None]) -> None:
        """Moves the car and sends a fix every few seconds until stopped or the stream ends."""
        while not stop.is_set() and not reader.done():
            await self.advance()
            self._send_fix()
            await self._until_next_fix(stop, reader, time.monotonic())

    def _interval_s(self) -> float:
        """The wait before the next fix: the hinted interval (up to 10% more, so a fleet does
        not send in step), or the configured range without hints."""
        hint = self.hint
        if hint is None or not self._settings.honour_hints:
            return self._rng.uniform(*self._settings.fix_interval_s)
        return hint.interval.ToNanoseconds() / 1e9 * self._rng.uniform(1.0, 1.1)

    async def _until_next_fix(
        self, stop: asyncio.Event, reader: asyncio.Task[None], sent_at: float
    ) -> None:
        """Waits out the interval; a new hint re-times the wait from the last fix, a fix request
        ends it. Wakes early when stopped or when the stream drops, so a reconnect is not
        delayed."""
        due = sent_at + self._interval_s()
        while not stop.is_set() and not reader.done():
            left = due - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            stopped = asyncio.create_task(stop.wait())
            woken = asyncio.create_task(self._wake.wait())
            await asyncio.wait(
                {stopped, reader, woken}, timeout=left, return_when="FIRST_COMPLETED"
            )
            stopped.cancel()
            woken.cancel()
            if self._fix_now:
                self._fix_now = False
                return
            if woken.done() and not woken.cancelled():
                due = sent_at + self._interval_s()

    async def advance(self) -> None:
        """Moves the car as far as it went since it last moved (the bench calls it too, to know
        where the car truly is between fixes)."""
        async with self._moving:
            now = time.monotonic()
            elapsed = 0.0 if self._moved_at is None else now - self._moved_at
            self._moved_at = now
            await self._move(elapsed)

    async def _move(self, elapsed_s: float) -> None:
        distance = self.speed_mps * elapsed_s
        trip = self.trip
        if trip is None:
            if not self.parked:
                roam(self.car, self._grid, distance, self._rng)
            return
        goal = trip.dropoff if trip.aboard else trip.pickup
        if drive_to(self.car, goal, distance, self._grid.block_m):
            await self._reached(trip)

    def _send_fix(self) -> None:
        lat, lng, accuracy = gps_fix(self._grid, self.car, self._rng, self._settings.gps_sigma_m)
        self.seq += 1
        update = pb.LocationUpdate(
            driver_id=self.driver_id,
            position=LatLng(latitude=lat, longitude=lng),
            heading_deg=self.car.heading_deg,
            speed_mps=self.speed_mps,
            accuracy_m=accuracy,
            seq=self.seq,
        )
        update.recorded_at.GetCurrentTime()
        self._outbox.put_nowait(pb.StreamLocationsRequest(update=update))
        self._stats.fixes_sent += 1
        self.sent.append((time.monotonic(), self.hint.activity if self.hint else 0))

    async def _read(self, call: aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
        async for response in call:
            kind = response.WhichOneof("kind")
            if kind == "ack":
                if response.ack.seq > self._acked:
                    self._stats.fixes_acked += response.ack.seq - self._acked
                    self._acked = response.ack.seq
            elif kind == "rejected":
                self._stats.fixes_rejected += 1
            elif kind == "offer":
                task = asyncio.create_task(self._answer(response.offer))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
            elif kind == "sampling_hint":
                self._stats.hints += 1
                self.hint = response.sampling_hint
                if self._settings.honour_hints:
                    self._wake.set()
            elif kind == "fix_request":
                self._stats.fix_requests += 1
                if self._settings.honour_hints:
                    self._fix_now = True
                    self._wake.set()

    async def _answer(self, offer: pb.RideOffer) -> None:
        """Accepts most offers (when free), declines the rest."""
        self._stats.offers += 1
        ids = {"ride_id": offer.ride_id, "driver_id": self.driver_id}
        busy = self.trip is not None or self._accepting
        if busy or self._rng.random() >= self._settings.accept_probability:
            self._stats.offers_declined += 1
            request = ride_pb.DeclineRideRequest(**ids, reason="busy")
            await self._call(self._rides.DeclineRide(request, metadata=self._metadata))
            return
        self._accepting = True
        try:
            accept = ride_pb.AcceptRideRequest(**ids)
            if not await self._call(self._rides.AcceptRide(accept, metadata=self._metadata)):
                return
        finally:
            self._accepting = False
        self._stats.rides_accepted += 1
        self.trip = Trip(
            offer.ride_id, self._street_point(offer.pickup), self._street_point(offer.dropoff)
        )

    async def _call(self, call: Awaitable[object]) -> bool:
        """Awaits one ride call; False (logged) when the ride moved on without us."""
        try:
            await call
        except aio.AioRpcError as exc:
            log.debug("%s: %s: %s", self.driver_id, exc.code().name, exc.details())
            return False
        return True

    def _street_point(self, point: LatLng) -> tuple[float, float]:
        x, y = self._grid.to_xy(point.latitude, point.longitude)
        return snap_to_street(x, y, self._grid.block_m)

    async def _reached(self, trip: Trip) -> None:
        """At the pickup: arrived, then (a fix later, once the rider is in) started; at the
        drop-off: completed, then roaming again."""
        ids = {"ride_id": trip.ride_id, "driver_id": self.driver_id}
        try:
            if not trip.arrived:
                await self._rides.MarkDriverArrived(
                    ride_pb.MarkDriverArrivedRequest(**ids), metadata=self._metadata
                )
                trip.arrived = True
                return
            if not trip.aboard:
                await self._rides.StartRide(
                    ride_pb.StartRideRequest(**ids), metadata=self._metadata
                )
                trip.aboard = True
                return
            await self._rides.CompleteRide(
                ride_pb.CompleteRideRequest(**ids), metadata=self._metadata
            )
            self._stats.rides_completed += 1
        except aio.AioRpcError as exc:
            # The ride ended under us (the rider cancelled it, say): drop it and roam on.
            log.debug("%s: ride %s: %s", self.driver_id, trip.ride_id, exc.details())
        self.trip = None


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
