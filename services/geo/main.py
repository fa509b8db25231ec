"""Wiring for a GeoQueryService process: the one place its parts are built and connected."""

from __future__ import annotations

import asyncio
import contextlib

from grpc import aio
from opentelemetry.sdk.trace import TracerProvider

from ridemesh.v1 import geo_query_service_pb2_grpc as pb_grpc
from ridemesh.v1.common_pb2 import DriverLocation
from services.auth.wiring import auth_interceptor
from services.domain.routing import GreatCircleRouter
from services.geo.fence_events import EventBatch, FenceTracker, decode_event_message
from services.geo.geofence_store import GeofenceStore
from services.geo.servicer import GeoQueryServicer
from services.geo.zone_cache import ZoneCache
from services.history.maintenance import run_forever
from services.history.store import HistoryStore, create_engine
from services.live.client import redis_client
from services.live.fanout import Hub
from services.live.store import LiveStore
from services.server.config import Settings
from services.server.runtime import serve


async def run(
    settings: Settings,
    address: str,
    stop: asyncio.Event | None = None,
    tracing: TracerProvider | None = None,
) -> None:
    auth = auth_interceptor(settings)  # first: a missing or refused key stops startup here
    redis = redis_client(settings.redis_url)
    engine = create_engine(settings.database_url)
    history = HistoryStore(engine)
    live = LiveStore(redis, settings.live_window_s)
    fences = GeofenceStore(engine)
    zones = ZoneCache(fences, redis, settings.zone_refresh_s)
    fixes: Hub[DriverLocation] = Hub(redis, DriverLocation.FromString)
    events: Hub[EventBatch] = Hub(redis, decode_event_message)
    tracker = FenceTracker(redis, zones, fixes)
    servicer = GeoQueryServicer(
        live, history, fences, zones, events, GreatCircleRouter.from_settings(settings), redis
    )
    await zones.start()
    await fixes.start()
    await events.start()
    await tracker.start()
    maintenance = asyncio.create_task(run_forever(history, settings), name="maintenance")

    def register(server: aio.Server) -> None:
        pb_grpc.add_GeoQueryServiceServicer_to_server(servicer, server)

    try:
        await serve(
            "geo",
            address,
            register,
            settings,
            auth=auth,
            stop=stop,
            tracing=tracing,
        )
    finally:
        maintenance.cancel()
        await asyncio.gather(maintenance, return_exceptions=True)
        await tracker.stop()
        await events.stop()
        await fixes.stop()
        await zones.stop()
        with contextlib.suppress(Exception):
            await redis.aclose()
        await history.dispose()
