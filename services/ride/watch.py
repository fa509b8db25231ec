"""WatchRide: a ride's current state at once, then every transition and driver move, with an ETA."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverLocation, LatLng
from services.domain.errors import InvalidArgument, NotFound
from services.domain.routing import Router
from services.domain.validation import fix_order, required_id
from services.live.events import EventFeed, EventLog, LoggedEvent, follow
from services.live.fanout import Hub
from services.live.names import driver_channel, ride_channel
from services.live.store import LiveStore
from services.ride.proximity import is_ride_event, ride_event
from services.ride.states import ACTIVE, TERMINAL

log = logging.getLogger(__name__)

MAX_WATCH_RIDES = 1000

RideState = pb.RideState

# Lifecycle order: a ride never goes back to a lower rank, and every end state is final.
_RANK = {
    RideState.RIDE_STATE_UNSPECIFIED: 0,
    RideState.RIDE_STATE_REQUESTED: 1,
    RideState.RIDE_STATE_DRIVER_ASSIGNED: 2,
    RideState.RIDE_STATE_DRIVER_ARRIVED: 3,
    RideState.RIDE_STATE_IN_PROGRESS: 4,
    RideState.RIDE_STATE_COMPLETED: 5,
    RideState.RIDE_STATE_CANCELLED: 5,
    RideState.RIDE_STATE_EXPIRED: 5,
}


class RideReader(Protocol):
    """The part of the ride store a watcher reads."""

    async def get(self, ride_id: str) -> pb.Ride | None: ...


def ride_order(ride: pb.Ride) -> tuple[int, int]:
    """Sorts snapshots of one ride oldest first: by lifecycle rank, then by update time."""
    return _RANK.get(ride.state, 0), ride.update_time.ToNanoseconds()


def eta_target(ride: pb.Ride) -> LatLng | None:
    """Where the ETA points: the pickup until the driver arrives, the drop-off while riding."""
    if ride.state == RideState.RIDE_STATE_DRIVER_ASSIGNED:
        return ride.pickup
    if ride.state == RideState.RIDE_STATE_IN_PROGRESS:
        return ride.dropoff
    return None


def is_newer(ride: pb.Ride, sent: pb.Ride | None) -> bool:
    """Whether a snapshot is worth sending after `sent`: not older, and not the same one again
    (the first screen's state is usually also published while the watcher subscribes)."""
    if sent is None:
        return True
    return ride_order(ride) >= ride_order(sent) and ride != sent


class WatchMailbox:
    """What a watcher has yet to send: ride snapshots in a FIFO that never loses a transition,
    and the tracked driver's newest fix, conflated to one.

    Snapshots within one state are conflated to the newest (each is the whole ride, so the newer
    one supersedes it), and stale ones are dropped on arrival: the FIFO holds at most one entry
    per lifecycle rank, so it is bounded without ever dropping a transition."""

    __slots__ = ("_location", "_ready", "_rides", "_events", "_failure", "dropped_locations")

    def __init__(self) -> None:
        self._rides: deque[pb.Ride] = deque()
        # Proximity events are few (a handful per ride) and never conflated.
        self._events: deque[pb.RideEvent] = deque()
        self._location: DriverLocation | None = None
        self._ready = asyncio.Event()
        self._failure: Exception | None = None
        self.dropped_locations = 0

    def fail(self, error: Exception) -> None:
        """Makes the watcher's next get() raise `error` (the hub lost its connection)."""
        self._failure = error
        self._ready.set()

    def put_ride(self, ride: pb.Ride) -> None:
        # Runs in the hub's reader: constant work per message.
        if self._rides:
            newest = self._rides[-1]
            if ride_order(ride) < ride_order(newest):
                return
            if ride.state == newest.state:
                self._rides[-1] = ride
                return
        self._rides.append(ride)
        self._ready.set()

    def put_event(self, event: pb.RideEvent) -> None:
        self._events.append(event)
        self._ready.set()

    def put_location(self, location: DriverLocation) -> None:
        if self._location is not None:
            self.dropped_locations += 1
        self._location = location
        self._ready.set()

    async def get(self) -> pb.Ride | pb.RideEvent | DriverLocation:
        """The next thing to send; ride snapshots go before events, and both before a waiting
        position."""
        await self._ready.wait()
        if self._failure is not None:
            raise self._failure
        item: pb.Ride | pb.RideEvent | DriverLocation
        if self._rides:
            item = self._rides.popleft()
        elif self._events:
            item = self._events.popleft()
        else:
            assert self._location is not None
            item, self._location = self._location, None
        if not self._rides and not self._events and self._location is None:
            self._ready.clear()
        return item


# Asks a driver's app for a fix now (services/ride/steering.py ask_for_fix).
AskFix = Callable[[str], Awaitable[None]]


async def _no_fix(driver_id: str) -> None:
    return None


class _RideWatch:
    """One watcher's state: the last ride and fix sent, and the driver subscription."""

    def __init__(
        self,
        locations_hub: Hub[DriverLocation],
        live: LiveStore,
        router: Router,
        ask_fix: AskFix = _no_fix,
    ) -> None:
        self.mailbox = WatchMailbox()
        self._ask_fix = ask_fix
        self._locations_hub = locations_hub
        self._live = live
        self._router = router
        self.ride: pb.Ride | None = None
        self._driver_id = ""
        self._location: DriverLocation | None = None

    async def show(self, ride: pb.Ride) -> pb.WatchRideResponse:
        self.ride = ride
        await self._follow(ride.driver_id if ride.state in ACTIVE else "")
        return await self._response()

    async def on_ride(self, ride: pb.Ride) -> pb.WatchRideResponse | None:
        """The response for a new snapshot, or None when it is stale or a repeat."""
        if not is_newer(ride, self.ride):
            return None
        return await self.show(ride)

    async def on_location(self, location: DriverLocation) -> pb.WatchRideResponse | None:
        """The response for a fix of the tracked driver, or None for an old or foreign fix."""
        if location.driver_id != self._driver_id or not self._is_newer_fix(location):
            return None
        self._location = location
        return await self._response()

    async def on_event(self, event: pb.RideEvent) -> pb.WatchRideResponse:
        """The ride as it is, announcing a proximity event."""
        response = await self._response()
        response.event.CopyFrom(event)
        return response

    def ended(self) -> bool:
        return self.ride is not None and self.ride.state in TERMINAL

    async def close(self) -> None:
        await self._follow("")
        if self.mailbox.dropped_locations:
            log.debug("a slow ride watcher skipped %d fixes", self.mailbox.dropped_locations)

    async def _follow(self, driver_id: str) -> None:
        """Moves the driver subscription to `driver_id` ("" for none)."""
        if driver_id == self._driver_id:
            return
        sink = self.mailbox.put_location
        if self._driver_id:
            await self._locations_hub.remove(driver_channel(self._driver_id), sink)
        self._driver_id, self._location = driver_id, None
        if driver_id:
            # Subscribed before reading the last fix, so no move falls between the two.
            await self._locations_hub.add(
                driver_channel(driver_id), sink, on_lost=self.mailbox.fail
            )
            self._location = await self._live.get_location(driver_id)
            # Someone now shows this driver on a map: a fresh fix beats waiting for the next one.
            await self._ask_fix(driver_id)

    def _is_newer_fix(self, location: DriverLocation) -> bool:
        return self._location is None or fix_order(location) > fix_order(self._location)

    async def _response(self) -> pb.WatchRideResponse:
        assert self.ride is not None
        response = pb.WatchRideResponse(ride=self.ride)
        if self._location is None:
            return response
        response.driver_location.CopyFrom(self._location)
        target = eta_target(self.ride)
        if target is not None:
            route = await self._router.route(
                self._location.position, target, float(self._location.speed_mps)
            )
            response.eta.FromNanoseconds(round(route.duration_s * 1e9))
            response.eta_distance_m = route.distance_m
        return response


async def watch_ride(
    store: RideReader,
    rides_hub: Hub[pb.Ride],
    locations_hub: Hub[DriverLocation],
    live: LiveStore,
    router: Router,
    request: pb.WatchRideRequest,
    *,
    events: EventFeed | None = None,
    authorize: Callable[[pb.Ride], None] = lambda ride: None,
    ask_fix: AskFix = _no_fix,
) -> AsyncIterator[pb.WatchRideResponse]:
    """The ride now, then every transition, proximity event and move of its driver; ends after
    an end state. `authorize` sees the ride as first read and raises when the caller may not
    watch it; `ask_fix` is called with each driver the watcher starts following."""
    ride_id = required_id(request.ride_id, "ride_id")
    watch = _RideWatch(locations_hub, live, router, ask_fix)
    channel = ride_channel(ride_id)

    def on_logged(event: LoggedEvent) -> None:
        # Runs in the event feed's reader for every event in the world: keep it cheap.
        if is_ride_event(event) and event.subject.get("id") == ride_id:
            watch.mailbox.put_event(ride_event(event))

    # Subscribed before the read: a transition committed in between is then in the mailbox.
    await rides_hub.add(channel, watch.mailbox.put_ride, on_lost=watch.mailbox.fail)
    if events is not None:
        events.add(on_logged, watch.mailbox.fail)
    try:
        current = await store.get(ride_id)
        if current is None:
            raise NotFound(f"no ride with id {ride_id!r}")
        authorize(current)
        # The first screen goes out at once, ahead of anything already in the mailbox.
        yield await watch.show(current)
        while not watch.ended():
            item = await watch.mailbox.get()
            if isinstance(item, pb.Ride):
                response = await watch.on_ride(item)
            elif isinstance(item, pb.RideEvent):
                response = await watch.on_event(item)
            else:
                response = await watch.on_location(item)
            if response is not None:
                yield response
    finally:
        if events is not None:
            events.remove(on_logged)
        await rides_hub.remove(channel, watch.mailbox.put_ride)
        await watch.close()


async def watch_ride_events(
    feed: EventFeed, log_: EventLog, request: pb.WatchRideEventsRequest
) -> AsyncIterator[pb.WatchRideEventsResponse]:
    """Proximity events of the chosen rides (all when none): after the resume token, or from
    now on."""
    ids = frozenset(request.ride_ids)
    if len(ids) > MAX_WATCH_RIDES:
        raise InvalidArgument(f"ride_ids has {len(ids)} entries; at most {MAX_WATCH_RIDES}")

    def wanted(event: LoggedEvent) -> bool:
        return is_ride_event(event) and (not ids or event.subject.get("id") in ids)

    async for event, token in follow(feed, log_, request.resume_token, wanted):
        yield pb.WatchRideEventsResponse(event=ride_event(event), resume_token=token)
