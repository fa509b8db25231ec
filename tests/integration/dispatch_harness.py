"""What the dispatch tests share: a GeoQueryService over a real channel, drivers, and a listener."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from redis.asyncio import Redis

from ridemesh.v1 import geo_query_service_pb2 as geo_pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import LatLng
from ridemesh.v1.location_service_pb2 import StreamLocationsResponse
from services.auth.identity import Role
from services.auth.keys import DevKeys
from services.auth.limits import LimitInterceptor, Limits
from services.auth.tokens import SERVICE_SUB, bearer_channel
from services.geo.nearby import search_nearby_drivers
from services.live.names import HUB_KEEPALIVE_CHANNEL, control_channel, ride_channel
from services.live.store import LiveStore
from services.ops.mesh.redis_server import RedisServer
from services.server.builder import create_server
from tests.integration.geo_drivers import destination, ingest
from tests.tokens import server_auth, token

REDIS_DB = 9
PICKUP = LatLng(latitude=52.52, longitude=13.405)
DROPOFF = LatLng(latitude=52.50, longitude=13.30)
_unique = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}-{next(_unique)}"


def redis_url(redis_server: RedisServer) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"


class Geo(geo_grpc.GeoQueryServiceServicer):
    """GeoQueryService's real nearby search over Redis, which a test can make fail or slow."""

    def __init__(self, live: LiveStore) -> None:
        self._live = live
        self.fail = False
        self.delay_s = 0.0
        self.calls = 0

    async def SearchNearbyDrivers(
        self, request: geo_pb.SearchNearbyDriversRequest, context: Any
    ) -> geo_pb.SearchNearbyDriversResponse:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "geo is down (test)")
        return await search_nearby_drivers(self._live, request)


@asynccontextmanager
async def geo_service(
    live: LiveStore, keys: DevKeys
) -> AsyncIterator[tuple[Geo, geo_grpc.GeoQueryServiceAsyncStub]]:
    """A grpc.aio server on a free port serving `Geo` (tokens signed with `keys` required), and a
    stub over a real channel to it carrying RideService's token."""
    geo = Geo(live)  # type: ignore[abstract]  # the other methods answer UNIMPLEMENTED
    server, port = create_server("127.0.0.1:0", server_auth(keys), LimitInterceptor(Limits()))
    geo_grpc.add_GeoQueryServiceServicer_to_server(geo, server)
    await server.start()
    try:
        service_token = token(keys, SERVICE_SUB, Role.SERVICE)
        async with bearer_channel(f"127.0.0.1:{port}", service_token) as channel:
            yield geo, geo_grpc.GeoQueryServiceStub(channel)
    finally:
        await server.stop(None)


def new_pickup() -> LatLng:
    """A pickup a degree of longitude from every other test's, so their drivers never meet."""
    return LatLng(latitude=PICKUP.latitude, longitude=-170.0 + next(_unique) % 340)


async def place_drivers(live: LiveStore, pickup: LatLng, distances_m: list[float]) -> list[str]:
    """A live driver north of the pickup at each distance; their ids, in the same order."""
    ids = []
    for distance in distances_m:
        driver_id = new_id("drv")
        lat, lng = destination(pickup.latitude, pickup.longitude, 0.0, distance)
        await ingest(live, driver_id, lat, lng, time.time())
        ids.append(driver_id)
    return ids


class Clock:
    """Dispatch's clock, moved by the test so offers lapse without waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Listener:
    """Everything published on the control channels of the drivers and the channels of the
    rides it is told to watch, as the other services would see it (sharded pub/sub has no
    patterns)."""

    def __init__(self, redis: Redis) -> None:
        self._pubsub = redis.pubsub()
        self.control: dict[str, list[StreamLocationsResponse]] = {}
        # Sampling hints (the activity alone) and fix requests, apart from dispatch's messages.
        self.steering: dict[str, list[StreamLocationsResponse]] = {}
        self.rides: dict[str, list[pb.Ride]] = {}
        self._confirmed: set[str] = set()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._pubsub.ssubscribe(HUB_KEEPALIVE_CHANNEL)
        self._task = asyncio.create_task(self._read())
        await self._confirm([HUB_KEEPALIVE_CHANNEL])

    async def watch_drivers(self, driver_ids: list[str]) -> None:
        await self._confirm([control_channel(d) for d in driver_ids])

    async def watch_ride(self, ride_id: str) -> None:
        await self._confirm([ride_channel(ride_id)])

    async def _confirm(self, channels: list[str]) -> None:
        """Subscribes and returns once Redis confirmed: listening from here on."""
        if channels != [HUB_KEEPALIVE_CHANNEL]:
            await self._pubsub.ssubscribe(*channels)
        await self.wait(lambda: self._confirmed.issuperset(channels))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._pubsub.aclose()

    async def _read(self) -> None:
        while True:
            message = await self._pubsub.get_message(timeout=None)
            if message is None:
                continue
            channel = message["channel"].decode()
            async with self._changed:
                if message["type"] == "ssubscribe":
                    self._confirmed.add(channel)
                elif message["type"] != "smessage":
                    continue
                elif ":ch:control:" in channel:
                    decoded = StreamLocationsResponse.FromString(message["data"])
                    key = channel.rsplit(":", 1)[1]
                    steering = decoded.WhichOneof("kind") in ("sampling_hint", "fix_request")
                    box = self.steering if steering else self.control
                    box.setdefault(key, []).append(decoded)
                else:
                    key = channel.rsplit(":", 1)[1]
                    self.rides.setdefault(key, []).append(pb.Ride.FromString(message["data"]))
                self._changed.notify_all()

    async def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    def kinds(self, driver_id: str) -> list[str | None]:
        return [m.WhichOneof("kind") for m in self.control.get(driver_id, [])]

    def activities(self, driver_id: str) -> list[int]:
        return [m.sampling_hint.activity for m in self.steering.get(driver_id, [])]
