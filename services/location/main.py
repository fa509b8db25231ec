"""Wiring for a LocationService process: the one place its parts are built and connected."""

from __future__ import annotations

import asyncio

from grpc import aio
from opentelemetry.sdk.trace import TracerProvider

from ridemesh.v1 import location_service_pb2_grpc as pb_grpc
from ridemesh.v1.common_pb2 import DriverLocation
from ridemesh.v1.location_service_pb2 import StreamLocationsResponse
from services.history.maintenance import keep_partitions_ahead, utc_today
from services.history.persister import Persister
from services.history.store import HistoryStore
from services.live.ingest import IngestLog, IngestLogs
from services.live.names import partitions
from services.live.store import LiveStore
from services.location.servicer import LocationServicer
from services.location.session import FixKey
from services.location.streams import StreamRegistry
from services.server.bootstrap import Parts, Service, run_service
from services.server.config import Settings


async def run(
    settings: Settings,
    address: str,
    stop: asyncio.Event | None = None,
    tracing: TracerProvider | None = None,
) -> None:
    await run_service("location", build, settings, address, stop=stop, tracing=tracing)


async def build(parts: Parts) -> Service:
    settings = parts.settings
    redis = parts.redis()
    history = HistoryStore(parts.engine())
    live = LiveStore(redis, settings.live_window_s)
    hub = await parts.hub(DriverLocation.FromString)
    control = await parts.hub(StreamLocationsResponse.FromString)
    # One persister per partition's ingest log, remembering their commits in one place.
    committed_here: dict[FixKey, None] = {}
    persisters = [
        Persister(
            IngestLog(redis, partition),
            history,
            batch_size=settings.persist_batch_size,
            max_age_s=settings.persist_max_age_s,
            claim_idle_s=settings.persist_claim_idle_s,
            drain_timeout_s=settings.shutdown_grace_s,
            committed_here=committed_here,
        )
        for partition in partitions()
    ]
    streams = StreamRegistry(
        IngestLogs(redis),
        history,
        settings.ack_interval_s,
        lost_after_s=settings.fix_lost_after_s,
        committed_here=committed_here,
    )
    servicer = LocationServicer(settings, live, history, hub, streams, control)
    # The persister needs today's partition (and the next days') before its first COPY.
    await history.ensure_partitions_ahead(utc_today(), settings.partitions_ahead_days)
    persisting = [
        parts.background(persister.run(), f"persister-{persister.partition}")
        for persister in persisters
    ]
    parts.background(streams.run(), "acks")
    parts.background(keep_partitions_ahead(history, settings), "partitions")

    async def drain() -> None:
        # Stop taking fixes, commit everything accepted, tell the apps, then let streams end.
        streams.start_draining()
        for persister in persisters:
            await persister.stop()
        await asyncio.gather(*persisting)
        await streams.wait_finished(settings.shutdown_grace_s)

    def register(server: aio.Server) -> None:
        pb_grpc.add_LocationServiceServicer_to_server(servicer, server)

    return Service(register, drain)
