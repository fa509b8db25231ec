"""Builds a grpc.aio server with token checks, health, reflection for the whole API, and
domain-error mapping."""

from __future__ import annotations

from collections.abc import Sequence

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from ridemesh.v1 import (
    geo_query_service_pb2,
    location_service_pb2,
    ride_service_pb2,
)
from services.auth.interceptor import AuthInterceptor
from services.auth.limits import LimitInterceptor
from services.server.errors import DomainErrorInterceptor

# Every replica answers reflection for all three services, so `grpcurl ... list` through Envoy
# shows the whole API whichever replica it reaches.
API_SERVICE_NAMES: tuple[str, ...] = (
    location_service_pb2.DESCRIPTOR.services_by_name["LocationService"].full_name,
    ride_service_pb2.DESCRIPTOR.services_by_name["RideService"].full_name,
    geo_query_service_pb2.DESCRIPTOR.services_by_name["GeoQueryService"].full_name,
)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def create_server(
    address: str,
    auth: AuthInterceptor,
    limits: LimitInterceptor,
    observers: Sequence[aio.ServerInterceptor] = (),  # type: ignore[type-arg]
) -> tuple[aio.Server, int]:
    """A server bound to `address` ("127.0.0.1:0" picks a free port); returns it and its port.

    `observers` (tracing, metrics) wrap everything, so they see refused calls too; then `auth`,
    so no handler (nor its error mapping) runs for an unverified caller; then the per-caller
    limits.
    """
    server = aio.server(
        interceptors=[*observers, auth, limits, DomainErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_concurrent_streams", 100_000),
            ("grpc.so_reuseport", 0),
            # No HTTP/2 BDP pings: with a small message every few seconds per stream they cost
            # more CPU than the fixes themselves, and the window they tune stays tiny anyway.
            ("grpc.http2.bdp_probe", 0),
        ],
    )
    port = server.add_insecure_port(address)
    return server, port


def add_health(server: aio.Server) -> HealthServicer:
    """Registers grpc.health.v1.Health; the caller flips it to NOT_SERVING when draining."""
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def add_reflection(server: aio.Server, extra: Sequence[str] = ()) -> None:
    """Registers server reflection naming the whole Ridemesh API plus health and reflection."""
    names = (
        *API_SERVICE_NAMES,
        *extra,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)


async def set_serving(servicer: HealthServicer, serving: bool) -> None:
    """Sets the overall status ("") and every API service's status at once."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", *API_SERVICE_NAMES):
        await servicer.set(name, status)
