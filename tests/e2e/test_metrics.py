"""Prometheus metrics of a real LocationService process, scraped over HTTP: after a small
stream, each counter has moved by exactly what happened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from services.auth.identity import Role
from services.auth.keys import DevKeys
from services.ops.mesh.ports import free_port
from services.ops.mesh.redis_server import RedisServer
from services.ops.status import Samples, histogram_quantile, scrape, total
from tests.e2e.clients import DriverStream, fix, new_driver_id
from tests.e2e.processes import start_location
from tests.tokens import bearer, ops_channel, token

pytestmark = pytest.mark.e2e

REDIS_DB = 14  # its own database: only this test's fixes reach this process
SERVICE = (("grpc_service", "ridemesh.v1.LocationService"),)


@dataclass(frozen=True)
class Location:
    port: int
    metrics_port: int


@pytest.fixture(scope="module")
async def location_process(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    make_database: Callable[[], str],
    keys: DevKeys,
) -> AsyncIterator[Location]:
    database_url = await asyncio.to_thread(make_database)
    metrics_port = free_port()
    env = {"RIDEMESH_METRICS_PORT": str(metrics_port), "RIDEMESH_PERSIST_MAX_AGE_S": "0.2"}
    redis_url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    process, port = await asyncio.to_thread(
        start_location, tmp_path_factory.mktemp("metrics"), redis_url, database_url, env, keys
    )
    try:
        yield Location(port, metrics_port)
    finally:
        await asyncio.to_thread(process.stop)


async def _scrape(port: int) -> Samples:
    return await asyncio.to_thread(scrape, port)


def _rpc(samples: Samples, method: str, code: str) -> float:
    return total(samples, "ridemesh_rpc_handled_total", grpc_method=method, grpc_code=code)


async def test_a_small_stream_moves_each_counter_by_what_happened(
    location_process: Location, keys: DevKeys, tmp_path: Path
) -> None:
    before = await _scrape(location_process.metrics_port)
    driver_id = new_driver_id("metrics")
    address = f"127.0.0.1:{location_process.port}"
    async with ops_channel(keys, address) as channel:
        stub = location_grpc.LocationServiceStub(channel)
        driver = DriverStream(stub, bearer(token(keys, driver_id, Role.DRIVER)))
        for seq in range(1, 6):
            driver.send(fix(driver_id, seq))
        driver.send(fix(driver_id, 6, latitude=91.0))  # out of range
        driver.send(fix(driver_id, 3))  # seq goes back
        await driver.wait_for(lambda: driver.durable_seq >= 5 and len(driver.rejected) == 2)
        during = await _scrape(location_process.metrics_port)
        driver.close()
        await driver.reader

        with pytest.raises(aio.AioRpcError) as missing:
            await stub.GetDriverLocation(pb.GetDriverLocationRequest(driver_id="nobody-here"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        await stub.GetDriverLocation(pb.GetDriverLocationRequest(driver_id=driver_id))
    async with aio.insecure_channel(address) as anonymous:
        with pytest.raises(aio.AioRpcError) as refused:
            await location_grpc.LocationServiceStub(anonymous).GetDriverLocation(
                pb.GetDriverLocationRequest(driver_id=driver_id)
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = await _scrape(location_process.metrics_port)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("ridemesh_fixes_accepted_total") == 5
    assert moved("ridemesh_fixes_rejected_total", reason="invalid_argument") == 1
    assert moved("ridemesh_fixes_rejected_total", reason="failed_precondition") == 1
    assert moved("ridemesh_fixes_rejected_total") == 2
    assert moved("ridemesh_persist_rows_total") == 5
    assert moved("ridemesh_persist_lag_seconds_count") == 5
    lag_p99 = histogram_quantile(before, after, "ridemesh_persist_lag_seconds", 0.99)
    assert lag_p99 is not None
    assert lag_p99 <= 5.0
    assert moved("ridemesh_persist_batch_rows_sum") == 5
    # The stream was open while it ran, and counted once, OK, when it ended.
    open_during = total(during, "ridemesh_streams_open", grpc_method="StreamLocations")
    assert open_during == total(before, "ridemesh_streams_open", grpc_method="StreamLocations") + 1
    assert total(after, "ridemesh_streams_open", grpc_method="StreamLocations") == total(
        before, "ridemesh_streams_open", grpc_method="StreamLocations"
    )
    assert _rpc(after, "StreamLocations", "OK") - _rpc(before, "StreamLocations", "OK") == 1
    # Unary calls by final status, refusals by the token check included, each timed.
    assert (
        _rpc(after, "GetDriverLocation", "NOT_FOUND")
        - _rpc(before, "GetDriverLocation", "NOT_FOUND")
        == 1
    )
    assert _rpc(after, "GetDriverLocation", "OK") - _rpc(before, "GetDriverLocation", "OK") == 1
    assert (
        _rpc(after, "GetDriverLocation", "UNAUTHENTICATED")
        - _rpc(before, "GetDriverLocation", "UNAUTHENTICATED")
        == 1
    )
    timed = moved("ridemesh_rpc_duration_seconds_count", grpc_method="GetDriverLocation")
    assert timed == 3
