"""Fix quality filters on a real LocationService process with the product's default settings:
each bad fix is refused with its filter named, stationary jitter and late fixes are stored
without moving the live position, and the stream keeps serving throughout."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from services.auth.identity import Role
from services.auth.keys import DevKeys
from services.history.store import HistoryStore, create_engine
from services.ops.mesh.process import ManagedProcess
from services.ops.mesh.redis_server import RedisServer
from tests.e2e.clients import DriverStream, fix, new_driver_id
from tests.e2e.processes import start_location
from tests.tokens import bearer, ops_channel, token

pytestmark = pytest.mark.integration

# Only the intervals are short: every filter runs with its default bound.
ENV = {"RIDEMESH_ACK_INTERVAL_S": "0.2", "RIDEMESH_PERSIST_MAX_AGE_S": "0.2"}
INVALID_ARGUMENT = 3
M = 1 / 111_195  # a metre of latitude, in degrees
P = (12.9716, 77.5946)


@pytest.fixture(scope="module")
def database(make_database: Callable[[], str]) -> str:
    return make_database()


@pytest.fixture(scope="module")
def location_port(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    database: str,
    keys: DevKeys,
) -> Iterator[int]:
    url = f"redis://127.0.0.1:{redis_server.port}/11"
    process: ManagedProcess
    process, port = start_location(tmp_path_factory.mktemp("quality"), url, database, ENV, keys)
    try:
        yield port
    finally:
        process.stop()


@pytest.fixture
async def stub(
    location_port: int, keys: DevKeys
) -> AsyncIterator[location_grpc.LocationServiceAsyncStub]:
    async with ops_channel(keys, f"127.0.0.1:{location_port}") as channel:
        yield location_grpc.LocationServiceStub(channel)


@pytest.fixture
async def history(database: str) -> AsyncIterator[HistoryStore]:
    store = HistoryStore(create_engine(database))
    yield store
    await store.dispose()


def _driver(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys
) -> tuple[str, DriverStream]:
    driver_id = new_driver_id("quality")
    return driver_id, DriverStream(stub, bearer(token(keys, driver_id, Role.DRIVER)))


async def _stored_positions(
    history: HistoryStore, driver_id: str, driver: DriverStream, seqs: int
) -> dict[int, tuple[float, float]]:
    """Waits until the stream's acks say every accepted fix up to `seqs` is durable, then reads
    the driver's history as {seq: (lat, lng)}."""
    await driver.wait_for(lambda: driver.durable_seq >= seqs)
    now = datetime.now(UTC)
    rows = await history.list_fixes(driver_id, now - timedelta(hours=2), now + timedelta(hours=1))
    return {row.seq: (row.latitude, row.longitude) for row in rows}


async def test_each_filter_refuses_its_fix_naming_it_and_the_stream_goes_on(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, history: HistoryStore
) -> None:
    driver_id, driver = _driver(stub, keys)
    now = time.time()
    first = fix(driver_id, 1, *P, recorded_s=now)
    driver.send(first)
    poor = fix(driver_id, 2, P[0] + 10 * M, P[1], recorded_s=now + 1)
    poor.accuracy_m = 500.0
    driver.send(poor)
    repeat = fix(driver_id, 3, *P, recorded_s=now)
    repeat.recorded_at.CopyFrom(first.recorded_at)
    driver.send(repeat)
    # 5 km north two seconds later: 2,500 m/s.
    driver.send(fix(driver_id, 4, P[0] + 5_000 * M, P[1], recorded_s=now + 2))
    # 40 m in 4 s: a car in town.
    driver.send(fix(driver_id, 5, P[0] + 40 * M, P[1], recorded_s=now + 4))

    expected = {
        2: pb.FIX_FILTER_ACCURACY,
        3: pb.FIX_FILTER_DUPLICATE,
        4: pb.FIX_FILTER_SPEED_JUMP,
    }
    for seq, fix_filter in expected.items():
        refused = await driver.rejection(seq)
        assert refused.filter == fix_filter, refused
        assert refused.code == INVALID_ARGUMENT
        assert refused.driver_id == driver_id
    assert "100 m" in (await driver.rejection(2)).message
    assert "70 m/s" in (await driver.rejection(4)).message
    stored = await _stored_positions(history, driver_id, driver, 5)
    assert sorted(stored) == [1, 5]
    driver.close()
    await driver.reader


