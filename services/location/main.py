"""Wiring for a LocationService process: the one place its parts are built and connected."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, date, datetime

from grpc import aio
from opentelemetry.sdk.trace import TracerProvider

from ridemesh.v1 import location_service_pb2_grpc as pb_grpc
from ridemesh.v1.common_pb2 import DriverLocation
from ridemesh.v1.location_service_pb2 import StreamLocationsResponse
from services.auth.wiring import auth_interceptor
from services.history.persister import Persister
from services.history.store import HistoryStore, create_engine
from services.live.client import redis_client
from services.live.fanout import Hub
from services.live.ingest import IngestLog
from services.live.store import LiveStore
from services.location.servicer import LocationServicer
from services.location.streams import StreamRegistry
from services.server.config import Settings
from services.server.runtime import serve

PARTITION_CHECK_S = 3600.0


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
    hub: Hub[DriverLocation] = Hub(redis, DriverLocation.FromString)
    control: Hub[StreamLocationsResponse] = Hub(redis, StreamLocationsResponse.FromString)
    ingest = IngestLog(redis)
    streams = StreamRegistry(ingest, settings.ack_interval_s)
    persister = Persister(
        ingest,
        history,
        batch_size=settings.persist_batch_size,
        max_age_s=settings.persist_max_age_s,
        claim_idle_s=settings.persist_claim_idle_s,
    )
    servicer = LocationServicer(settings, live, history, hub, streams, control)
    await history.ensure_partitions_ahead(_today(), settings.partitions_ahead_days)
    await hub.start()
    await control.start()
    background = [
        asyncio.create_task(persister.run(), name="persister"),
        asyncio.create_task(streams.run(), name="acks"),
        asyncio.create_task(_keep_partitions(history, settings), name="partitions"),
    ]

    async def drain() -> None:
        # Stop taking fixes, commit everything accepted, tell the apps, then let streams end.
        streams.start_draining()
        await persister.stop()
        await background[0]
        await streams.wait_finished(settings.shutdown_grace_s)

    def register(server: aio.Server) -> None:
        pb_grpc.add_LocationServiceServicer_to_server(servicer, server)

    try:
        await serve(
            "location",
            address,
            register,
            settings,
            drain=drain,
            auth=auth,
            stop=stop,
            tracing=tracing,
        )
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await control.stop()
        await hub.stop()
        with contextlib.suppress(Exception):
            await redis.aclose()
        await history.dispose()


async def _keep_partitions(history: HistoryStore, settings: Settings) -> None:
    while True:
        await asyncio.sleep(PARTITION_CHECK_S)
        await history.ensure_partitions_ahead(_today(), settings.partitions_ahead_days)


def _today() -> date:
    return datetime.now(UTC).date()
