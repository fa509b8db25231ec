"""WatchArea through Envoy: the drivers there now, then their moves, exits, at most 1/s each."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import grpc
import pytest
from grpc import aio

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1.common_pb2 import BoundingBox, LatLng
from tests.e2e.clients import DriverStream, collect, fix, new_driver_id
from tests.e2e.conftest import status_of
from tests.tokens import Metadata

pytestmark = pytest.mark.e2e


def _box(south: float, west: float, north: float, east: float) -> BoundingBox:
    return BoundingBox(
        south_west=LatLng(latitude=south, longitude=west),
        north_east=LatLng(latitude=north, longitude=east),
    )


async def test_area_watch_sends_snapshot_moves_and_exits(
    location: location_grpc.LocationServiceAsyncStub, as_driver: Callable[[str], Metadata]
) -> None:
    # Paris, away from the other tests' drivers.
    box = _box(48.80, 2.25, 48.90, 2.45)
    resident, arriving, outside = (new_driver_id("area") for _ in range(3))
    streams = {d: DriverStream(location, as_driver(d)) for d in (resident, arriving, outside)}
    streams[resident].send(fix(resident, 1, 48.85, 2.35))
    await streams[resident].wait_for(lambda: streams[resident].accepted_seq == 1)

    watch = location.WatchArea(pb.WatchAreaRequest(bounds=box))
    (snapshot,) = await collect(watch, 1)
    assert snapshot.location.driver_id == resident
    assert not snapshot.exited

    streams[outside].send(fix(outside, 1, 48.95, 2.35))  # same grid cell, outside the box
    streams[arriving].send(fix(arriving, 1, 48.86, 2.30))
    (arrived,) = await collect(watch, 1)
    assert arrived.location.driver_id == arriving

    await asyncio.sleep(1.0)  # the resident's once-per-second allowance is free again
    streams[resident].send(fix(resident, 2, 48.95, 2.35))  # drives out of the box
    (left,) = await collect(watch, 1)
    assert (left.location.driver_id, left.exited) == (resident, True)
    watch.cancel()
    for stream in streams.values():
        stream.close()
        await stream.reader


async def test_a_watch_over_a_very_large_area_follows_every_partitions_log(
    location: location_grpc.LocationServiceAsyncStub, as_driver: Callable[[str], Metadata]
) -> None:
    # 20° by 40° of the South Atlantic: far more grid cells than a watch subscribes to, so the
    # replica reads every partition's ingest log for it instead.
    box = _box(-50.0, -40.0, -30.0, 0.0)
    driver = new_driver_id("wide")
    stream = DriverStream(location, as_driver(driver))
    watch = location.WatchArea(pb.WatchAreaRequest(bounds=box))
    first = asyncio.create_task(collect(watch, 1))
    seq = 0
    async with asyncio.timeout(15):
        # The watch sees fixes entered after it started following: send until one arrives.
        while not first.done():
            seq += 1
            stream.send(fix(driver, seq, -40.0, -20.0 + seq * 0.001))
            await asyncio.wait([first], timeout=0.2)
    (seen,) = first.result()
    assert seen.location.driver_id == driver
    assert not seen.exited

    stream.send(fix(driver, seq + 1, -20.0, -20.0))  # north of the box
    async with asyncio.timeout(15):
        while not (last := (await collect(watch, 1))[0]).exited:
            assert last.location.driver_id == driver  # an in-box fix released before the exit
    assert last.location.seq == seq + 1
    watch.cancel()
    stream.close()
    await stream.reader


async def test_area_watch_sends_each_driver_at_most_once_a_second(
    location: location_grpc.LocationServiceAsyncStub, as_driver: Callable[[str], Metadata]
) -> None:
    box = _box(-33.95, 151.10, -33.80, 151.30)  # Sydney
    driver_id = new_driver_id("busy")
    driver = DriverStream(location, as_driver(driver_id))
    watch = location.WatchArea(pb.WatchAreaRequest(bounds=box))
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[float, int]] = []

    async def read_until_last() -> None:
        while not arrivals or arrivals[-1][1] != 30:
            message = await watch.read()
            assert isinstance(message, pb.WatchAreaResponse)
            arrivals.append((loop.time(), message.location.seq))

    reading = asyncio.create_task(read_until_last())
    for seq in range(1, 31):  # 30 fixes in about 1.5 s
        driver.send(fix(driver_id, seq, -33.87, 151.20 + seq * 1e-4))
        await asyncio.sleep(0.05)
    await asyncio.wait_for(reading, 10)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) <= 4, arrivals
    assert all(gap >= 0.9 for gap in gaps), gaps
    watch.cancel()
    driver.close()
    await driver.reader


async def test_area_across_the_antimeridian(
    location: location_grpc.LocationServiceAsyncStub, as_driver: Callable[[str], Metadata]
) -> None:
    box = _box(-17.0, 179.5, -16.0, -179.5)  # Fiji, west edge east of east edge
    west_side, east_side, far = (new_driver_id("fiji") for _ in range(3))
    drivers = (west_side, east_side, far)
    streams = [DriverStream(location, as_driver(d)) for d in drivers]
    for stream, (driver_id, lng) in zip(
        streams, [(west_side, 179.9), (east_side, -179.9), (far, 170.0)], strict=True
    ):
        stream.send(fix(driver_id, 1, -16.5, lng))
        await stream.wait_for(lambda s=stream: s.accepted_seq == 1)
    watch = location.WatchArea(pb.WatchAreaRequest(bounds=box))
    got = {m.location.driver_id for m in await collect(watch, 2)}
    assert got == {west_side, east_side}
    watch.cancel()
    for stream in streams:
        stream.close()
        await stream.reader


@pytest.mark.parametrize(
    ("bounds", "words"),
    [
        (BoundingBox(), "both south_west and north_east"),
        (_box(10, 0, 5, 1), "north of"),
        (_box(-91, 0, 5, 1), "latitude"),
        (_box(0, float("nan"), 5, 1), "finite"),
    ],
)
async def test_bad_area_is_invalid_argument(
    channel: aio.Channel, bounds: BoundingBox, words: str
) -> None:
    stub = location_grpc.LocationServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as error:
        await collect(stub.WatchArea(pb.WatchAreaRequest(bounds=bounds)), 1)
    assert status_of(error.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (error.value.details() or "")
