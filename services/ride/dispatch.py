"""Dispatch: find drivers through GeoQueryService, offer a ride to one at a time, move on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio import Redis

from ridemesh.v1 import geo_query_service_pb2 as geo_pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverLocation, LatLng
from ridemesh.v1.location_service_pb2 import (
    RideOffer,
    StreamLocationsResponse,
)
from services.domain.errors import FailedPrecondition
from services.domain.geodesy import haversine_m
from services.live.names import (
    OPEN_REQUESTS_KEY,
    SEARCH_RETRY_KEY,
    control_channel,
    offer_key,
)
from services.live.store import GEO_MAX_LAT, LiveStore
from services.ride.effects import withdrawn_message
from services.ride.publish import publish_ride
from services.server.config import Settings
from services.server.failures import raise_if_cancelling

log = logging.getLogger(__name__)

# The inter-service search must answer quickly: RequestRide waits for it.
SEARCH_TIMEOUT_S = 2.0
# Rides whose driver search failed, scored by when to search again (any replica may claim one).
SEARCH_RETRY_S = 2.0
# Lapsed offers advanced per sweep; the rest wait for the next one.
SWEEP_BATCH = 100
# The outstanding offer of a ride as dispatch made it ("driver_id expire_ms"). A sweeper that
# found the ride lapsed checks it names the same driver and has lapsed, so it never times out a
# fresh offer another replica made meanwhile (pb.Ride does not carry the offer's expiry, and
# RideStore.decline(timed_out=True) does not check it). Kept a minute past the offer's expiry.
OFFER_RECORD_SLACK_MS = 60_000


class DispatchStore(Protocol):
    """The parts of the ride store dispatch uses (services.ride.store.RideStore)."""

    async def get(self, ride_id: str) -> pb.Ride | None: ...

    async def set_candidates(
        self, ride_id: str, driver_ids: Sequence[str], deadline: float
    ) -> pb.Ride: ...

    async def offer_next(
        self, ride_id: str, now: float, offer_timeout_s: float
    ) -> tuple[pb.Ride, str | None]: ...

    async def decline(
        self, ride_id: str, driver_id: str, reason: str, *, timed_out: bool = False
    ) -> pb.Ride: ...

    async def lapsed_offers(self, now: float, limit: int) -> list[str]: ...


def search_request(ride: pb.Ride, settings: Settings) -> geo_pb.SearchNearbyDriversRequest:
    """The nearby search for a ride's pickup: available drivers only, nearest first."""
    return geo_pb.SearchNearbyDriversRequest(
        center=ride.pickup,
        radius_m=settings.dispatch_radius_m,
        max_results=settings.dispatch_candidates,
        available_only=True,
    )


def offer_message(
    ride: pb.Ride, driver: DriverLocation | None, expire_s: float
) -> StreamLocationsResponse:
    """The offer a driver's stream carries. Without a live fix the distance is unknown: 0."""
    distance = 0.0
    if driver is not None:
        distance = haversine_m(
            driver.position.latitude,
            driver.position.longitude,
            ride.pickup.latitude,
            ride.pickup.longitude,
        )
    expire_time = Timestamp()
    expire_time.FromMilliseconds(round(expire_s * 1000))
    offer = RideOffer(
        ride_id=ride.ride_id,
        pickup=ride.pickup,
        dropoff=ride.dropoff,
        pickup_distance_m=distance,
        expire_time=expire_time,
    )
    return StreamLocationsResponse(offer=offer)


def indexable(point: LatLng) -> bool:
    """Whether Redis's geo index can hold the point (it stops at ±85.05°)."""
    return abs(point.latitude) <= GEO_MAX_LAT


