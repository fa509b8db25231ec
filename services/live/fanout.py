"""In-process fan-out: one Redis subscription per channel, and mailboxes that conflate."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from services.domain.errors import Unavailable
from services.live.names import HUB_KEEPALIVE_CHANNEL
from services.live.replies import text
from services.observability.metrics import DROPPED_KEYED, DROPPED_LATEST
from services.server.failures import Dependency, message, raise_if_cancelling

log = logging.getLogger(__name__)

T = TypeVar("T")
Sink = Callable[[T], None]
# Told why a watcher's messages stopped (the connection to Redis was lost).
Lost = Callable[[Exception], None]


class Hub(Generic[T]):
    """Holds one pub/sub connection; decodes each message once and hands it to every sink.

    A sink that raises is logged and skipped, never stopping delivery to the others. When the
    connection to Redis is lost, the sinks added with `on_lost` (watch streams) are told and
    dropped, so their callers end with UNAVAILABLE instead of waiting in silence; the others
    (internal consumers) stay, and redis-py subscribes again when Redis is back."""

    def __init__(self, redis: Redis, decode: Callable[[bytes], T]) -> None:
        self._redis = redis
        self._decode = decode
        self._pubsub: PubSub | None = None
        self._sinks: dict[str, set[Sink[T]]] = {}
        self._on_lost: dict[Sink[T], Lost] = {}
        self._patterns: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Set when the connection was lost: the next read unsubscribes what nobody watches now.
        self._resync = False

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(HUB_KEEPALIVE_CHANNEL)
        self._reader = asyncio.create_task(self._read(), name="fanout-reader")

    async def stop(self) -> None:
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pubsub:
            await self._pubsub.aclose()

    async def add(
        self, channel: str, sink: Sink[T], *, pattern: bool = False, on_lost: Lost | None = None
    ) -> None:
        """Delivers `channel` (or a glob pattern) to `sink`; subscribes on the first sink. When
        subscribing fails the sink is not kept (the error goes to the caller), so the next
        watcher of the channel subscribes afresh."""
        async with self._lock:
            sinks = self._sinks.setdefault(channel, set())
            first = not sinks
            sinks.add(sink)
            if on_lost is not None:
                self._on_lost[sink] = on_lost
            if not first or self._pubsub is None:
                return
            try:
                if pattern:
                    await self._pubsub.psubscribe(channel)
                    self._patterns.add(channel)
                else:
                    await self._pubsub.subscribe(channel)
            except BaseException:
                self._forget(channel, sink)
                raise

    async def remove(self, channel: str, sink: Sink[T]) -> None:
        """Stops delivering to `sink`; unsubscribes when the channel has no sink left."""
        async with self._lock:
            if not self._forget(channel, sink) or self._pubsub is None:
                return
            try:
                if channel in self._patterns:
                    self._patterns.discard(channel)
                    await self._pubsub.punsubscribe(channel)
                else:
                    await self._pubsub.unsubscribe(channel)
            except RedisError as exc:
                # Redis is away: the subscription went with the connection anyway.
                log.info("unsubscribing %r while Redis is away (%s)", channel, exc)

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

    def subscribed_channels(self) -> int:
        return len(self._sinks)

    async def _read(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                # Blocking, with no timeout of its own per message: a timeout is an asyncio timer
                # set up and torn down for every message, which cost more than the message.
                # The connection's keepalive and Redis's own closing of it end a dead read.
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=None
                )
            except (RedisError, OSError) as exc:
                raise_if_cancelling(exc)  # stop() cancelled the read: end, do not reconnect
                # redis-py reconnects and subscribes again on the next read; keep the reader alive.
                log.warning("fan-out subscription lost (%s); reconnecting", exc)
                self._lost()
                self._resync = True
                await asyncio.sleep(0.5)
                continue
            if self._resync:  # the first read after a reconnect
                await self._drop_unwatched()
            if message is not None:
                self._deliver(message)

    async def _drop_unwatched(self) -> None:
        """redis-py subscribed again to every channel it knew, those whose watchers ended with
        the lost connection included: unsubscribe those, or their messages would keep coming."""
        assert self._pubsub is not None
        async with self._lock:
            known = set(self._sinks) | {HUB_KEEPALIVE_CHANNEL}
            channels = [c for c in map(text, self._pubsub.channels) if c not in known]
            patterns = [p for p in map(text, self._pubsub.patterns) if p not in known]
            self._patterns &= set(self._sinks)
            try:
                if channels:
                    await self._pubsub.unsubscribe(*channels)
                if patterns:
                    await self._pubsub.punsubscribe(*patterns)
            except RedisError as exc:  # lost again: the next reconnect tries again
                log.info("unsubscribing unwatched channels failed (%s)", exc)
                return
            self._resync = False

    def _lost(self) -> None:
        """Tells every watcher that messages may have been missed; their calls end."""
        lost, self._on_lost = self._on_lost, {}
        for sink, tell in lost.items():
            for sinks in self._sinks.values():
                sinks.discard(sink)
            tell(Unavailable(message(Dependency.REDIS)))
        self._sinks = {channel: sinks for channel, sinks in self._sinks.items() if sinks}

    def _deliver(self, message: dict[str, Any]) -> None:
        key = message["pattern"] if message["type"] == "pmessage" else message["channel"]
        sinks = self._sinks.get(key.decode() if isinstance(key, bytes) else key)
        if not sinks:
            return
        try:
            item = self._decode(message["data"])
        except Exception:  # a foreign publisher on our channel must not stop the reader
            log.exception("undecodable message on %r dropped", key)
            return
        for sink in tuple(sinks):
            try:
                sink(item)
            except Exception:  # one broken sink must not stop delivery to the others
                log.exception("a fan-out sink on %r failed; the others still get the message", key)


class Latest(Generic[T]):
    """A mailbox of the newest `depth` items: a reader that keeps up loses nothing, a slow
    reader gets the newest items, never a growing backlog (the oldest are dropped)."""

    __slots__ = ("_items", "_ready", "_failure", "dropped")

    def __init__(self, depth: int = 1) -> None:
        self._items: deque[T] = deque(maxlen=depth)
        self._ready = asyncio.Event()
        self._failure: Exception | None = None
        self.dropped = 0

    def put(self, item: T) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
            DROPPED_LATEST.inc()
        self._items.append(item)
        self._ready.set()

    def fail(self, error: Exception) -> None:
        """Makes the reader's next get() raise `error` (the hub lost its connection)."""
        self._failure = error
        self._ready.set()

    async def get(self) -> T:
        await self._ready.wait()
        if self._failure is not None:
            raise self._failure
        item = self._items.popleft()
        if not self._items:
            self._ready.clear()
        return item