async def test_stationary_jitter_is_stored_as_sent_while_the_live_position_holds(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, history: HistoryStore
) -> None:
    driver_id, driver = _driver(stub, keys)
    now = time.time()
    driver.send(fix(driver_id, 1, *P, recorded_s=now - 8, speed_mps=0.0))
    driver.send(fix(driver_id, 2, P[0] + 5 * M, P[1], recorded_s=now - 4, speed_mps=0.0))
    driver.send(fix(driver_id, 3, P[0] - 4 * M, P[1], recorded_s=now, speed_mps=0.2))
    stored = await _stored_positions(history, driver_id, driver, 3)
    assert stored[2] == pytest.approx((P[0] + 5 * M, P[1]))
    assert stored[3] == pytest.approx((P[0] - 4 * M, P[1]))
    live = await stub.GetDriverLocation(pb.GetDriverLocationRequest(driver_id=driver_id))
    # The newest fix's time and seq, at the place the driver stands.
    assert live.location.seq == 3
    assert (live.location.position.latitude, live.location.position.longitude) == P
    # Moving off: the live position follows again.
    driver.send(fix(driver_id, 4, P[0] + 30 * M, P[1], recorded_s=now + 3, speed_mps=5.0))
    await driver.wait_for(lambda: driver.accepted_seq >= 4)
    live = await stub.GetDriverLocation(pb.GetDriverLocationRequest(driver_id=driver_id))
    assert live.location.position.latitude == pytest.approx(P[0] + 30 * M)
    driver.close()
    await driver.reader


async def test_a_late_fix_is_stored_but_never_moves_the_live_position(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, history: HistoryStore
) -> None:
    driver_id, driver = _driver(stub, keys)
    now = time.time()
    driver.send(fix(driver_id, 1, *P, recorded_s=now))
    # Taken 10 minutes ago, 3 km away (an offline buffer emptied on the stream): no speed check
    # against the live fix, stored, not live.
    driver.send(fix(driver_id, 2, P[0] + 3_000 * M, P[1], recorded_s=now - 600))
    stored = await _stored_positions(history, driver_id, driver, 2)
    assert stored[2] == pytest.approx((P[0] + 3_000 * M, P[1]))
    assert 2 not in {r.seq for r in driver.rejected}
    live = await stub.GetDriverLocation(pb.GetDriverLocationRequest(driver_id=driver_id))
    assert live.location.seq == 1
    assert (live.location.position.latitude, live.location.position.longitude) == P
    driver.close()
    await driver.reader


async def test_an_upload_drops_inaccurate_fixes_and_repeats_under_a_new_seq(
    stub: location_grpc.LocationServiceAsyncStub, keys: DevKeys, history: HistoryStore
) -> None:
    driver_id = new_driver_id("upload")
    now = time.time() - 3600
    good = fix(driver_id, 1, *P, recorded_s=now)
    poor = fix(driver_id, 2, *P, recorded_s=now + 4)
    poor.accuracy_m = 250.0
    again = fix(driver_id, 3, *P, recorded_s=now)
    again.recorded_at.CopyFrom(good.recorded_at)
    resent = fix(driver_id, 1, *P, recorded_s=now)
    resent.recorded_at.CopyFrom(good.recorded_at)
    request = pb.UploadLocationsRequest(updates=[good, poor, again, resent])
    metadata = bearer(token(keys, driver_id, Role.DRIVER))
    answer = await stub.UploadLocations(request, metadata=metadata)
    assert {(r.seq, r.filter) for r in answer.rejected} == {
        (2, pb.FIX_FILTER_ACCURACY),
        (3, pb.FIX_FILTER_DUPLICATE),
    }
    # The same fix twice (same seq) is an idempotent re-send, not a filtered duplicate.
    assert answer.stored_count == 1
    assert answer.duplicate_count == 1
    assert await history.count_fixes(driver_id) == 1
