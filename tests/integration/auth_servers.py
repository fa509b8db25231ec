"""A tiny real grpc.aio server behind AuthInterceptor whose handlers echo the caller's sub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

from ridemesh.v1 import common_pb2
from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as pb_grpc
from services.auth.identity import Identity, TokenVerifier
from services.auth.interceptor import AuthInterceptor, current_identity
from services.server.builder import add_health
from services.server.errors import DomainErrorInterceptor

WHOAMI = "ridemesh.test.WhoAmI"
WATCH_STEPS = 3


class EchoLocation(pb_grpc.LocationServiceServicer):
    """Answers with the verified caller's sub in `driver_id`, across awaits and yields."""

    async def GetDriverLocation(
        self, request: pb.GetDriverLocationRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetDriverLocationResponse:
        await asyncio.sleep(0)
        return pb.GetDriverLocationResponse(location=_located(current_identity()))

    async def UploadLocations(
        self, request: pb.UploadLocationsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.UploadLocationsResponse:
        rejected = pb.LocationRejected(driver_id=current_identity().sub)
        return pb.UploadLocationsResponse(rejected=[rejected])

    async def WatchArea(
        self, request: pb.WatchAreaRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchAreaResponse]:
        current_identity()
        yield pb.WatchAreaResponse()

    async def WatchDriver(
        self, request: pb.WatchDriverRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchDriverResponse]:
        for _ in range(WATCH_STEPS):
            await asyncio.sleep(0.01)  # other calls run in between; each keeps its own caller
            yield pb.WatchDriverResponse(location=_located(current_identity()))

    async def StreamLocations(
        self,
        request_iterator: AsyncIterator[pb.StreamLocationsRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.StreamLocationsResponse]:
        async for request in request_iterator:
            rejected = pb.LocationRejected(seq=request.update.seq, driver_id=current_identity().sub)
            yield pb.StreamLocationsResponse(rejected=rejected)


def _located(identity: Identity) -> common_pb2.DriverLocation:
    return common_pb2.DriverLocation(driver_id=identity.sub)


async def _client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
    count = sum([1 async for _ in requests])
    return f"{current_identity().sub}:{count}".encode()


async def _written_stream(request: bytes, context: Any) -> None:
    # A streaming handler written with context.write() instead of yield.
    for _ in range(2):
        await context.write(current_identity().role.value.encode())


def _whoami_handler() -> grpc.GenericRpcHandler[Any, Any]:
    def raw(value: bytes) -> bytes:
        return value

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "ClientStream": grpc.stream_unary_rpc_method_handler(
            _client_stream, request_deserializer=raw, response_serializer=raw
        ),
        "Written": grpc.unary_stream_rpc_method_handler(
            _written_stream, request_deserializer=raw, response_serializer=raw
        ),
    }
    return grpc.method_handlers_generic_handler(WHOAMI, handlers)


async def start_echo_server(
    verifier: TokenVerifier | Callable[[str | None], Identity], *, domain_errors: bool = True
) -> tuple[aio.Server, int]:
    """Health (open) plus the echo services (token required) on 127.0.0.1, a free port."""
    verify = verifier.verify if isinstance(verifier, TokenVerifier) else verifier
    # Auth first (outermost), so a servicer's Unauthenticated is still mapped by the second.
    interceptors: list[aio.ServerInterceptor] = [AuthInterceptor(verify)]  # type: ignore[type-arg]
    if domain_errors:
        interceptors.append(DomainErrorInterceptor())
    server = aio.server(interceptors=interceptors)
    port = server.add_insecure_port("127.0.0.1:0")
    add_health(server)
    pb_grpc.add_LocationServiceServicer_to_server(EchoLocation(), server)
    server.add_generic_rpc_handlers((_whoami_handler(),))
    await server.start()
    return server, port
