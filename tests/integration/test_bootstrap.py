"""The one bootstrap: a startup that fails halfway closes what it built, in reverse, against a
real Redis of its own (so its connection count is this test's alone)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from services.auth.keys import DevKeys
from services.live.names import HUB_KEEPALIVE_CHANNEL
from services.ops.mesh.redis_server import RedisServer
from services.server.bootstrap import Parts, Service, run_service
from services.server.config import Settings

pytestmark = pytest.mark.integration


class ZonesMissing(RuntimeError):
    """Stands for any startup step that fails after clients were built."""


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[tuple[str, Redis]]:
    with RedisServer(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        observer = Redis.from_url(url)
        yield url, observer
        await observer.aclose()


async def _clients(observer: Redis) -> int:
    """Connections to this Redis other than the observer's own."""
    listed = await observer.client_list()
    return len(listed) - 1


async def _subscribers(observer: Redis) -> int:
    """Connections subscribed to the hubs' keepalive channel."""
    [(_, count)] = await observer.pubsub_numsub(HUB_KEEPALIVE_CHANNEL)
    return int(count)


async def test_a_startup_that_fails_halfway_closes_what_it_built(
    own_redis: tuple[str, Redis], keys: DevKeys
) -> None:
    url, observer = own_redis
    settings = Settings(url, "postgresql+asyncpg://unused/none", auth_keys_dir=str(keys.directory))
    built: dict[str, object] = {}

    async def build(parts: Parts) -> Service:
        redis = parts.redis()
        await redis.ping()
        built["hub"] = await parts.hub(bytes)
        built["task"] = parts.background(asyncio.sleep(3600), "idle")
        assert await _clients(observer) >= 1
        assert (await observer.pubsub_numsub(HUB_KEEPALIVE_CHANNEL))[0][1] == 1
        raise ZonesMissing("the zone table is missing")

    with pytest.raises(ZonesMissing):
        await run_service("test", build, settings, "127.0.0.1:0")

    task = built["task"]
    assert isinstance(task, asyncio.Task)
    assert task.cancelled()
    # The hub's pub/sub connection is closed without waiting for Redis to see it go: wait until
    # Redis has (a few milliseconds), then nothing may be left.
    async with asyncio.timeout(5):
        # Redis has no event for this; poll.
        while await _subscribers(observer) or await _clients(observer):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert await _subscribers(observer) == 0
    assert await _clients(observer) == 0
