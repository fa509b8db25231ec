"""The fan-out hub against a real Redis Cluster of its own: one hub delivers channels of every
master, and a slot that moves (a master killed and failed over, a manual failover) takes only
its own watchers down while internal consumers follow it to the master serving it now."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from services.domain.errors import Unavailable
from services.live.fanout import Hub
from services.live.replies import text
from services.ops.mesh.redis_cluster import RedisClusterServer
from tests.waiting import until

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterServer]:
    with RedisClusterServer(tmp_path / "cluster") as server:
        yield server


@pytest.fixture
async def client(cluster: RedisClusterServer) -> AsyncIterator[RedisCluster]:
    made = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    yield made
    await made.aclose()


@pytest.fixture
async def hub(client: RedisCluster) -> AsyncIterator[Hub[bytes]]:
    made: Hub[bytes] = Hub(client, bytes)
    await made.start()
    yield made
    await made.stop()  # again, when the test stopped it: a no-op


def _one_channel_per_master(cluster: RedisClusterServer) -> list[tuple[int, str]]:
    """(master port, channel name) for a channel on each master."""
    channels: dict[int, str] = {}
    for i in range(1000):
        name = f"ch:{i}"
        channels.setdefault(cluster.master_port_for_slot(key_slot(name.encode())), name)
        if len(channels) == cluster.masters:
            return list(channels.items())
    raise AssertionError("no channel found on some master")


def _slot(channel: str) -> int:
    return key_slot(channel.encode())


def _channels_on(cluster: RedisClusterServer, port: int, count: int, besides: str) -> list[str]:
    """`count` channels served by the master on `port`, each in a slot of its own."""
    slots = {_slot(besides)}
    found: list[str] = []
    for i in range(100_000):
        name = f"ch:{port}:{i}"
        if _slot(name) not in slots and cluster.master_port_for_slot(_slot(name)) == port:
            slots.add(_slot(name))
            found.append(name)
            if len(found) == count:
                return found
    raise AssertionError(f"no {count} channels found on {port}")


async def _migrate(cluster: RedisClusterServer, slot: int, target: int) -> None:
    """Moves `slot` (which holds no keys) to the master on `target`, as resharding does, and
    tells every master at once."""
    source = cluster.master_port_for_slot(slot)
    async with Redis(port=source) as old, Redis(port=target) as new:
        old_id = text(await old.cluster("MYID"))
        new_id = text(await new.cluster("MYID"))
        await new.cluster("SETSLOT", slot, "IMPORTING", old_id)
        await old.cluster("SETSLOT", slot, "MIGRATING", new_id)
    for port in sorted({port for _, _, port in cluster.masters_by_slot_range()}):
        async with Redis(port=port) as node:
            await node.cluster("SETSLOT", slot, "NODE", new_id)


async def _publish_until(client: RedisCluster, channel: str, seen: list[bytes]) -> None:
    """Publishes until a sink has seen a message (the slot may still be moving)."""
    async with asyncio.timeout(30):
        while not seen:
            with contextlib.suppress(RedisError, RedisClusterException):  # failing over
                await client.spublish(channel, b"hello")
            await asyncio.sleep(0.05)


async def _publish_numbered(client: RedisCluster, channel: str, sent: list[bytes]) -> None:
    """Publishes 0, 1, 2... to `channel` until cancelled, keeping those Redis accepted."""
    for n in range(1_000_000):
        data = str(n).encode()
        with contextlib.suppress(RedisError, RedisClusterException):
            await client.spublish(channel, data)
            sent.append(data)
        await asyncio.sleep(0.02)


async def _shard_subscribers(port: int, channel: str) -> int:
    async with Redis(port=port) as node:
        return int((await node.pubsub_shardnumsub(channel))[0][1])


async def _manual_failover(cluster: RedisClusterServer, master_port: int) -> int:
    """Promotes a replica of the master on `master_port` (which stays up, as a replica) and
    waits until the old master knows; returns the new master's port."""
    replica = cluster.replica_ports_of(master_port)[0]
    async with Redis(port=replica) as node:
        await node.cluster("FAILOVER")
    async with Redis(port=master_port) as old, asyncio.timeout(30):
        while (await old.role())[0] != b"slave":  # noqa: ASYNC110 - a Redis query
            await asyncio.sleep(0.05)
    return replica


