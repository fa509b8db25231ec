"""A LocationService killed with SIGKILL: the driver reconnects elsewhere and nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from grpc import aio
from redis.asyncio import Redis

from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from services.auth.identity import Role
from services.auth.keys import DevKeys
from services.history.store import HistoryStore, create_engine
from services.live.names import PERSIST_GROUP, ingest_stream
from services.ops.mesh.redis_server import RedisServer
from tests.e2e.clients import DriverStream, fix, new_driver_id
from tests.e2e.processes import start_location
from tests.tokens import bearer, ops_channel, token

pytestmark = pytest.mark.e2e

# Batches wait 3 s, so the killed process dies holding fixes it read but never committed;
# the survivor claims entries idle for 1 s.
ENV = {
    "RIDEMESH_PERSIST_MAX_AGE_S": "3",
    "RIDEMESH_PERSIST_CLAIM_IDLE_S": "1",
    "RIDEMESH_FIX_RATE_PER_S": "100",
}


async def test_killed_replica_entries_are_claimed_and_committed_by_another(
    tmp_path: Path,
    redis_server: RedisServer,
    make_database: Callable[[], str],
    keys: DevKeys,
) -> None:
    database_url = await asyncio.to_thread(make_database)
    redis_url = f"redis://127.0.0.1:{redis_server.port}/4"
    victim, victim_port = await asyncio.to_thread(
        start_location, tmp_path, redis_url, database_url, ENV, keys
    )
    survivor, survivor_port = await asyncio.to_thread(
        start_location, tmp_path, redis_url, database_url, ENV, keys
    )
    redis = Redis.from_url(redis_url)
    history = HistoryStore(create_engine(database_url))
    driver_id = new_driver_id("crash")
    me = bearer(token(keys, driver_id, Role.DRIVER))
    try:
        async with ops_channel(keys, f"127.0.0.1:{victim_port}") as channel:
            driver = DriverStream(location_grpc.LocationServiceStub(channel), me)
            for seq in range(1, 51):
                driver.send(fix(driver_id, seq))
                await asyncio.sleep(0.01)
            await driver.wait_for(lambda: driver.accepted_seq == 50)
            os.kill(victim.pid, signal.SIGKILL)
            with pytest.raises(aio.AioRpcError):
                await driver.reader
        assert driver.durable_seq < 50, "the kill must come before the victim's batch commits"
        victim_consumer = f"{socket.gethostname()}-{victim.pid}"
        held = await redis.xpending_range(
            ingest_stream(0), PERSIST_GROUP, "-", "+", 1000, consumername=victim_consumer
        )
        assert held, "the victim died holding uncommitted entries"

        # The app reconnects (here straight to the survivor) and carries on from its last seq.
        async with ops_channel(keys, f"127.0.0.1:{survivor_port}") as channel:
            driver = DriverStream(location_grpc.LocationServiceStub(channel), me)
            driver.send(fix(driver_id, 51))
            await driver.wait_for(lambda: driver.durable_seq == 51, timeout=20)
            driver.close()
            await driver.reader

        rows = await history.list_fixes(
            driver_id, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        )
        assert [row.seq for row in rows] == list(range(1, 52))
        still_held = await redis.xpending_range(
            ingest_stream(0), PERSIST_GROUP, "-", "+", 1000, consumername=victim_consumer
        )
        assert not still_held
    finally:
        victim.stop()
        survivor.stop()
        await redis.aclose()
        await history.dispose()
