"""The RideService RPC surface: thin handlers over the store, the dispatcher, watch and chat."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from grpc import aio
from redis.asyncio import Redis

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1 import ride_service_pb2_grpc as pb_grpc
from ridemesh.v1.common_pb2 import DriverLocation, LatLng
from services.auth import rules
from services.auth.interceptor import current_identity
from services.domain import pagetoken
from services.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from services.domain.points import check_point
from services.domain.routing import Router
from services.domain.validation import required_id, validate_id
from services.live.events import EventFeed, EventLog
from services.live.fanout import Hub
from services.live.store import LiveStore
from services.ride.chat import chat, redis_publisher
from services.ride.chat_store import ChatMessages
from services.ride.dispatch import Dispatcher
from services.ride.effects import RideEffects
from services.ride.publish import publish_ride
from services.ride.steering import ask_for_fix
from services.ride.store import RideStore
from services.ride.watch import watch_ride, watch_ride_events

log = logging.getLogger(__name__)

Context = aio.ServicerContext[Any, Any]

MAX_REQUEST_ID = 128
DriverStep = Callable[[str, str, LatLng | None], Awaitable[pb.Ride]]


class RideServicer(pb_grpc.RideServiceServicer):
    """Each handler validates, calls one domain operation, then publishes what changed."""

    def __init__(
        self,
        store: RideStore,
        messages: ChatMessages,
        dispatcher: Dispatcher,
        effects: RideEffects,
        live: LiveStore,
        rides: Hub[pb.Ride],
        locations: Hub[DriverLocation],
        chats: Hub[pb.ChatMessage],
        router: Router,
        redis: Redis,
        listings: RideStore | None = None,
        events: EventFeed | None = None,
    ) -> None:
        self._events = events
        self._event_log = EventLog(redis)
        self._store = store
        # ListRides may read a replica that lags a moment (database_read_url); the rest must
        # see this process's own writes, on the primary.
        self._listings = listings or store
        self._messages = messages
        self._dispatcher = dispatcher
        self._effects = effects
        self._live = live
        self._rides = rides
        self._locations = locations
        self._chats = chats
        self._router = router
        self._redis = redis

    async def RequestRide(
        self, request: pb.RequestRideRequest, context: Context
    ) -> pb.RequestRideResponse:
        rider_id = validate_id(request.rider_id, "rider_id")
        rules.may_request_ride(current_identity(), rider_id)
        check_point(request, "pickup")
        check_point(request, "dropoff")
        if not 1 <= len(request.request_id) <= MAX_REQUEST_ID:
            raise InvalidArgument(
                f"request_id (the idempotency key) must hold 1 to {MAX_REQUEST_ID} characters"
            )
        ride, created = await self._store.create(
            rider_id, request.pickup, request.dropoff, request.request_id, request.auto_arrive
        )
        if created:
            await publish_ride(self._redis, ride)
            ride = await self._dispatcher.dispatch(ride)
        return pb.RequestRideResponse(ride=ride)

    async def GetRide(self, request: pb.GetRideRequest, context: Context) -> pb.GetRideResponse:
        ride = await self._ride(request.ride_id)
        rules.may_read_ride(current_identity(), ride)
        return pb.GetRideResponse(ride=ride)

    async def ListRides(
        self, request: pb.ListRidesRequest, context: Context
    ) -> pb.ListRidesResponse:
        if request.rider_id and request.driver_id:
            raise InvalidArgument("set at most one of rider_id and driver_id")
        if request.rider_id:
            validate_id(request.rider_id, "rider_id")
        elif request.driver_id:
            validate_id(request.driver_id, "driver_id")
        for state in request.states:
            if state not in pb.RideState.values() or state == pb.RIDE_STATE_UNSPECIFIED:
                raise InvalidArgument(f"states holds an unknown ride state {state}")
        rules.may_list_rides(current_identity(), request.rider_id, request.driver_id)
        key = f"{request.rider_id}|{request.driver_id}|{sorted(set(request.states))}"
        after = None
        if request.page_token:
            position = pagetoken.decode(request.page_token, key)
            after = (datetime.fromisoformat(position["t"]), str(position["id"]))
        rides, cursor = await self._listings.list_rides(
            rider_id=request.rider_id,
            driver_id=request.driver_id,
            states=list(request.states),
            page_size=pagetoken.page_size(request.page_size),
            after_cursor=after,
        )
        token = (
            pagetoken.encode({"t": cursor[0].isoformat(), "id": cursor[1]}, key) if cursor else ""
        )
        return pb.ListRidesResponse(rides=rides, next_page_token=token)

    async def AcceptRide(
        self, request: pb.AcceptRideRequest, context: Context
    ) -> pb.AcceptRideResponse:
        ride_id, driver_id = required_id(request.ride_id, "ride_id"), _driver(request)
        rules.may_answer_offer(current_identity(), ride_id, driver_id)
        ride = await self._store.accept(ride_id, driver_id)
        await self._effects.settle(ride)
        return pb.AcceptRideResponse(ride=ride)

    async def DeclineRide(
        self, request: pb.DeclineRideRequest, context: Context
    ) -> pb.DeclineRideResponse:
        ride_id, driver_id = required_id(request.ride_id, "ride_id"), _driver(request)
        rules.may_answer_offer(current_identity(), ride_id, driver_id)
        ride = await self._dispatcher.declined(ride_id, driver_id, request.reason[:500])
        if ride.state == pb.RIDE_STATE_EXPIRED:
            await self._effects.settle(ride)
        return pb.DeclineRideResponse(ride=ride)

    async def MarkDriverArrived(
        self, request: pb.MarkDriverArrivedRequest, context: Context
    ) -> pb.MarkDriverArrivedResponse:
        ride = await self._driver_step(self._store.mark_arrived, request)
        return pb.MarkDriverArrivedResponse(ride=ride)

    async def StartRide(
        self, request: pb.StartRideRequest, context: Context
    ) -> pb.StartRideResponse:
        return pb.StartRideResponse(ride=await self._driver_step(self._store.start, request))

    async def CompleteRide(
        self, request: pb.CompleteRideRequest, context: Context
    ) -> pb.CompleteRideResponse:
        ride = await self._driver_step(self._store.complete, request)
        return pb.CompleteRideResponse(ride=ride)

    async def CancelRide(
        self, request: pb.CancelRideRequest, context: Context
    ) -> pb.CancelRideResponse:
        ride_id = required_id(request.ride_id, "ride_id")
        if request.cancelled_by not in (pb.PARTY_RIDER, pb.PARTY_DRIVER, pb.PARTY_SYSTEM):
            raise InvalidArgument("cancelled_by must be PARTY_RIDER, PARTY_DRIVER or PARTY_SYSTEM")
        if request.cancelled_by != pb.PARTY_SYSTEM:
            required_id(request.actor_id, "actor_id")
        rules.may_cancel(
            current_identity(), await self._ride(ride_id), request.cancelled_by, request.actor_id
        )
        ride = await self._store.cancel(
            ride_id, request.cancelled_by, request.actor_id, request.reason[:500]
        )
        await self._effects.settle(ride)
        return pb.CancelRideResponse(ride=ride)

    async def WatchRide(
        self, request: pb.WatchRideRequest, context: Context
    ) -> AsyncIterator[pb.WatchRideResponse]:
        who = current_identity()
        async for response in watch_ride(
            self._store,
            self._rides,
            self._locations,
            self._live,
            self._router,
            request,
            events=self._events,
            authorize=lambda ride: rules.may_read_ride(who, ride),
            ask_fix=functools.partial(ask_for_fix, self._redis),
        ):
            yield response

    async def WatchRideEvents(
        self, request: pb.WatchRideEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchRideEventsResponse]:
        rules.may_watch_ride_events(current_identity())
        if self._events is None:
            raise Unavailable("ride events are not served by this replica")
        async for response in watch_ride_events(self._events, self._event_log, request):
            yield response

    async def arrive_by_itself(
        self, ride_id: str, driver_id: str, location: DriverLocation
    ) -> None:
        """A ride with auto-arrive whose driver is at the pickup: DRIVER_ASSIGNED ->
        DRIVER_ARRIVED, as if the driver had said so (a ride that moved on meanwhile stays)."""
        try:
            ride = await self._store.mark_arrived(ride_id, driver_id, location.position)
        except (FailedPrecondition, PermissionDenied) as exc:
            log.info("ride %s not moved to arrived by itself: %s", ride_id, exc)
            return
        await self._effects.settle(ride)

    async def Chat(
        self, request_iterator: AsyncIterator[pb.ChatRequest], context: Context
    ) -> AsyncIterator[pb.ChatResponse]:
        who = current_identity()
        publish = redis_publisher(self._redis)
        async for response in chat(
            self._store,
            self._messages,
            self._chats,
            publish,
            request_iterator,
            identify=lambda join: rules.chat_participant(who, join),
        ):
            yield response

    async def _ride(self, ride_id: str) -> pb.Ride:
        ride = await self._store.get(required_id(ride_id, "ride_id"))
        if ride is None:
            raise NotFound(f"no ride with id {ride_id!r}")
        return ride

    async def _driver_step(self, step: DriverStep, request: Any) -> pb.Ride:
        """One of the assigned driver's transitions, stamped with where the driver is now."""
        driver_id = _driver(request)
        rules.may_move_ride(current_identity(), driver_id)
        location = await self._live.get_location(driver_id)
        position = location.position if location is not None else None
        ride = await step(required_id(request.ride_id, "ride_id"), driver_id, position)
        await self._effects.settle(ride)
        return ride


def _driver(request: Any) -> str:
    return required_id(request.driver_id, "driver_id")
