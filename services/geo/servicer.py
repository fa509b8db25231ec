"""The GeoQueryService RPC surface: each handler delegates to the module that owns its answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio
from redis.asyncio import Redis

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as pb_grpc
from services.auth import rules
from services.auth.interceptor import current_identity
from services.domain.routing import Router
from services.geo import geofences
from services.geo.eta import estimate_eta
from services.geo.fence_events import watch_geofence_events
from services.geo.geofence_store import GeofenceStore
from services.geo.heatmap import supply_heatmap
from services.geo.nearby import search_nearby_drivers
from services.geo.track import get_driver_track
from services.geo.zone_cache import ZoneCache
from services.geo.zone_end import ZoneSweeper
from services.history.store import HistoryStore
from services.live.events import EventFeed, EventLog
from services.live.store import LiveStore

Context = aio.ServicerContext[Any, Any]


class GeoQueryServicer(pb_grpc.GeoQueryServiceServicer):
    """Thin handlers; validation and errors live in the modules they call."""

    def __init__(
        self,
        live: LiveStore,
        history: HistoryStore,
        fences: GeofenceStore,
        zones: ZoneCache,
        events: EventFeed,
        router: Router,
        redis: Redis,
        zone_ends: ZoneSweeper,
        fence_listings: GeofenceStore | None = None,
    ) -> None:
        self._zone_ends = zone_ends
        self._event_log = EventLog(redis)
        self._live = live
        # Reads that may lag a moment (a replica, with database_read_url): tracks and listings.
        self._history = history
        self._fence_listings = fence_listings or fences
        self._fences = fences
        self._zones = zones
        self._events = events
        self._router = router
        self._redis = redis

    async def SearchNearbyDrivers(
        self, request: pb.SearchNearbyDriversRequest, context: Context
    ) -> pb.SearchNearbyDriversResponse:
        view = rules.nearby_view(current_identity())
        response = await search_nearby_drivers(self._live, request, time.time())
        if view is rules.NearbyView.COARSE:
            return rules.coarsen_for_rider(response)
        return response

    async def CreateGeofence(
        self, request: pb.CreateGeofenceRequest, context: Context
    ) -> pb.CreateGeofenceResponse:
        rules.may_manage_geofences(current_identity())
        return await geofences.create_geofence(self._fences, self._redis, request)

    async def GetGeofence(
        self, request: pb.GetGeofenceRequest, context: Context
    ) -> pb.GetGeofenceResponse:
        rules.may_read_geofences(current_identity())
        return await geofences.get_geofence(self._fences, request)

    async def ListGeofences(
        self, request: pb.ListGeofencesRequest, context: Context
    ) -> pb.ListGeofencesResponse:
        rules.may_read_geofences(current_identity())
        return await geofences.list_geofences(self._fence_listings, request)

    async def DeleteGeofence(
        self, request: pb.DeleteGeofenceRequest, context: Context
    ) -> pb.DeleteGeofenceResponse:
        rules.may_manage_geofences(current_identity())
        response = await geofences.delete_geofence(self._fences, self._redis, request)
        await self._zone_ends.sweep_now()
        return response

    async def CheckPoint(
        self, request: pb.CheckPointRequest, context: Context
    ) -> pb.CheckPointResponse:
        rules.may_read_geofences(current_identity())
        return await geofences.check_point(self._fences, request)

    async def WatchGeofenceEvents(
        self, request: pb.WatchGeofenceEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchGeofenceEventsResponse]:
        rules.may_watch_geofence_events(current_identity())
        watch = watch_geofence_events(self._events, self._event_log, self._zones, request)
        async for response in watch:
            yield response

    async def GetDriverTrack(
        self, request: pb.GetDriverTrackRequest, context: Context
    ) -> pb.GetDriverTrackResponse:
        rules.may_read_track(current_identity(), request.driver_id)
        return await get_driver_track(self._history, request)

    async def EstimateEta(
        self, request: pb.EstimateEtaRequest, context: Context
    ) -> pb.EstimateEtaResponse:
        rules.may_estimate_eta(current_identity())
        return await estimate_eta(self._live, self._router, request)

    async def GetSupplyHeatmap(
        self, request: pb.GetSupplyHeatmapRequest, context: Context
    ) -> pb.GetSupplyHeatmapResponse:
        rules.may_read_heatmap(current_identity())
        return await supply_heatmap(self._live, request)
