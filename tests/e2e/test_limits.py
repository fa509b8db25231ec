"""Per-caller limits on a real LocationService process: watchers per caller and unary rate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc import aio

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1.common_pb2 import BoundingBox, LatLng
from services.auth.identity import Role
from services.auth.keys import DevKeys
from services.ops.mesh.process import ManagedProcess
from services.ops.mesh.redis_server import RedisServer
from tests.e2e.processes import start_location
from tests.tokens import bearer, ops_channel

pytestmark = pytest.mark.e2e

# Small allowances so a test reaches them; staff get no extra here (factor 1).
LIMIT_ENV = {
    "RIDEMESH_MAX_WATCHERS_PER_CALLER": "2",
    "RIDEMESH_MAX_STREAMS_PER_CALLER": "1",
    "RIDEMESH_STAFF_LIMIT_FACTOR": "1",
    "RIDEMESH_UNARY_RATE_PER_S": "0.5",
    "RIDEMESH_UNARY_BURST": "3",
}
SETTLE_S = 0.5


@pytest.fixture(scope="module")
def limited_location(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    make_database: Callable[[], str],
    keys: DevKeys,
) -> Iterator[tuple[ManagedProcess, int]]:
    process, port = start_location(
        tmp_path_factory.mktemp("limits"), redis_server.url, make_database(), LIMIT_ENV, keys
    )
    try:
        yield process, port
    finally:
        process.stop()


@pytest.fixture
async def stub(
    limited_location: tuple[ManagedProcess, int], keys: DevKeys
) -> AsyncIterator[location_grpc.LocationServiceAsyncStub]:
    _, port = limited_location
    async with ops_channel(keys, f"127.0.0.1:{port}") as channel:
        yield location_grpc.LocationServiceStub(channel)


def _area() -> pb.WatchAreaRequest:
    return pb.WatchAreaRequest(
        bounds=BoundingBox(
            south_west=LatLng(latitude=12.90, longitude=77.50),
            north_east=LatLng(latitude=13.00, longitude=77.60),
        )
    )


async def _refusal(call: Any) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as refused:
        async with asyncio.timeout(10):
            await call.read()
    code: grpc.StatusCode = refused.value.code()
    assert "limit of 2 concurrent watchers" in (refused.value.details() or "")
    return code


async def test_watchers_beyond_the_allowance_are_refused_and_freed_on_close(
    stub: location_grpc.LocationServiceAsyncStub, token: Callable[..., str]
) -> None:
    alice = bearer(token("ops-alice", Role.OPS))
    bob = bearer(token("ops-bob", Role.OPS))
    held = [stub.WatchArea(_area(), metadata=alice) for _ in range(2)]
    await asyncio.sleep(SETTLE_S)
    assert not any(call.done() for call in held)

    extra = stub.WatchArea(_area(), metadata=alice)
    assert await _refusal(extra) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Another caller is still served while alice is at her limit.
    other = stub.WatchArea(_area(), metadata=bob)
    await asyncio.sleep(SETTLE_S)
    assert not other.done()

    # Closing one (a client cancel) frees its place for a new one.
    held.pop().cancel()
    await asyncio.sleep(SETTLE_S)
    again = stub.WatchArea(_area(), metadata=alice)
    await asyncio.sleep(SETTLE_S)
    assert not again.done()
    for call in (*held, other, again):
        call.cancel()


async def test_refused_and_failed_watches_release_their_place(
    stub: location_grpc.LocationServiceAsyncStub, token: Callable[..., str]
) -> None:
    carol = bearer(token("ops-carol", Role.OPS))
    # Calls that end in an error (no bounds) must not keep a place.
    for _ in range(5):
        with pytest.raises(aio.AioRpcError) as failed:
            async for _ in stub.WatchArea(pb.WatchAreaRequest(), metadata=carol):
                pass
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    held = [stub.WatchArea(_area(), metadata=carol) for _ in range(2)]
    await asyncio.sleep(SETTLE_S)
    assert not any(call.done() for call in held)
    for call in held:
        call.cancel()


async def test_unary_calls_beyond_the_rate_are_refused_per_caller(
    stub: location_grpc.LocationServiceAsyncStub, token: Callable[..., str]
) -> None:
    dave = bearer(token("ops-dave", Role.OPS))
    erin = bearer(token("ops-erin", Role.OPS))
    request = pb.GetDriverLocationRequest(driver_id="nobody-here")
    codes = []
    for _ in range(4):
        with pytest.raises(aio.AioRpcError) as answer:
            await stub.GetDriverLocation(request, metadata=dave)
        codes.append(answer.value.code())
    assert codes[:3] == [grpc.StatusCode.NOT_FOUND] * 3
    assert codes[3] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit" in (answer.value.details() or "")
    # Dave's flood leaves Erin's bucket untouched.
    with pytest.raises(aio.AioRpcError) as answer:
        await stub.GetDriverLocation(request, metadata=erin)
    assert answer.value.code() == grpc.StatusCode.NOT_FOUND
