"""Wiring for a GeoQueryService process; methods answer UNIMPLEMENTED until their issue lands."""

from __future__ import annotations

import asyncio

from grpc import aio

from ridemesh.v1 import geo_query_service_pb2_grpc as pb_grpc
from services.config import Settings
from services.runtime import serve


async def run(settings: Settings, address: str, stop: asyncio.Event | None = None) -> None:
    def register(server: aio.Server) -> None:
        # The generated base class answers UNIMPLEMENTED for every method.
        servicer = pb_grpc.GeoQueryServiceServicer()  # type: ignore[abstract]
        pb_grpc.add_GeoQueryServiceServicer_to_server(servicer, server)

    await serve("geo", address, register, grace_s=settings.shutdown_grace_s, stop=stop)