class KeyedLatest(Generic[T]):
    """A mailbox conflated per key (per driver), releasing each key at most once per interval."""

    __slots__ = (
        "_pending",
        "_last_sent",
        "_ready",
        "_interval",
        "_clock",
        "_failure",
        "dropped",
        "_drops",
    )

    def __init__(
        self, interval_s: float, clock: Callable[[], float], *, count_drops: bool = True
    ) -> None:
        self._pending: dict[str, T] = {}
        self._last_sent: dict[str, float] = {}
        self._ready = asyncio.Event()
        self._interval = interval_s
        self._clock = clock
        self._failure: Exception | None = None
        self.dropped = 0
        # Watchers' drops are a metric (a slow reader); an internal work queue's are by design.
        self._drops = DROPPED_KEYED if count_drops else None

    def put(self, key: str, item: T) -> None:
        if key in self._pending:
            self.dropped += 1
            if self._drops is not None:
                self._drops.inc()
        self._pending[key] = item
        self._ready.set()

    def put_if_absent(self, key: str, item: T) -> None:
        """Adds an item unless a newer one for the key is already waiting."""
        if key not in self._pending:
            self.put(key, item)

    def fail(self, error: Exception) -> None:
        """Makes the reader's next get_batch() raise `error` (the hub lost its connection)."""
        self._failure = error
        self._ready.set()

    async def get_batch(self) -> list[T]:
        """Waits for items, then returns those whose key may be sent now (at least one)."""
        while True:
            await self._ready.wait()
            if self._failure is not None:
                raise self._failure
            now = self._clock()
            due = [
                k for k in self._pending if now - self._last_sent.get(k, -1e18) >= self._interval
            ]
            if due:
                batch = [self._pending.pop(k) for k in due]
                for k in due:
                    self._last_sent[k] = now
                if not self._pending:
                    self._ready.clear()
                self._forget_older_than(now)
                return batch
            wait = min(self._interval - (now - self._last_sent[k]) for k in self._pending)
            await asyncio.sleep(max(wait, 0.001))

    def _forget_older_than(self, now: float) -> None:
        # Keys silent for a whole interval may send at once again: forget them, bounding memory.
        if len(self._last_sent) > 2 * len(self._pending) + 64:
            cutoff = now - self._interval
            self._last_sent = {k: t for k, t in self._last_sent.items() if t > cutoff}
