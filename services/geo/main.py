"""Wiring for a GeoQueryService process: the one place its parts are built and connected."""

from __future__ import annotations

import asyncio

from grpc import aio
from opentelemetry.sdk.trace import TracerProvider

from ridemesh.v1 import geo_query_service_pb2_grpc as pb_grpc
from services.domain.routing import GreatCircleRouter
from services.geo.fence_events import FenceTracker
from services.geo.geofence_store import GeofenceStore
from services.geo.servicer import GeoQueryServicer
from services.geo.webhook_delivery import Deliverer
from services.geo.webhook_store import WebhookStore
from services.geo.zone_cache import ZoneCache
from services.geo.zone_end import ZoneSweeper
from services.history.maintenance import run_forever
from services.history.store import HistoryStore
from services.live.events import EventFeed
from services.live.store import LiveStore
from services.server.bootstrap import Parts, Service, run_service
from services.server.config import Settings


async def run(
    settings: Settings,
    address: str,
    stop: asyncio.Event | None = None,
    tracing: TracerProvider | None = None,
) -> None:
    await run_service("geo", build, settings, address, stop=stop, tracing=tracing)


# After a zone change is announced, a cache reading a replica waits this long for the replica
# to replay it before leaving it to the next poll (zone_refresh_s).
REPLICA_WAIT_S = 5.0


async def build(parts: Parts) -> Service:
    settings = parts.settings
    redis = parts.redis()
    engine = parts.engine()
    # Tracks, zone listings and the zone index's loads may read a replica (database_read_url);
    # partition upkeep and zone writes use the primary.
    replica = parts.read_engine()
    history = HistoryStore(engine)
    live = LiveStore(redis, settings.live_window_s)
    fences = GeofenceStore(engine)
    fence_reads = GeofenceStore(replica)
    replica_wait_s = REPLICA_WAIT_S if settings.database_read_url else 0.0
    announcements = await parts.hub(bytes)
    zones = ZoneCache(fence_reads, announcements, settings.zone_refresh_s, replica_wait_s)
    await parts.started(zones.start, zones.stop)
    events = EventFeed(redis)
    await parts.started(events.start, events.stop)
    tracker = FenceTracker(redis, zones)
    await parts.started(tracker.start, tracker.stop)
    zone_ends = ZoneSweeper(fences, redis)
    await parts.started(zone_ends.start, zone_ends.stop)
    webhook_store = WebhookStore(engine)
    deliverer = Deliverer(webhook_store, redis)
    await parts.started(deliverer.start, deliverer.stop)
    router = GreatCircleRouter.from_settings(settings)
    servicer = GeoQueryServicer(
        live,
        HistoryStore(replica),
        fences,
        zones,
        events,
        router,
        redis,
        zone_ends,
        fence_reads,
        webhook_store=webhook_store,
    )
    parts.background(run_forever(history, settings), "maintenance")

    def register(server: aio.Server) -> None:
        pb_grpc.add_GeoQueryServiceServicer_to_server(servicer, server)

    return Service(register)
