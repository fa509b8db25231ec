"""SIGTERM to a LocationService mid-stream: it drains, flushes, and loses no accepted fix."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc import aio

from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from services.auth.identity import Role
from services.auth.keys import DevKeys
from services.history.store import HistoryStore, create_engine
from services.ops.mesh.redis_server import RedisServer
from tests.e2e.clients import DriverStream, fix, new_driver_id
from tests.e2e.processes import start_location
from tests.tokens import bearer, ops_channel, token

pytestmark = pytest.mark.e2e

MAX_SENT = 20_000


async def test_sigterm_mid_stream_loses_no_accepted_fix(
    tmp_path: Path,
    redis_server: RedisServer,
    make_database: Callable[[], str],
    keys: DevKeys,
) -> None:
    database_url = await asyncio.to_thread(make_database)
    # Its own Redis database: no other persister may commit this process's fixes for it.
    redis_url = f"redis://127.0.0.1:{redis_server.port}/3"
    env = {
        "RIDEMESH_PERSIST_MAX_AGE_S": "2",
        "RIDEMESH_FIX_RATE_PER_S": "1000000",
        "RIDEMESH_FIX_BURST": "1000000",
    }
    process, port = await asyncio.to_thread(
        start_location, tmp_path, redis_url, database_url, env, keys
    )
    try:
        driver_id = new_driver_id("term")
        async with ops_channel(keys, f"127.0.0.1:{port}") as channel:
            me = bearer(token(keys, driver_id, Role.DRIVER))
            driver = DriverStream(location_grpc.LocationServiceStub(channel), me)
            sent = 0
            for seq in range(1, 101):
                driver.send(fix(driver_id, seq))
                sent = seq
                await asyncio.sleep(0.02)
            # Mid-stream, with a batch younger than its 2 s flush age; then a fix every 2 ms
            # until the draining server refuses one (or the stream ends). Stopping at the first
            # refusal leaves no write in flight when the server closes the stream.
            os.kill(process.pid, signal.SIGTERM)
            while not driver.rejected and not driver.reader.done() and sent < MAX_SENT:
                sent += 1
                driver.send(fix(driver_id, sent))
                await asyncio.sleep(0.002)
            with pytest.raises(aio.AioRpcError) as ended:
                await driver.reader
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (ended.value.details() or "")
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        process.stop()

    accepted_seq = driver.accepted_seq
    refused = {r.seq for r in driver.rejected}
    assert accepted_seq >= 100
    assert all(r.code == grpc.StatusCode.UNAVAILABLE.value[0] for r in driver.rejected)
    # The final ack said everything accepted was durable, and the rows agree.
    assert driver.durable_seq == accepted_seq
    history = HistoryStore(create_engine(database_url))
    try:
        rows = await history.list_fixes(
            driver_id, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        )
    finally:
        await history.dispose()
    stored = [row.seq for row in rows]
    expected = [s for s in range(1, accepted_seq + 1) if s not in refused]
    assert stored == expected
    assert sent < MAX_SENT, "the stream never ended"
    assert refused, "fixes sent while draining are refused, not silently lost"
