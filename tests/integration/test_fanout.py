"""The fan-out hub against a real Redis of its own that the tests kill and restart: a failed
subscribe rolls back, a raising sink is isolated, and a lost connection ends watchers while
internal consumers carry on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.domain.errors import Unavailable
from services.live.fanout import Hub
from services.live.replies import text
from tests.integration.restartable import Restartable
from tests.waiting import until

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[tuple[Restartable, Redis]]:
    server = Restartable(tmp_path / "redis")
    client = Redis.from_url(server.server.url)
    yield server, client
    await client.aclose()
    server.server.stop()


@pytest.fixture
async def hub(redis: tuple[Restartable, Redis]) -> AsyncIterator[Hub[bytes]]:
    made: Hub[bytes] = Hub(redis[1], bytes)
    await made.start()
    yield made
    await made.stop()


async def _publish_until(client: Redis, channel: str, seen: list[bytes]) -> None:
    """Publishes until a sink has seen a message (a subscription may still be on its way)."""
    async with asyncio.timeout(15):
        while not seen:
            with contextlib.suppress(RedisError):  # Redis may still be starting
                await client.spublish(channel, b"hello")
            await asyncio.sleep(0.05)


async def test_a_subscribe_that_failed_is_rolled_back_so_the_next_watcher_subscribes(
    redis: tuple[Restartable, Redis], hub: Hub[bytes]
) -> None:
    server, client = redis
    told: list[Exception] = []
    other: list[bytes] = []
    await hub.add("ch:other", other.append, on_lost=told.append)
    server.kill()
    await until(lambda: bool(told), timeout=15.0)  # the hub saw its connection go
    first: list[bytes] = []
    with pytest.raises(RedisError):
        await hub.add("ch:a", first.append)
    assert hub.subscribed_channels() == 0

    server.start()
    second: list[bytes] = []
    async with asyncio.timeout(15):
        while True:
            try:
                await hub.add("ch:a", second.append)
                break
            except RedisError:
                await asyncio.sleep(0.1)  # the hub's connection is coming back
    await _publish_until(client, "ch:a", second)
    assert second[0] == b"hello"
    assert first == []


async def test_a_sink_that_raises_does_not_stop_the_others(
    redis: tuple[Restartable, Redis], hub: Hub[bytes]
) -> None:
    _, client = redis

    def broken(_: bytes) -> None:
        raise ValueError("a bug in one watcher")

    seen: list[bytes] = []
    await hub.add("ch:b", broken)
    await hub.add("ch:b", seen.append)
    await _publish_until(client, "ch:b", seen)
    await client.spublish("ch:b", b"again")
    await until(lambda: b"again" in seen, timeout=15.0)


async def test_a_lost_connection_ends_watchers_and_keeps_internal_consumers(
    redis: tuple[Restartable, Redis], hub: Hub[bytes]
) -> None:
    server, client = redis
    told: list[Exception] = []
    watcher: list[bytes] = []
    consumer: list[bytes] = []
    await hub.add("ch:c", watcher.append, on_lost=told.append)
    await hub.add("ch:c", consumer.append)
    await _publish_until(client, "ch:c", consumer)

    server.kill()
    await until(lambda: bool(told), timeout=15.0)
    assert isinstance(told[0], Unavailable)
    assert "Redis" in str(told[0])

    server.start()
    consumer.clear()
    watcher.clear()
    await _publish_until(client, "ch:c", consumer)  # redis-py subscribed again
    assert watcher == []  # the watcher was dropped: its call ended and it reconnects


async def test_channels_whose_watchers_ended_with_the_connection_are_not_subscribed_again(
    redis: tuple[Restartable, Redis], hub: Hub[bytes]
) -> None:
    server, client = redis
    told: list[Exception] = []
    watched: list[bytes] = []
    consumer: list[bytes] = []
    await hub.add("ch:watched", watched.append, on_lost=told.append)
    await hub.add("ch:kept", consumer.append)

    server.kill()
    await until(lambda: bool(told), timeout=15.0)
    server.start()
    await _publish_until(client, "ch:kept", consumer)  # the hub is connected again

    async def subscribers() -> dict[str, int]:
        counts = await client.pubsub_shardnumsub("ch:watched", "ch:kept")
        return {text(name): count for name, count in counts}

    async with asyncio.timeout(15):
        while (await subscribers())["ch:watched"] != 0:  # noqa: ASYNC110 - a Redis query
            await asyncio.sleep(0.05)
    assert (await subscribers())["ch:kept"] == 1
    assert hub.subscribed_channels() == 1


async def test_stop_ends_promptly_while_redis_is_away(
    redis: tuple[Restartable, Redis], hub: Hub[bytes]
) -> None:
    server, _ = redis
    told: list[Exception] = []
    await hub.add("ch:d", lambda _: None)
    await hub.add("ch:d", lambda _: None, on_lost=told.append)
    server.kill()
    await until(lambda: bool(told), timeout=15.0)  # the hub is retrying now
    async with asyncio.timeout(1):
        await hub.stop()
