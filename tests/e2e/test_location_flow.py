"""A driver's fixes through Envoy: to watchers (native and gRPC-Web), to Redis and to PostGIS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from grpc import aio

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1.common_pb2 import DriverLocation
from services.auth.identity import Role
from services.auth.keys import DevKeys
from services.history.store import HistoryStore
from services.ops.mesh.supervisor import Mesh
from tests.e2e.clients import (
    DriverStream,
    collect,
    complete_frames_length,
    fix,
    grpc_web_frame,
    grpc_web_frames,
    new_driver_id,
)
from tests.e2e.conftest import status_of
from tests.tokens import OPS, Metadata, ops_channel

pytestmark = pytest.mark.e2e


async def _grpc_web_watch(
    envoy_address: str, token: str, driver_id: str, count: int
) -> list[DriverLocation]:
    """WatchDriver as a browser sends it: HTTP/1.1 POST with application/grpc-web+proto."""
    body = grpc_web_frame(pb.WatchDriverRequest(driver_id=driver_id).SerializeToString())
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "x-user-agent": "grpc-web-javascript/0.1",
        "origin": "http://127.0.0.1:3000",
        "authorization": f"Bearer {token}",
    }
    url = f"http://{envoy_address}/ridemesh.v1.LocationService/WatchDriver"
    received: list[DriverLocation] = []
    buffer = b""
    async with (
        httpx.AsyncClient(http2=False, timeout=20) as client,
        client.stream("POST", url, content=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.http_version == "HTTP/1.1"
        assert response.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"
        async for chunk in response.aiter_bytes():
            buffer += chunk
            whole = complete_frames_length(buffer)
            for flag, payload in grpc_web_frames(buffer[:whole]):
                assert flag == 0, f"stream ended early with trailers {payload!r}"
                received.append(pb.WatchDriverResponse.FromString(payload).location)
            buffer = buffer[whole:]
            if len(received) >= count:
                break
    return received


async def test_fixes_reach_watchers_redis_and_postgis(
    location: location_grpc.LocationServiceAsyncStub,
    envoy_address: str,
    history: HistoryStore,
    token: Callable[..., str],
    as_driver: Callable[[str], Metadata],
) -> None:
    driver_id = new_driver_id()
    driver = DriverStream(location, as_driver(driver_id))
    driver.send(fix(driver_id, 1, 12.9700, 77.5900))
    await driver.wait_for(lambda: driver.accepted_seq == 1)

    # Each watcher starts with the current fix, then sees the next four in order.
    native = [location.WatchDriver(pb.WatchDriverRequest(driver_id=driver_id)) for _ in range(3)]
    web = asyncio.create_task(_grpc_web_watch(envoy_address, token(OPS, Role.OPS), driver_id, 5))
    native_tasks = [asyncio.create_task(collect(call, 5)) for call in native]
    await asyncio.sleep(1.0)  # the gRPC-Web request has reached its replica and subscribed
    for seq in range(2, 6):
        driver.send(fix(driver_id, seq, 12.9700 + seq * 0.001, 77.5900))
        await asyncio.sleep(0.1)

    for task in native_tasks:
        seqs = [m.location.seq for m in await task]
        assert seqs == [1, 2, 3, 4, 5]
    web_fixes = await web
    assert [f.seq for f in web_fixes] == [1, 2, 3, 4, 5]
    assert web_fixes[-1].position.latitude == pytest.approx(12.975)

    # Every accepted fix is acknowledged as durable, and is in PostGIS exactly once.
    await driver.wait_for(lambda: driver.durable_seq == 5)
    driver.close()
    await driver.reader
    stored = await history.list_fixes(driver_id, _ago(3600), _ago(-3600))
    assert [row.seq for row in stored] == [1, 2, 3, 4, 5]
    assert stored[-1].latitude == pytest.approx(12.975)
    assert stored[-1].longitude == pytest.approx(77.59)

    last = await location.GetDriverLocation(pb.GetDriverLocationRequest(driver_id=driver_id))
    assert last.location.seq == 5
    assert last.location.HasField("received_at")


async def test_watcher_on_one_replica_sees_driver_on_the_other(
    mesh: Mesh, keys: DevKeys, as_driver: Callable[[str], Metadata]
) -> None:
    first, second = mesh.services["location"]
    driver_id = new_driver_id()
    async with (
        ops_channel(keys, f"127.0.0.1:{first}") as to_first,
        ops_channel(keys, f"127.0.0.1:{second}") as to_second,
    ):
        driver = DriverStream(location_grpc.LocationServiceStub(to_first), as_driver(driver_id))
        watch = location_grpc.LocationServiceStub(to_second).WatchDriver(
            pb.WatchDriverRequest(driver_id=driver_id)
        )
        watching = asyncio.create_task(collect(watch, 3))
        await asyncio.sleep(0.5)  # subscribed on the second replica
        for seq in (1, 2, 3):
            driver.send(fix(driver_id, seq))
            await asyncio.sleep(0.1)
        assert [m.location.seq for m in await watching] == [1, 2, 3]
        driver.close()
        await driver.reader


async def test_get_driver_location_errors(location: location_grpc.LocationServiceAsyncStub) -> None:
    with pytest.raises(aio.AioRpcError) as empty:
        await location.GetDriverLocation(pb.GetDriverLocationRequest(driver_id=""))
    assert status_of(empty.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "driver_id is required" in (empty.value.details() or "")

    with pytest.raises(aio.AioRpcError) as unknown:
        await location.GetDriverLocation(pb.GetDriverLocationRequest(driver_id="nobody-here"))
    assert status_of(unknown.value) == grpc.StatusCode.NOT_FOUND
    assert "no live location" in (unknown.value.details() or "")

    with pytest.raises(aio.AioRpcError) as malformed:
        await location.GetDriverLocation(pb.GetDriverLocationRequest(driver_id="bad id\n"))
    assert status_of(malformed.value) == grpc.StatusCode.INVALID_ARGUMENT


INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_FIXES: list[tuple[dict[str, float], grpc.StatusCode, str]] = [
    ({"latitude": 90.5}, INVALID, "latitude"),
    ({"longitude": -181.0}, INVALID, "longitude"),
    ({"latitude": float("nan")}, INVALID, "finite"),
    ({"speed_mps": float("inf")}, INVALID, "speed"),
    ({"ahead_s": 3600.0}, INVALID, "ahead"),
]


async def test_bad_fixes_are_rejected_in_band_and_the_stream_goes_on(
    location: location_grpc.LocationServiceAsyncStub, as_driver: Callable[[str], Metadata]
) -> None:
    driver_id = new_driver_id()
    driver = DriverStream(location, as_driver(driver_id))
    driver.send(fix(driver_id, 10))
    await driver.wait_for(lambda: driver.accepted_seq == 10)

    seq = 10
    for bad, code, words in BAD_FIXES:
        seq += 1
        change = dict(bad)
        ahead = change.pop("ahead_s", 0.0)
        driver.send(fix(driver_id, seq, recorded_s=time.time() + ahead, **change))
        rejected = await driver.rejection(seq)
        assert rejected.code == code.value[0]
        assert words in rejected.message

    driver.send(fix(driver_id, 5))  # seq going backwards
    assert (await driver.rejection(5)).code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    driver.send(fix("someone-else", 100))  # another driver on this stream
    other = await driver.rejection(100)
    assert other.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "a driver streams fixes only as themselves" in other.message

    # None of that hurt the stream: a good fix is still taken and becomes durable.
    driver.send(fix(driver_id, 20))
    await driver.wait_for(lambda: driver.accepted_seq == 20 and driver.durable_seq == 20)
    driver.close()
    await driver.reader


async def test_fixes_faster_than_the_limit_are_rejected_not_dropped_silently(
    location: location_grpc.LocationServiceAsyncStub, as_driver: Callable[[str], Metadata]
) -> None:
    driver_id = new_driver_id()
    driver = DriverStream(location, as_driver(driver_id))
    sent = 120  # the test mesh allows 50 per second with a burst of 50
    for seq in range(1, sent + 1):
        driver.send(fix(driver_id, seq))
    await driver.wait_for(lambda: len(driver.rejected) + _accepted_count(driver) >= sent)
    throttled = [
        r for r in driver.rejected if r.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    ]
    assert throttled, "a burst of 120 fixes must hit the per-driver limit"
    assert "too many fixes" in throttled[0].message
    assert len(throttled) == len(driver.rejected)
    await asyncio.sleep(1.0)  # tokens refill: the driver is served again
    driver.send(fix(driver_id, sent + 1))
    await driver.wait_for(lambda: driver.accepted_seq == sent + 1)
    driver.close()
    await driver.reader


def _accepted_count(driver: DriverStream) -> int:
    # Accepted = every seq up to the last accepted one, less those rejected.
    rejected = {r.seq for r in driver.rejected}
    return sum(1 for seq in range(1, driver.accepted_seq + 1) if seq not in rejected)


async def test_heartbeat_gets_an_ack(
    location: location_grpc.LocationServiceAsyncStub, as_driver: Callable[[str], Metadata]
) -> None:
    driver = DriverStream(location, as_driver(new_driver_id()))
    driver.heartbeat()
    await driver.wait_for(lambda: len(driver.acks) >= 1)
    assert driver.acks[0].seq == 0
    driver.close()
    await driver.reader


async def test_slow_watcher_gets_the_newest_fix_and_does_not_delay_others(
    mesh: Mesh, keys: DevKeys, as_driver: Callable[[str], Metadata]
) -> None:
    port = mesh.services["location"][0]
    driver_id = new_driver_id()
    # The slow watcher's transport window is tiny, so the server cannot buffer for it: whatever
    # it misses must be conflated away in the server, not queued.
    slow_options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    async with (
        ops_channel(keys, f"127.0.0.1:{port}") as chan,
        ops_channel(keys, f"127.0.0.1:{port}", options=slow_options) as slow_chan,
    ):
        stub = location_grpc.LocationServiceStub(chan)
        driver = DriverStream(stub, as_driver(driver_id))
        driver.send(fix(driver_id, 1))
        await driver.wait_for(lambda: driver.accepted_seq == 1)
        slow = location_grpc.LocationServiceStub(slow_chan).WatchDriver(
            pb.WatchDriverRequest(driver_id=driver_id)
        )
        (first,) = await collect(slow, 1)
        assert first.location.seq == 1
        fast = stub.WatchDriver(pb.WatchDriverRequest(driver_id=driver_id))
        (fast_first,) = await collect(fast, 1)
        assert fast_first.location.seq == 1

        last = 200
        fast_seen = asyncio.create_task(collect(fast, last - 1, timeout=30))
        for seq in range(2, last + 1):
            driver.send(fix(driver_id, seq, 12.9 + seq * 1e-4))
            await asyncio.sleep(0.021)  # just under the test mesh's 50 fixes/s per driver
        fast_seqs = [m.location.seq for m in await fast_seen]
        assert fast_seqs == list(range(2, last + 1))

        # Now the slow watcher reads: what it gets is far less than was sent, ending at the newest.
        slow_seqs: list[int] = []
        async with asyncio.timeout(10):
            while not slow_seqs or slow_seqs[-1] != last:
                (message,) = await collect(slow, 1)
                slow_seqs.append(message.location.seq)
        assert slow_seqs == sorted(slow_seqs)
        assert len(slow_seqs) < (last - 1) / 2
        slow.cancel()
        fast.cancel()
        driver.close()
        await driver.reader


async def test_the_same_upload_twice_is_stored_once(
    location: location_grpc.LocationServiceAsyncStub,
    history: HistoryStore,
    as_driver: Callable[[str], Metadata],
) -> None:
    driver_id = new_driver_id("offline")
    hour_ago = time.time() - 3600
    updates = [fix(driver_id, seq, recorded_s=hour_ago + seq) for seq in range(1, 11)]
    bad = fix(driver_id, 11, latitude=123.0, recorded_s=hour_ago + 11)
    request = pb.UploadLocationsRequest(updates=[*updates, bad])
    me = as_driver(driver_id)

    first = await location.UploadLocations(request, metadata=me)
    assert first.stored_count == 10
    assert first.duplicate_count == 0
    assert [(d.driver_id, d.durable_seq) for d in first.durable_seqs] == [(driver_id, 10)]
    assert [r.seq for r in first.rejected] == [11]
    assert "latitude" in first.rejected[0].message

    again = await location.UploadLocations(request, metadata=me)
    assert again.stored_count == 0
    assert again.duplicate_count == 10
    assert await history.count_fixes(driver_id) == 10

    with pytest.raises(aio.AioRpcError) as empty:
        await location.UploadLocations(pb.UploadLocationsRequest(), metadata=me)
    assert status_of(empty.value) == grpc.StatusCode.INVALID_ARGUMENT
    too_many = pb.UploadLocationsRequest(updates=[updates[0]] * 1001)
    with pytest.raises(aio.AioRpcError) as big:
        await location.UploadLocations(too_many, metadata=me)
    assert status_of(big.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "1 to 1000" in (big.value.details() or "")


def _ago(seconds: float) -> datetime:
    return datetime.fromtimestamp(time.time() - seconds, tz=UTC)


async def test_a_fix_older_than_the_live_window_is_stored_but_not_live(
    location: location_grpc.LocationServiceAsyncStub,
    history: HistoryStore,
    as_driver: Callable[[str], Metadata],
) -> None:
    driver_id = new_driver_id("stale")
    driver = DriverStream(location, as_driver(driver_id))
    driver.send(fix(driver_id, 1, recorded_s=time.time() - 360))  # six minutes old
    await driver.wait_for(lambda: driver.durable_seq == 1)
    driver.close()
    await driver.reader
    assert await history.count_fixes(driver_id) == 1
    with pytest.raises(aio.AioRpcError) as error:
        await location.GetDriverLocation(pb.GetDriverLocationRequest(driver_id=driver_id))
    assert status_of(error.value) == grpc.StatusCode.NOT_FOUND
