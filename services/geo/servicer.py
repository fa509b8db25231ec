"""The GeoQueryService RPC surface: each handler delegates to the module that owns its answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from grpc import aio
from redis.asyncio import Redis

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as pb_grpc
from services.auth import rules
from services.auth.interceptor import current_identity
from services.domain.errors import NotFound
from services.domain.routing import Router
from services.domain.trips import TripSettings
from services.domain.validation import required_id
from services.geo import geofences, track_export, trips, webhook_delivery, webhooks
from services.geo.eta import estimate_eta
from services.geo.fence_events import watch_geofence_events
from services.geo.geofence_store import GeofenceStore
from services.geo.heatmap import supply_heatmap
from services.geo.nearby import search_nearby_drivers
from services.geo.replay import replay_fleet
from services.geo.track import get_driver_track
from services.geo.webhook_store import WebhookStore
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
        *,
        webhook_store: WebhookStore,
    ) -> None:
        self._webhooks = webhook_store
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
        self._trip_settings = TripSettings()

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

    async def CreateWebhook(
        self, request: pb.CreateWebhookRequest, context: Context
    ) -> pb.CreateWebhookResponse:
        rules.may_manage_webhooks(current_identity())
        spec = webhooks.parse_webhook(request.webhook if request.HasField("webhook") else None)
        starts = await webhook_delivery.start_cursors(self._event_log)
        stored = await self._webhooks.create(spec, webhooks.new_secret(), starts)
        return pb.CreateWebhookResponse(webhook=webhooks.to_message(stored, with_secret=True))

    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: Context
    ) -> pb.ListWebhooksResponse:
        rules.may_manage_webhooks(current_identity())
        found = await webhook_delivery.health(self._webhooks, self._event_log)
        return pb.ListWebhooksResponse(
            webhooks=[webhooks.to_message(stored, backlog) for stored, backlog in found]
        )

    async def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: Context
    ) -> pb.DeleteWebhookResponse:
        rules.may_manage_webhooks(current_identity())
        if not await self._webhooks.delete(_webhook_id(request.webhook_id)):
            raise NotFound(f"webhook {request.webhook_id!r} does not exist")
        return pb.DeleteWebhookResponse()

    async def ListWebhookDeadLetters(
        self, request: pb.ListWebhookDeadLettersRequest, context: Context
    ) -> pb.ListWebhookDeadLettersResponse:
        rules.may_manage_webhooks(current_identity())
        webhook_id = await self._existing_webhook(request.webhook_id)
        letters = await self._webhooks.dead_letters(
            webhook_id, webhooks.dead_letter_page_size(request.page_size)
        )
        return pb.ListWebhookDeadLettersResponse(
            dead_letters=[webhooks.dead_letter_message(letter) for letter in letters]
        )

    async def ReplayWebhookDeadLetters(
        self, request: pb.ReplayWebhookDeadLettersRequest, context: Context
    ) -> pb.ReplayWebhookDeadLettersResponse:
        rules.may_manage_webhooks(current_identity())
        webhook_id = await self._existing_webhook(request.webhook_id)
        event_ids = webhooks.validate_event_ids(request.event_ids)
        replayed = await self._webhooks.request_replay(webhook_id, event_ids)
        return pb.ReplayWebhookDeadLettersResponse(replayed=replayed)

    async def ListDriverTrips(
        self, request: pb.ListDriverTripsRequest, context: Context
    ) -> pb.ListDriverTripsResponse:
        rules.may_read_track(current_identity(), request.driver_id)
        return await trips.list_driver_trips(self._history, request, self._trip_settings)

    async def GetTripSummary(
        self, request: pb.GetTripSummaryRequest, context: Context
    ) -> pb.GetTripSummaryResponse:
        rules.may_read_track(current_identity(), request.driver_id)
        return await trips.get_trip_summary(self._history, request, self._trip_settings)

    async def ExportDriverTrack(
        self, request: pb.ExportDriverTrackRequest, context: Context
    ) -> AsyncIterator[pb.ExportDriverTrackResponse]:
        plan = track_export.plan_export(request)
        rules.may_read_track(current_identity(), plan.driver_id)
        async with aclosing(track_export.export_track(self._history, plan)) as chunks:
            # Headers wait for the first chunk, so a store that is away still answers UNAVAILABLE
            # (HTTP 503 through the transcoder) rather than a 200 with an empty body.
            first = await anext(chunks, None)
            await context.send_initial_metadata(track_export.content_disposition(plan))
            if first is not None:
                yield first
            async for response in chunks:
                yield response

    async def ReplayFleet(
        self, request: pb.ReplayFleetRequest, context: Context
    ) -> AsyncIterator[pb.ReplayFleetResponse]:
        rules.may_replay_fleet(current_identity())
        async for response in replay_fleet(self._history, request):
            yield response

    async def _existing_webhook(self, webhook_id: str) -> str:
        if await self._webhooks.get(_webhook_id(webhook_id)) is None:
            raise NotFound(f"webhook {webhook_id!r} does not exist")
        return webhook_id


def _webhook_id(webhook_id: str) -> str:
    return required_id(webhook_id, "webhook_id")
