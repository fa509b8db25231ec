"""Wiring for a RideService process: the one place its parts are built and connected."""

from __future__ import annotations

import asyncio
import contextlib

from grpc import aio
from opentelemetry.sdk.trace import TracerProvider

from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1 import ride_service_pb2_grpc as pb_grpc
from ridemesh.v1.common_pb2 import DriverLocation
from services.auth.tokens import bearer_channel, service_tokens
from services.auth.wiring import auth_interceptor
from services.domain.routing import GreatCircleRouter
from services.history.store import create_engine
from services.live.client import redis_client
from services.live.fanout import Hub
from services.live.store import LiveStore
from services.observability.tracing import client_interceptors
from services.ride.dispatch import Dispatcher
from services.ride.servicer import RideServicer
from services.ride.store import RideStore
from services.server.config import MissingSetting, Settings
from services.server.runtime import serve


async def run(
    settings: Settings,
    address: str,
    stop: asyncio.Event | None = None,
    tracing: TracerProvider | None = None,
) -> None:
    if not settings.mesh_target:
        raise MissingSetting(
            "setting RIDEMESH_MESH_TARGET (Envoy's address, for calls to GeoQueryService) is "
            "required"
        )
    auth = auth_interceptor(settings)  # first: a missing or refused key stops startup here
    tokens = service_tokens(settings)
    redis = redis_client(settings.redis_url)
    store = RideStore(create_engine(settings.database_url))
    # Dispatch asks GeoQueryService through the mesh, like any other client would: with a token.
    mesh = bearer_channel(settings.mesh_target, tokens, more=client_interceptors(tracing))
    dispatcher = Dispatcher(store, geo_grpc.GeoQueryServiceStub(mesh), redis, settings)
    live = LiveStore(redis, settings.live_window_s)
    rides: Hub[pb.Ride] = Hub(redis, pb.Ride.FromString)
    locations: Hub[DriverLocation] = Hub(redis, DriverLocation.FromString)
    chats: Hub[pb.ChatMessage] = Hub(redis, pb.ChatMessage.FromString)
    router = GreatCircleRouter.from_settings(settings)
    servicer = RideServicer(store, dispatcher, live, rides, locations, chats, router, redis)
    hubs = (rides, locations, chats)
    for hub in hubs:
        await hub.start()
    sweeper = asyncio.create_task(dispatcher.sweep_forever(), name="dispatch-sweeper")

    def register(server: aio.Server) -> None:
        pb_grpc.add_RideServiceServicer_to_server(servicer, server)

    try:
        await serve(
            "ride",
            address,
            register,
            settings,
            auth=auth,
            stop=stop,
            tracing=tracing,
        )
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        for hub in hubs:
            await hub.stop()
        await mesh.close(None)
        with contextlib.suppress(Exception):
            await redis.aclose()
        await store.dispose()
