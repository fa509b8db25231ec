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
from services.live.group import newest_fixes
from services.live.ingest import IngestFollower
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


async def test_a_stored_only_fix_reaches_the_log_marked_and_nothing_live(redis: Redis) -> None:
    live = LiveStore(redis, 300.0)
    now = time.time()
    current = location("ingest-late", 12.97, 77.59, now)
    await live.ingest(current, current.SerializeToString())
    follower = IngestFollower(redis)
    await follower.start()
    late = _with_seq(location("ingest-late", 13.5, 77.0, now - 600), 2)
    await live.ingest(late, late.SerializeToString(), live=False)
    moved = _with_seq(location("ingest-late", 12.971, 77.59, now + 1), 3)
    await live.ingest(moved, moved.SerializeToString())
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(ingest_stream(0))  # type: ignore[assignment]
    assert [(f.get(b"l"), DriverLocation.FromString(f[b"p"]).seq) for _, f in entries] == [
        (None, 1),
        (b"1", 2),
        (None, 3),
    ]
    # The persister reads every entry; live readers skip the late one.
    assert newest_fixes(entries)["ingest-late"].seq == 3
    assert newest_fixes(entries[:2])["ingest-late"].seq == 1
    batch = await anext(aiter(follower.batches()))
    assert [DriverLocation.FromString(p).seq for p in batch] == [3]
    assert (await live.get_location("ingest-late")).seq == 3  # type: ignore[union-attr]


async def test_a_held_fix_is_stored_as_sent_and_shown_where_the_driver_stands(
    redis: Redis,
) -> None:
    live = LiveStore(redis, 300.0)
    now = time.time()
    standing = location("ingest-held", 12.97, 77.59, now)
    await live.ingest(standing, standing.SerializeToString())
    sent = _with_seq(location("ingest-held", 12.97004, 77.59, now + 4), 2)
    shown = _with_seq(location("ingest-held", 12.97, 77.59, now + 4), 2)
    await live.ingest(shown, shown.SerializeToString(), stored=sent.SerializeToString())
    newest: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrevrange(
        ingest_stream(0), count=1
    )  # type: ignore[assignment]
    fields = newest[0][1]
    assert DriverLocation.FromString(fields[b"p"]) == sent
    assert DriverLocation.FromString(fields[b"v"]) == shown
    assert newest_fixes([(b"0-1", fields)])["ingest-held"] == shown
    assert await live.get_location("ingest-held") == shown


def _with_seq(fix: DriverLocation, seq: int) -> DriverLocation:
    fix.seq = seq
    return fix
