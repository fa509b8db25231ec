"""The persister over real Redis and PostgreSQL: an entry it can never store goes to the
dead-letter stream (with why, counted) while the fixes around it are committed, and it recreates
its consumer group when Redis lost it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from ridemesh.v1.common_pb2 import DriverLocation, LatLng
from services.history.persister import Persister
from services.history.store import HistoryStore, create_engine
from services.live.ingest import IngestLog
from services.live.names import INGEST_DEAD_LETTERS, PERSIST_GROUP, ingest_stream
from services.observability.metrics import PERSIST_DEAD_LETTERS
from services.ops.mesh.redis_server import RedisServer
from tests.integration.dispatch_harness import new_id
from tests.integration.geo_drivers import flushed_redis

pytestmark = pytest.mark.integration

REDIS_DB = 11


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with flushed_redis(redis_server, REDIS_DB) as client:
        yield client


@pytest.fixture
async def history(database_url: str) -> AsyncIterator[HistoryStore]:
    store = HistoryStore(create_engine(database_url))
    yield store
    await store.dispose()


@pytest.fixture
async def persister(redis: Redis, history: HistoryStore) -> AsyncIterator[Persister]:
    made = Persister(IngestLog(redis), history, batch_size=100, max_age_s=0.1, claim_idle_s=30)
    task = asyncio.create_task(made.run())
    yield made
    await made.stop()
    await asyncio.wait_for(task, 15)


def _fix(driver_id: str, seq: int) -> bytes:
    location = DriverLocation(
        driver_id=driver_id, position=LatLng(latitude=45.0, longitude=7.0), seq=seq
    )
    location.recorded_at.FromNanoseconds(time.time_ns())
    location.received_at.FromNanoseconds(time.time_ns())
    return location.SerializeToString()


async def _until(condition: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Polls a query of Redis or PostgreSQL until it holds."""
    async with asyncio.timeout(timeout):
        while not await condition():  # noqa: ASYNC110 - a query, not an event to wait on
            await asyncio.sleep(0.05)


async def _stored(history: HistoryStore, driver_id: str) -> list[int]:
    far = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    return [row.seq for row in await history.list_fixes(driver_id, *far)]


async def test_an_entry_that_cannot_be_stored_goes_to_the_dead_letters_and_the_rest_is_stored(
    redis: Redis, history: HistoryStore, persister: Persister
) -> None:
    driver = new_id("dl")
    dead_before = PERSIST_DEAD_LETTERS._value.get()
    await redis.xadd(ingest_stream(0), {"p": _fix(driver, 1)})
    poisoned = await redis.xadd(ingest_stream(0), {"p": b"\xff\xfe not a fix"})
    await redis.xadd(ingest_stream(0), {"p": _fix(driver, 2)})

    async def both_stored() -> bool:
        return await _stored(history, driver) == [1, 2]

    await _until(both_stored)
    dead: Any = await redis.xrange(INGEST_DEAD_LETTERS)
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"entry"] == poisoned
    assert b"undecodable" in fields[b"reason"]
    assert PERSIST_DEAD_LETTERS._value.get() == dead_before + 1
    assert persister.dead_letters == 1
    # Nothing is left pending: the poisoned entry no longer holds the watermark back.
    assert (await redis.xpending(ingest_stream(0), PERSIST_GROUP))["pending"] == 0


async def test_a_consumer_group_redis_lost_is_created_again(
    redis: Redis, history: HistoryStore, persister: Persister
) -> None:
    driver = new_id("grp")
    await redis.xadd(ingest_stream(0), {"p": _fix(driver, 1)})

    def stored(seqs: list[int]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await _stored(history, driver) == seqs

        return check

    await _until(stored([1]))
    await redis.flushdb()  # what an empty restart leaves: no stream, no group
    await redis.xadd(ingest_stream(0), {"p": _fix(driver, 2)})
    await _until(stored([1, 2]))
