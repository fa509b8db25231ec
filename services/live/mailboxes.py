"""Mailboxes between the fan-out hub's reader and a watcher: they conflate, so a slow reader
gets the newest items rather than a growing backlog."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from services.observability.metrics import DROPPED_KEYED, DROPPED_LATEST

T = TypeVar("T")


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


class Backlog(Latest[T]):
    """A mailbox that never drops: a reader `depth` items behind is failed with `overflow()`
    instead (a watcher that can resume, and must not silently lose items). The first failure
    stands."""

    __slots__ = ("_overflow",)

    def __init__(self, depth: int, overflow: Callable[[], Exception]) -> None:
        super().__init__(depth)
        self._overflow = overflow

    def put(self, item: T) -> None:
        if len(self._items) == self._items.maxlen:
            self.fail(self._overflow())
            return
        super().put(item)

    def fail(self, error: Exception) -> None:
        if self._failure is None:
            super().fail(error)


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
