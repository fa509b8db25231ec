"""In-process fan-out: one sharded Redis subscription per channel, and mailboxes that conflate."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import MovedError, RedisClusterException, RedisError

from services.domain.errors import Unavailable
from services.live.names import HUB_KEEPALIVE_CHANNEL
from services.live.replies import text
from services.server.failures import Dependency, cancel_and_wait, message, raise_if_cancelling

log = logging.getLogger(__name__)

T = TypeVar("T")
Sink = Callable[[T], None]
# Told why a watcher's messages stopped (the connection to Redis was lost).
Lost = Callable[[Exception], None]

# The one node of a single Redis.
_SINGLE = "redis"
# How often a lost node is tried again, and a cluster's slot map read again at most.
_RETRY_S = 0.5
# Redis away, or a cluster's slot map not readable or not covering a channel's slot.
_FAILURES = (RedisError, RedisClusterException, OSError)


class _Node:
    """One Redis node's pub/sub connection and the task reading it."""

    __slots__ = ("name", "client", "pubsub", "reader", "resync", "away")

    def __init__(self, name: str, client: Redis, pubsub: PubSub) -> None:
        self.name = name
        self.client = client
        self.pubsub = pubsub
        self.reader: asyncio.Task[None] | None = None
        # Set when the connection was lost, or a channel here lost its last watcher: the next
        # read unsubscribes what nobody watches here.
        self.resync = False
        # Set from a lost connection to the next read (so an outage is logged once).
        self.away = False


