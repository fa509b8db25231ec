"""The ingest log's follower against a real Redis: every entry added after start, in order and
in batches; nothing from before; and reading resumes after Redis is killed and restarted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from services.live.ingest import IngestFollower
from services.live.names import ingest_stream
from tests.integration.restartable import Restartable

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


class Reader:
    """Runs a follower in a task, queueing each batch it yields."""

    def __init__(self, follower: IngestFollower) -> None:
        self.batches: asyncio.Queue[list[bytes]] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(follower))

    async def _run(self, follower: IngestFollower) -> None:
        async for batch in follower.batches():
            await self.batches.put(batch)

    async def take(self, count: int) -> list[bytes]:
        """The next `count` payloads, however they were batched."""
        got: list[bytes] = []
        async with asyncio.timeout(15):
            while len(got) < count:
                got += await self.batches.get()
        return got

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Restartable]:
    made = Restartable(tmp_path / "redis")
    yield made
    made.server.stop()


async def test_reads_every_new_entry_in_order_in_batches(server: Restartable) -> None:
    redis = Redis.from_url(server.server.url)
    await redis.xadd(ingest_stream(0), {"p": b"before"})
    follower = IngestFollower(redis)
    await follower.start()
    pipe = redis.pipeline(transaction=False)
    for n in range(1000):
        pipe.xadd(ingest_stream(0), {"p": f"fix-{n}".encode()})
    await pipe.execute()
    reader = Reader(follower)
    try:
        got = await reader.take(1000)
        assert got == [f"fix-{n}".encode() for n in range(1000)]  # not "before", none twice
        assert reader.batches.empty()
    finally:
        await reader.stop()
        await redis.aclose()


async def test_an_empty_log_is_followed_from_its_first_entry(server: Restartable) -> None:
    redis = Redis.from_url(server.server.url)
    follower = IngestFollower(redis)
    await follower.start()
    reader = Reader(follower)
    try:
        await redis.xadd(ingest_stream(0), {"p": b"first"})
        assert await reader.take(1) == [b"first"]
    finally:
        await reader.stop()
        await redis.aclose()


async def test_reading_resumes_after_redis_is_killed_and_restarted(server: Restartable) -> None:
    redis = Redis.from_url(server.server.url)
    follower = IngestFollower(redis, retry_s=0.1)
    await follower.start()
    reader = Reader(follower)
    try:
        await redis.xadd(ingest_stream(0), {"p": b"one"})
        assert await reader.take(1) == [b"one"]
        server.kill()
        server.start()
        # The follower resumes at the log's end once it reconnects; entries keep coming until
        # one written after that point is read.
        async with asyncio.timeout(15):
            n = 0
            while True:
                n += 1
                with contextlib.suppress(Exception):  # the client reconnects on its own
                    await redis.xadd(ingest_stream(0), {"p": f"after-{n}".encode()})
                try:
                    async with asyncio.timeout(0.5):
                        got = await reader.take(1)
                except TimeoutError:
                    continue
                assert got[0].startswith(b"after-")
                break
    finally:
        await reader.stop()
        await redis.aclose()
