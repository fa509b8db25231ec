"""A real GeoQueryService server built from only the parts a test gives it (the others are None,
so a call that needs them fails loudly), behind the real auth and error interceptors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

from grpc import aio
from redis.asyncio import Redis

from ridemesh.v1 import geo_query_service_pb2_grpc as pb_grpc
from services.auth.identity import Identity
from services.auth.interceptor import AuthInterceptor
from services.geo.servicer import GeoQueryServicer
from services.geo.webhook_store import WebhookStore
from services.history.store import HistoryStore
from services.server.errors import DomainErrorInterceptor

# Turns a request's authorization header into the caller (tests use readable fake tokens).
Verify = Callable[[str | None], Identity]


@asynccontextmanager
async def geo_stub(
    verify: Verify,
    *,
    history: HistoryStore | None = None,
    redis: Redis | None = None,
    webhook_store: WebhookStore | None = None,
) -> AsyncIterator[pb_grpc.GeoQueryServiceAsyncStub]:
    """A stub of a GeoQuery server on a free loopback port, for as long as the block runs."""
    unused = cast(Any, None)
    servicer = GeoQueryServicer(
        unused,
        history or unused,
        unused,
        unused,
        unused,
        unused,
        redis or unused,
        unused,
        webhook_store=webhook_store or unused,
    )
    interceptors: list[aio.ServerInterceptor] = [  # type: ignore[type-arg]
        AuthInterceptor(verify),
        DomainErrorInterceptor(),
    ]
    server = aio.server(interceptors=interceptors)
    port = server.add_insecure_port("127.0.0.1:0")
    pb_grpc.add_GeoQueryServiceServicer_to_server(servicer, server)
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.GeoQueryServiceStub(channel)
    finally:
        await server.stop(None)