class Dispatcher:
    """Offers each new ride to the nearest available drivers in turn, until one accepts.

    Every decision is a store transaction; this class only calls the store, then tells the
    drivers (their control channels) and the ride's watchers (its ride channel) what changed.
    """

    def __init__(
        self,
        store: DispatchStore,
        geo: geo_grpc.GeoQueryServiceAsyncStub,
        live: LiveStore,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        search_timeout_s: float = SEARCH_TIMEOUT_S,
    ) -> None:
        self._store = store
        self._geo = geo
        self._redis: Redis = live.redis
        self._settings = settings
        self._clock = clock
        self._search_timeout_s = search_timeout_s
        self._live = live

    async def dispatch(self, ride: pb.Ride) -> pb.Ride:
        """Searches drivers for a new REQUESTED ride and offers it to the nearest.

        When the search fails or is slow (deadline SEARCH_TIMEOUT_S), the ride stays REQUESTED
        without an offer and a sweeper searches again every SEARCH_RETRY_S; once max_dispatch_s
        has passed since the request it expires like a ride nobody accepted.
        """
        if indexable(ride.pickup):
            # Open requests feed the supply heatmap. A polar pickup cannot be indexed by Redis;
            # the ride is dispatched all the same, it is only missing from the map.
            lng, lat = ride.pickup.longitude, ride.pickup.latitude
            await self._redis.geoadd(OPEN_REQUESTS_KEY, (lng, lat, ride.ride_id))
        return await self._search_and_offer(ride)

    async def declined(self, ride_id: str, driver_id: str, reason: str) -> pb.Ride:
        """The offered driver said no: the next candidate gets the offer at once (or EXPIRED)."""
        ride = await self._store.decline(ride_id, driver_id, reason)
        await publish_ride(self._redis, ride)
        return await self._offer_next(ride_id)

    async def sweep_forever(self) -> None:
        """Advances lapsed offers and retries failed searches, every dispatch_sweep_s."""
        while True:
            await asyncio.sleep(self._settings.dispatch_sweep_s)
            try:
                await self.sweep()
            except Exception as exc:  # PostgreSQL or Redis away a moment: the next sweep retries
                raise_if_cancelling(exc)
                log.exception("dispatch sweep failed")

    async def sweep(self) -> None:
        """One round over lapsed offers, stalled dispatches and due search retries."""
        now = self._clock()
        due = await self._store.lapsed_offers(now, SWEEP_BATCH)
        due += await self._claim_retries(now)
        for ride_id in due:
            try:
                await self._lapse(ride_id)
            except Exception:  # one ride's trouble must not hold up the others
                log.exception(
                    "dispatch sweep of ride %s failed", ride_id, extra={"ride_id": ride_id}
                )

    async def _search_and_offer(self, ride: pb.Ride) -> pb.Ride:
        now = self._clock()
        deadline = ride.create_time.ToNanoseconds() / 1e9 + self._settings.max_dispatch_s
        try:
            drivers = await self._search(ride)
        except grpc.aio.AioRpcError as exc:
            if now < deadline:
                log.warning(
                    "driver search for ride %s failed: %s",
                    ride.ride_id,
                    exc.code(),
                    extra={"ride_id": ride.ride_id},
                )
                await self._redis.zadd(SEARCH_RETRY_KEY, {ride.ride_id: now + SEARCH_RETRY_S})
                return ride
            drivers = []  # out of time: no candidates, so offer_next expires the ride
        await self._store.set_candidates(ride.ride_id, drivers, deadline)
        return await self._offer_next(ride.ride_id)

    async def _search(self, ride: pb.Ride) -> list[str]:
        request = search_request(ride, self._settings)
        response = await self._geo.SearchNearbyDrivers(request, timeout=self._search_timeout_s)
        return [d.location.driver_id for d in response.drivers]

    async def _claim_retries(self, now: float) -> list[str]:
        due: list[bytes] = await self._redis.zrangebyscore(  # type: ignore[assignment]
            SEARCH_RETRY_KEY, "-inf", now, start=0, num=SWEEP_BATCH
        )
        claimed = []
        for member in due:
            # ZREM answers 1 to exactly one replica: that one searches again.
            if await self._redis.zrem(SEARCH_RETRY_KEY, member):
                claimed.append(member.decode())
        return claimed

    async def _lapse(self, ride_id: str) -> None:
        ride = await self._store.get(ride_id)
        if ride is None or ride.state != pb.RIDE_STATE_REQUESTED:
            return
        driver_id = ride.offered_driver_id
        if not driver_id:
            # Never offered: its search failed, or a replica died mid-dispatch. Search again
            # (declined drivers stay declined); of concurrent sweeps only one offer is made.
            await self._search_and_offer(ride)
            return
        if not await self._offer_lapsed(ride_id, driver_id):
            return
        try:
            ride = await self._store.decline(
                ride_id, driver_id, "the offer timed out", timed_out=True
            )
        except FailedPrecondition:
            return  # another replica, or the driver's answer, got there first
        await publish_ride(self._redis, ride)
        await self._withdraw(ride_id, driver_id, "the offer timed out")
        await self._offer_next(ride_id)

    async def _offer_next(self, ride_id: str) -> pb.Ride:
        now = self._clock()
        timeout = self._settings.offer_timeout_s
        ride, driver_id = await self._store.offer_next(ride_id, now, timeout)
        await publish_ride(self._redis, ride)
        if driver_id is not None:
            expire_ms = round((now + timeout) * 1000)
            record_ttl_ms = round(timeout * 1000) + OFFER_RECORD_SLACK_MS
            record = f"{driver_id} {expire_ms}"
            await self._redis.set(offer_key(ride_id), record, px=record_ttl_ms)
            location = await self._live.get_location(driver_id)
            message = offer_message(ride, location, now + timeout)
            await self._redis.spublish(control_channel(driver_id), message.SerializeToString())
        elif ride.state == pb.RIDE_STATE_EXPIRED:
            await self._redis.zrem(OPEN_REQUESTS_KEY, ride.ride_id)
        return ride

    async def _offer_lapsed(self, ride_id: str, driver_id: str) -> bool:
        """Whether the offer of the ride to this driver has lapsed by dispatch's clock."""
        record = await self._redis.get(offer_key(ride_id))
        if record is None:
            return True  # the record outlives its offer by a minute: this offer is long gone
        text = record.decode() if isinstance(record, bytes) else record
        offered, _, expire_ms = text.partition(" ")
        return offered == driver_id and int(expire_ms) <= self._clock() * 1000

    async def _withdraw(self, ride_id: str, driver_id: str, reason: str) -> None:
        message = withdrawn_message(ride_id, reason).SerializeToString()
        await self._redis.spublish(control_channel(driver_id), message)
