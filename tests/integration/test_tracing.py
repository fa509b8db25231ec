"""OpenTelemetry traces across the mesh: RideService and GeoQueryService run here, in-process,
with an in-memory exporter, behind a real Envoy; one RequestRide is one trace spanning both
services, and a caller's trace context comes through Envoy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from grpc import aio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1 import ride_service_pb2_grpc as ride_grpc
from ridemesh.v1.common_pb2 import LatLng
from services.auth.identity import Role
from services.auth.keys import DEV_AUDIENCE, DEV_ISSUER, DevKeys
from services.geo import main as geo_main
from services.observability.tracing import configure_tracing, exporter_names
from services.ops.mesh.envoy_config import EnvoyJwt
from services.ops.mesh.envoy_proxy import EnvoyProxy
from services.ops.mesh.ports import free_port
from services.ops.mesh.redis_server import RedisServer
from services.ops.mesh.supervisor import grpc_serving
from services.ride import main as ride_main
from services.server.config import MissingSetting, Settings
from tests.tokens import bearer, token

pytestmark = pytest.mark.integration

REDIS_DB = 15
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_SPAN = 0xB7AD6B7169203331


@dataclass(frozen=True)
class TracedMesh:
    exporter: InMemorySpanExporter
    address: str


@pytest.fixture(scope="module")
async def traced(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    make_database: Callable[[], str],
    keys: DevKeys,
) -> AsyncIterator[TracedMesh]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    envoy_port, ride_port, geo_port = free_port(), free_port(), free_port()
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
        database_url=await asyncio.to_thread(make_database),
        mesh_target=f"127.0.0.1:{envoy_port}",
        auth_keys_dir=str(keys.directory),
        shutdown_grace_s=1.0,
    )
    stop = asyncio.Event()
    servers = [
        asyncio.create_task(ride_main.run(settings, f"127.0.0.1:{ride_port}", stop, provider)),
        asyncio.create_task(geo_main.run(settings, f"127.0.0.1:{geo_port}", stop, provider)),
    ]
    envoy = EnvoyProxy(
        tmp_path_factory.mktemp("envoy"),
        {"ride": [ride_port], "geo": [geo_port]},
        port=envoy_port,
        jwt=EnvoyJwt(DEV_ISSUER, [DEV_AUDIENCE], keys.jwks_path.read_text()),
    )
    try:
        for port in (ride_port, geo_port):
            async with asyncio.timeout(30):
                while not await asyncio.to_thread(grpc_serving, port):
                    assert not any(s.done() for s in servers), [s.exception() for s in servers]
                    await asyncio.sleep(0.1)
        await asyncio.to_thread(envoy.start)
        yield TracedMesh(exporter, envoy.address)
    finally:
        await asyncio.to_thread(envoy.stop)
        stop.set()
        await asyncio.gather(*servers, return_exceptions=True)


async def _request_ride(address: str, keys: DevKeys, *extra: tuple[str, str]) -> pb.Ride:
    rider = "traced-rider"
    async with aio.insecure_channel(address) as channel:
        stub = ride_grpc.RideServiceStub(channel)
        response = await stub.RequestRide(
            pb.RequestRideRequest(
                rider_id=rider,
                pickup=LatLng(latitude=-1.2921, longitude=36.8219),
                dropoff=LatLng(latitude=-1.30, longitude=36.83),
                request_id=f"trace-{len(extra)}",
            ),
            metadata=(*bearer(token(keys, rider, Role.RIDER)), *extra),
        )
    return response.ride


async def test_one_request_ride_is_one_trace_across_ride_and_geo(
    traced: TracedMesh, keys: DevKeys
) -> None:
    traced.exporter.clear()
    await _request_ride(traced.address, keys)
    spans = traced.exporter.get_finished_spans()
    by_name = {(s.name, s.kind): s for s in spans}
    ride_server = by_name[("/ridemesh.v1.RideService/RequestRide", SpanKind.SERVER)]
    geo_client = by_name[("/ridemesh.v1.GeoQueryService/SearchNearbyDrivers", SpanKind.CLIENT)]
    geo_server = by_name[("/ridemesh.v1.GeoQueryService/SearchNearbyDrivers", SpanKind.SERVER)]
    trace_ids = {s.context.trace_id for s in (ride_server, geo_client, geo_server)}
    assert len(trace_ids) == 1
    # RideService's server span is the root; its call to GeoQueryService is its child, and
    # GeoQueryService's span (after a hop through Envoy) is the child of that call.
    assert ride_server.parent is None
    assert geo_client.parent is not None
    assert geo_client.parent.span_id == ride_server.context.span_id
    assert geo_server.parent is not None
    assert geo_server.parent.span_id == geo_client.context.span_id
    assert geo_server.resource is not None


async def test_a_callers_trace_context_comes_through_envoy(
    traced: TracedMesh, keys: DevKeys
) -> None:
    traced.exporter.clear()
    parent = f"00-{TRACE_ID:032x}-{PARENT_SPAN:016x}-01"
    await _request_ride(traced.address, keys, ("traceparent", parent))
    spans = traced.exporter.get_finished_spans()
    assert spans
    assert {s.context.trace_id for s in spans} == {TRACE_ID}
    ride_server = next(s for s in spans if s.kind == SpanKind.SERVER and "RideService" in s.name)
    assert ride_server.parent is not None
    assert ride_server.parent.span_id == PARENT_SPAN


def test_tracing_is_off_unless_the_environment_names_an_exporter() -> None:
    assert exporter_names({}) == []
    assert exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert exporter_names({"OTEL_TRACES_EXPORTER": "otlp, console"}) == ["otlp", "console"]
    disabled = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    assert exporter_names(disabled) == []
    assert configure_tracing("ride", {}) is None
    provider = configure_tracing("ride", {"OTEL_TRACES_EXPORTER": "console"})
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "ridemesh-ride"
    provider.shutdown()


def test_an_exporter_we_do_not_ship_stops_startup_naming_the_setting() -> None:
    with pytest.raises(MissingSetting, match="OTEL_TRACES_EXPORTER"):
        configure_tracing("geo", {"OTEL_TRACES_EXPORTER": "zipkin"})
