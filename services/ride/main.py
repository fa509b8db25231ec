"""Wiring for a RideService process: the one place its parts are built and connected."""

from __future__ import annotations

import asyncio

from grpc import aio
from opentelemetry.sdk.trace import TracerProvider

from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1 import ride_service_pb2_grpc as pb_grpc
from ridemesh.v1.common_pb2 import DriverLocation
from services.auth.tokens import bearer_channel, service_tokens
from services.domain.routing import GreatCircleRouter
from services.live.events import EventFeed
from services.live.store import LiveStore
from services.observability.tracing import client_interceptors
from services.ride.chat_store import ChatMessages
from services.ride.dispatch import Dispatcher
from services.ride.effects import RideEffects
from services.ride.proximity import ProximityTracker
from services.ride.servicer import RideServicer
from services.ride.store import RideStore
from services.server.bootstrap import Parts, Service, run_service
from services.server.config import MissingSetting, Settings


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
    await run_service("ride", build, settings, address, stop=stop, tracing=tracing)


async def build(parts: Parts) -> Service:
    settings = parts.settings
    redis = parts.redis()
    store = RideStore(parts.engine())
    messages = ChatMessages(parts.engine())
    live = LiveStore(redis, settings.live_window_s)
    # Dispatch asks GeoQueryService through the mesh, like any other client would: with a token.
    tokens = service_tokens(settings)
    mesh = bearer_channel(settings.mesh_target, tokens, more=client_interceptors(parts.tracing))
    parts.on_close(lambda: mesh.close(None))
    dispatcher = Dispatcher(store, geo_grpc.GeoQueryServiceStub(mesh), live, settings)
    effects = RideEffects(store, redis, settings.live_window_s)
    rides = await parts.hub(pb.Ride.FromString)
    locations = await parts.hub(DriverLocation.FromString)
    chats = await parts.hub(pb.ChatMessage.FromString)
    router = GreatCircleRouter.from_settings(settings)
    listings = RideStore(parts.read_engine())
    events = EventFeed(redis)
    await parts.started(events.start, events.stop)
    servicer = RideServicer(
        store,
        messages,
        dispatcher,
        effects,
        live,
        rides,
        locations,
        chats,
        router,
        redis,
        listings,
        events,
    )
    proximity = ProximityTracker(redis, arrive=servicer.arrive_by_itself)
    await parts.started(proximity.start, proximity.stop)
    parts.background(dispatcher.sweep_forever(), "dispatch-sweeper")
    parts.background(effects.repair_forever(), "ride-effects")

    def register(server: aio.Server) -> None:
        pb_grpc.add_RideServiceServicer_to_server(servicer, server)

    return Service(register)
