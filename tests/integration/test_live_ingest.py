"""LiveStore.ingest under concurrency: fixes accepted together share pipelines, yet each gets its
own entry id, in the order accepted, and nothing is lost; a flushed script cache and a dead Redis
are handled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from ridemesh.v1.common_pb2 import DriverLocation
from services.live.client import redis_client
from services.live.names import geo_key, ingest_stream
from services.live.store import INGEST_BATCH, LiveStore
from services.ops.mesh.ports import free_port
from services.ops.mesh.redis_server import RedisServer
from tests.integration.geo_drivers import flushed_redis, location

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with flushed_redis(redis_server) as client:
        yield client


async def test_concurrent_fixes_each_get_their_entry_in_the_order_accepted(redis: Redis) -> None:
    live = LiveStore(redis, 300.0)
    now = time.time()
    count = 3 * INGEST_BATCH + 17  # several full pipelines and a partial one
    fixes = [location(f"ingest-{n}", 12.97, 77.59, now) for n in range(count)]
    ids = await asyncio.gather(*(live.ingest(f, f.SerializeToString()) for f in fixes))
    assert len(set(ids)) == count
    assert ids == sorted(ids)
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(ingest_stream(0))  # type: ignore[assignment]
    assert len(entries) == count
    stored = [DriverLocation.FromString(fields[b"p"]).driver_id for _, fields in entries]
    assert stored == [f.driver_id for f in fixes]
    assert await redis.zcard(geo_key(0)) == count


async def test_a_flushed_script_cache_is_reloaded_and_the_fixes_still_go_in(redis: Redis) -> None:
    live = LiveStore(redis, 300.0)
    first = location("ingest-reload", 12.97, 77.59, time.time())
    await live.ingest(first, first.SerializeToString())
    await redis.script_flush()
    again = [location(f"ingest-reload-{n}", 12.97, 77.59, time.time()) for n in range(5)]
    ids = await asyncio.gather(*(live.ingest(f, f.SerializeToString()) for f in again))
    assert len(set(ids)) == 5
    assert await redis.xlen(ingest_stream(0)) == 6


async def test_without_redis_each_fix_fails_with_a_connection_error() -> None:
    nowhere = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    live = LiveStore(nowhere, 300.0)
    fixes = [location(f"ingest-down-{n}", 12.97, 77.59, time.time()) for n in range(3)]
    try:
        results = await asyncio.gather(
            *(live.ingest(f, f.SerializeToString()) for f in fixes), return_exceptions=True
        )
    finally:
        await nowhere.aclose()
    assert all(isinstance(r, (RedisConnectionError, OSError)) for r in results), results