class Hub(Generic[T]):
    """Subscribes each channel once (SSUBSCRIBE: sharded pub/sub) on the Redis node serving it;
    decodes each message once and hands it to every sink.

    A single Redis is one node. On a Redis Cluster the hub keeps one plain pub/sub connection,
    each with its own blocking reader, per master serving a subscribed channel's slot (not
    redis-py's ClusterPubSub, which polls its nodes in turn with a timeout).

    A sink that raises is logged and skipped, never stopping delivery to the others. When the
    connection to a node is lost, the sinks added with `on_lost` (watch streams) on that node's
    channels are told and dropped (from all their channels), so their callers end with
    UNAVAILABLE instead of waiting in silence; watchers on other nodes carry on. The other sinks
    (internal consumers) stay: every half second the hub tries the node again and, on a
    cluster, reads the slot map again and subscribes each of the node's channels on the master
    serving it now (a replica promoted after its master died); a node left with no channel is
    closed. A slot that moves away from a live master (a manual failover, resharding) ends the
    watchers of its channels likewise, and they are subscribed where it went. Channels nobody
    watches any more are not subscribed again."""

    def __init__(self, redis: Redis | RedisCluster, decode: Callable[[bytes], T]) -> None:
        self._redis = redis
        self._decode = decode
        self._sinks: dict[str, set[Sink[T]]] = {}
        self._on_lost: dict[Sink[T], Lost] = {}
        self._nodes: dict[str, _Node] = {}
        # The node each watched channel is subscribed on.
        self._node_of: dict[str, _Node] = {}
        self._lock = asyncio.Lock()
        self._running = False
        self._refreshed_at = float("-inf")

    async def start(self) -> None:
        if isinstance(self._redis, RedisCluster):
            await self._redis.initialize()
        else:
            await self._open(_SINGLE, self._redis)
        self._running = True

    async def stop(self) -> None:
        self._running = False
        while self._nodes:  # a reader cancelled while moving channels may have opened a node
            nodes = list(self._nodes.values())
            self._nodes.clear()
            await cancel_and_wait(node.reader for node in nodes if node.reader is not None)
            for node in nodes:
                await self._close(node)
        self._node_of.clear()

    async def add(self, channel: str, sink: Sink[T], *, on_lost: Lost | None = None) -> None:
        """Delivers `channel` to `sink`; subscribes on the first sink. When subscribing fails the
        sink is not kept (the error goes to the caller), so the next watcher of the channel
        subscribes afresh."""
        async with self._lock:
            sinks = self._sinks.setdefault(channel, set())
            first = not sinks
            sinks.add(sink)
            if on_lost is not None:
                self._on_lost[sink] = on_lost
            if not first or not self._running:
                return
            try:
                await self._subscribe(channel)
            except BaseException as exc:
                self._forget(channel, sink)
                if isinstance(exc, _FAILURES):
                    await self._refresh()  # its master may have failed over: look again
                raise

    async def remove(self, channel: str, sink: Sink[T]) -> None:
        """Stops delivering to `sink`; unsubscribes when the channel has no sink left."""
        async with self._lock:
            if not self._forget(channel, sink):
                return
            node = self._node_of.pop(channel, None)
            if node is None:
                return
            try:
                await node.pubsub.sunsubscribe(channel)
            except RedisError as exc:
                # The node is away: the subscription went with the connection anyway.
                log.info("unsubscribing %r while %s is away (%s)", channel, node.name, exc)

    def subscribed_channels(self) -> int:
        return len(self._sinks)

    def _forget(self, channel: str, sink: Sink[T]) -> bool:
        """Drops `sink`; True when the channel has no sink left."""
        self._on_lost.pop(sink, None)
        sinks = self._sinks.get(channel)
        if sinks is None:
            return False
        sinks.discard(sink)
        if sinks:
            return False
        del self._sinks[channel]
        return True

    async def _subscribe(self, channel: str) -> None:
        """SSUBSCRIBEs `channel` on the node serving it, opening that node's pub/sub first."""
        if isinstance(self._redis, RedisCluster):
            owner = _owner(self._redis, channel)
            node = self._nodes.get(owner.name) or await self._open(owner.name, _client(owner))
        else:
            node = self._nodes[_SINGLE]
        await node.pubsub.ssubscribe(channel)
        self._node_of[channel] = node

    async def _open(self, name: str, client: Redis) -> _Node:
        """A node's pub/sub, read by its own task, and connected for its life by a subscription
        to the keepalive channel (plain pub/sub: any node of a cluster takes it)."""
        pubsub = client.pubsub()
        node = _Node(name, client, pubsub)
        try:
            await pubsub.subscribe(HUB_KEEPALIVE_CHANNEL)
        except BaseException:
            await self._close(node)
            raise
        node.reader = asyncio.create_task(self._read(node), name=f"fanout-reader {name}")
        self._nodes[name] = node
        return node

    async def _close(self, node: _Node) -> None:
        await node.pubsub.aclose()
        if node.client is not self._redis:  # opened by the hub for a cluster node
            await node.client.aclose()

    async def _read(self, node: _Node) -> None:
        while True:
            try:
                # Blocking, with no timeout of its own per message: a timeout is an asyncio timer
                # set up and torn down for every message, which cost more than the message.
                # The connection's keepalive and Redis's own closing of it end a dead read.
                message = await node.pubsub.get_message(timeout=None)
            except (RedisError, OSError) as exc:
                raise_if_cancelling(exc)  # stop() cancelled the read: end, do not reconnect
                self._failed(node, exc)
                await asyncio.sleep(_RETRY_S)
                if await self._follow_slots(node):
                    return
                # redis-py reconnects and subscribes again on the next read; keep reading.
                continue
            if node.resync:  # the first read after a reconnect (or a watcher's end)
                await self._drop_unwatched(node)
            if message is None:
                continue
            if message["type"] == "smessage":  # the hot path
                self._deliver(message)
                continue
            moved = message["type"] == "sunsubscribe" and self._slot_left(node, message["channel"])
            if moved and await self._follow_slots(node):
                return

    def _failed(self, node: _Node, exc: Exception) -> None:
        """Ends the watchers of what a failed read lost: every channel of `node` when the
        connection went (logged once per outage), those of one slot when our SSUBSCRIBE reached
        a master that no longer serves it (MOVED: the slot map was out of date)."""
        if isinstance(exc, MovedError):
            log.info("%s does not serve slot %d (MOVED); following it", node.name, exc.slot_id)
            moved = [c for c in self._channels_on(node) if key_slot(c.encode()) == exc.slot_id]
            for channel in moved:
                _detach(node.pubsub, channel)
            self._end_watchers(moved)
            return
        if not node.away:
            log.warning("fan-out subscription to %s lost (%s); reconnecting", node.name, exc)
        node.away = node.resync = True
        self._end_watchers(self._channels_on(node))

    def _slot_left(self, node: _Node, raw_channel: bytes | str) -> bool:
        """True when Redis unsubscribed a channel we still watch on `node`: its slot moved to
        another master (a manual failover, resharding), so its watchers may miss messages."""
        channel = text(raw_channel)
        if self._node_of.get(channel) is not node or not isinstance(self._redis, RedisCluster):
            # Our own SUNSUBSCRIBE's reply (or, rarely, one sent just before the channel's
            # next first watcher subscribed again: then its watchers end needlessly).
            return False
        log.info("%s unsubscribed %r: its slot moved", node.name, channel)
        _detach(node.pubsub, channel)
        self._end_watchers([channel])
        return True

    def _end_watchers(self, channels: Iterable[str]) -> None:
        """Tells the watchers of `channels` that messages may have been missed; their calls
        end. A watcher of several channels is dropped from all of them."""
        ended = {sink for c in channels for sink in self._sinks[c] if sink in self._on_lost}
        for sink in ended:
            for sinks in self._sinks.values():
                sinks.discard(sink)
            self._on_lost.pop(sink)(Unavailable(message(Dependency.REDIS)))
        for channel in [channel for channel, sinks in self._sinks.items() if not sinks]:
            del self._sinks[channel]
            # Still subscribed on its node: the next read there unsubscribes it.
            node = self._node_of.pop(channel, None)
            if node is not None:
                node.resync = True

    async def _drop_unwatched(self, node: _Node) -> None:
        """redis-py subscribed again to every shard channel it knew, those whose watchers ended
        with the lost connection included: unsubscribe those, or their messages would keep
        coming."""
        if node.away:
            node.away = False
            log.info("fan-out subscription to %s is back", node.name)
        async with self._lock:
            kept = set(self._channels_on(node))
            unwatched = [c for c in map(text, node.pubsub.shard_channels) if c not in kept]
            try:
                if unwatched:
                    await node.pubsub.sunsubscribe(*unwatched)
            except RedisError as exc:  # lost again: the next reconnect tries again
                log.info("unsubscribing unwatched channels on %s failed (%s)", node.name, exc)
                return
            node.resync = False

    async def _follow_slots(self, node: _Node) -> bool:
        """On a cluster, reads the slot map again and subscribes each of `node`'s channels on
        the master serving it now (or on `node` again, when Redis dropped it there); True, with
        `node` closed, when no channel is left on it."""
        if not isinstance(self._redis, RedisCluster):
            return False  # a single Redis: redis-py subscribes again when it is back
        await self._refresh()
        async with self._lock:
            subscribed = set(map(text, node.pubsub.shard_channels))
            for channel in self._channels_on(node):
                try:
                    if _owner(self._redis, channel).name == node.name and channel in subscribed:
                        continue  # still served there (no failover yet, or it came back)
                    await self._subscribe(channel)
                except _FAILURES as exc:  # tried again after the next failed read
                    raise_if_cancelling(exc)
                    log.debug("moving %r from %s failed (%s)", channel, node.name, exc)
                    continue
                if self._node_of[channel] is not node:
                    _detach(node.pubsub, channel)
            if self._channels_on(node):
                return False
        log.info("fan-out channels of %s moved to the masters serving them now", node.name)
        await self._close(node)
        if self._nodes.get(node.name) is node:
            del self._nodes[node.name]
        return True

    async def _refresh(self) -> None:
        """Reads a cluster's slot map again, at most every _RETRY_S (failures are logged)."""
        loop = asyncio.get_running_loop()
        if not isinstance(self._redis, RedisCluster) or loop.time() - self._refreshed_at < _RETRY_S:
            return
        self._refreshed_at = loop.time()
        try:
            await self._redis.nodes_manager.initialize()
        except _FAILURES as exc:
            raise_if_cancelling(exc)
            log.debug("reading the cluster's slot map failed (%s)", exc)

    def _channels_on(self, node: _Node) -> list[str]:
        return [channel for channel, on in self._node_of.items() if on is node]

    def _deliver(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        sinks = self._sinks.get(channel.decode() if isinstance(channel, bytes) else channel)
        if not sinks:
            return
        try:
            item = self._decode(message["data"])
        except Exception:  # a foreign publisher on our channel must not stop the reader
            log.exception("undecodable message on %r dropped", channel)
            return
        for sink in tuple(sinks):
            try:
                sink(item)
            except Exception:  # one broken sink must not stop delivery to the others
                log.exception(
                    "a fan-out sink on %r failed; the others still get the message", channel
                )


def _owner(cluster: RedisCluster, channel: str) -> ClusterNode:
    """The master serving `channel`'s slot, in the cluster client's slot map."""
    node = cluster.get_node_from_key(channel)
    assert node is not None  # None only when asking for a replica
    return node


def _client(node: ClusterNode) -> Redis:
    """A plain client of one cluster node, with the cluster client's connection settings
    (password, TLS, timeouts): sharded pub/sub needs no cluster routing once on the owner."""
    return Redis.from_pool(
        ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
    )


def _detach(pubsub: PubSub, channel: str) -> None:
    """Forgets `channel` on `pubsub` without a round trip, so that reconnecting does not
    subscribe it there again: its slot is served elsewhere (as redis-py's ClusterPubSub does)."""
    key = pubsub.encoder.decode(pubsub.encoder.encode(channel))
    pubsub.shard_channels.pop(key, None)
    pubsub.pending_unsubscribe_shard_channels.discard(key)