async def test_a_failover_moves_consumers_to_the_new_master_and_ends_only_its_watchers(
    cluster: RedisClusterServer, client: RedisCluster, hub: Hub[bytes]
) -> None:
    (victim_port, victim), (_, other), (_, third) = _one_channel_per_master(cluster)
    seen: dict[str, list[bytes]] = {channel: [] for channel in (victim, other, third)}
    for channel, sink in seen.items():
        await hub.add(channel, sink.append)
    told: list[Exception] = []
    watched: list[bytes] = []
    await hub.add(victim, watched.append, on_lost=told.append)
    await hub.add(third, watched.append, on_lost=told.append)  # one watcher, two masters
    other_told: list[Exception] = []
    await hub.add(other, lambda _: None, on_lost=other_told.append)
    for channel, sink in seen.items():  # one hub delivers every master's channels
        await _publish_until(client, channel, sink)

    seen[other].clear()
    sent: list[bytes] = []
    publisher = asyncio.create_task(_publish_numbered(client, other, sent))
    await until(lambda: len(sent) >= 5 and seen[other][-1:] == sent[-1:], timeout=15.0)
    await asyncio.to_thread(cluster.kill, victim_port)
    await until(lambda: bool(told), timeout=15.0)
    assert isinstance(told[0], Unavailable)
    new_port = await asyncio.to_thread(cluster.wait_failover, victim_port)

    seen[victim].clear()
    seen[third].clear()
    watched.clear()
    await _publish_until(client, victim, seen[victim])  # the consumer followed the slot
    await _publish_until(client, third, seen[third])
    assert watched == []  # the watcher was dropped from both: its call ended and it reconnects
    assert told == told[:1]
    assert await _shard_subscribers(new_port, victim) == 1

    publisher.cancel()
    await asyncio.gather(publisher, return_exceptions=True)
    await until(lambda: seen[other][-1:] == sent[-1:], timeout=15.0)
    numbered = [data for data in seen[other] if data != b"hello"]
    assert numbered == sent  # the other master's channel lost nothing throughout
    assert other_told == []

    async with asyncio.timeout(2):
        await hub.stop()
    assert await _shard_subscribers(new_port, victim) == 0


async def test_a_slot_moved_by_a_manual_failover_is_followed(
    cluster: RedisClusterServer, client: RedisCluster, hub: Hub[bytes]
) -> None:
    [(port, channel), *_] = _one_channel_per_master(cluster)
    consumer: list[bytes] = []
    told: list[Exception] = []
    await hub.add(channel, consumer.append)
    await hub.add(channel, lambda _: None, on_lost=told.append)
    await _publish_until(client, channel, consumer)

    new_port = await _manual_failover(cluster, port)
    # The old master, alive, unsubscribed the hub: its watchers may have missed messages.
    await until(lambda: bool(told), timeout=15.0)
    consumer.clear()
    await _publish_until(client, channel, consumer)
    # On the new master, or on the old one (now its replica, in the same shard: Redis delivers
    # there too) when the hub read a slot map from a node that had not heard of the failover.
    subscribers = [await _shard_subscribers(p, channel) for p in (new_port, port)]
    assert sum(subscribers) == 1


async def test_a_slot_migrated_to_another_master_is_followed(
    cluster: RedisClusterServer, hub: Hub[bytes]
) -> None:
    [(source, moving), (target, _), _] = _one_channel_per_master(cluster)
    staying, late = _channels_on(cluster, source, count=2, besides=moving)
    seen: dict[str, list[bytes]] = {moving: [], staying: []}
    told: list[Exception] = []
    staying_told: list[Exception] = []
    await hub.add(moving, lambda _: None, on_lost=told.append)
    await hub.add(staying, lambda _: None, on_lost=staying_told.append)
    for channel, sink in seen.items():
        await hub.add(channel, sink.append)
    # Publishing through a client of its own, so that the hub's slot map stays as it read it.
    async with RedisCluster(host="127.0.0.1", port=target) as publisher:
        for channel, sink in seen.items():
            await _publish_until(publisher, channel, sink)

        await _migrate(cluster, _slot(moving), target)
        await until(lambda: bool(told), timeout=15.0)  # the source unsubscribed the hub
        for sink in seen.values():
            sink.clear()
        for channel, sink in seen.items():
            await _publish_until(publisher, channel, sink)
        assert await _shard_subscribers(target, moving) == 1
        assert staying_told == []  # the source's other slots carried on

        # A channel of a slot that moved since the hub last read the slot map: its SSUBSCRIBE
        # goes to the old master, which answers MOVED.
        await _migrate(cluster, _slot(late), target)
        late_told: list[Exception] = []
        late_seen: list[bytes] = []
        await hub.add(late, lambda _: None, on_lost=late_told.append)
        await hub.add(late, late_seen.append)
        await _publish_until(publisher, late, late_seen)
        assert late_told  # its subscription had not taken: it may have missed messages
        assert await _shard_subscribers(target, late) == 1
        assert staying_told == []


async def test_stop_ends_promptly_while_a_master_is_down(
    cluster: RedisClusterServer, hub: Hub[bytes]
) -> None:
    [(port, channel), *_] = _one_channel_per_master(cluster)
    told: list[Exception] = []
    await hub.add(channel, lambda _: None)
    await hub.add(channel, lambda _: None, on_lost=told.append)
    await asyncio.to_thread(cluster.kill, port)
    await until(lambda: bool(told), timeout=15.0)  # the hub is retrying now
    async with asyncio.timeout(1):
        await hub.stop()
