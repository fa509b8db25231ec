"""Keeps a replica's in-memory ZoneIndex in step with PostGIS: reload on every announced change,
and poll a revision number as a safety net for lost announcements."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from services.geo.zone_index import Zone, ZoneIndex
from services.live.names import ZONE_CHANGES_CHANNEL
from services.server.failures import raise_if_cancelling

log = logging.getLogger(__name__)

# How often a cache reading a replica asks for an announced change it has not seen yet.
REPLICA_POLL_S = 0.05

# How long the listener waits for a message before looping (and noticing a stop).
_LISTEN_TIMEOUT_S = 1.0
_RECONNECT_DELAY_S = 0.5


class ZoneSource(Protocol):
    """What the cache reads: GeofenceStore, or a stand-in in unit tests."""

    async def revision(self) -> int: ...

    async def snapshot(self) -> tuple[int, list[Zone]]: ...


async def announce_change(redis: Redis) -> None:
    """Tells every replica that zones changed (call after the change is committed)."""
    await redis.publish(ZONE_CHANGES_CHANNEL, b"1")


class ZoneCache:
    """`.index` is the current ZoneIndex; a reload builds a new one and swaps it in whole, so
    readers never see a half-built index and need no lock."""

    def __init__(
        self, store: ZoneSource, redis: Redis, refresh_s: float, replica_wait_s: float = 0.0
    ) -> None:
        self._store = store
        self._redis = redis
        self._refresh_s = refresh_s
        # When `store` reads a streaming replica: how long, after a change is announced, to
        # keep asking for it while the replica has not replayed it yet (then the poll takes over).
        self._replica_wait_s = replica_wait_s
        self._index = ZoneIndex()
        self._revision: int | None = None
        # Set by an announcement; many announcements in a burst cost one reload.
        self._dirty = asyncio.Event()
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def index(self) -> ZoneIndex:
        return self._index

    @property
    def revision(self) -> int | None:
        """The store revision the index was built from; None before the first load."""
        return self._revision

    async def start(self) -> None:
        """Loads the zones and keeps them in step until stop(); a failed first load raises."""
        # Subscribe before loading, so a change committed during the load is not missed.
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(ZONE_CHANGES_CHANNEL)
        try:
            await self.refresh()
        except BaseException:
            await self._pubsub.aclose()
            self._pubsub = None
            raise
        self._tasks = [
            asyncio.create_task(self._listen(self._pubsub), name="zone-cache-listen"),
            asyncio.create_task(self._keep_in_step(), name="zone-cache-reload"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None

    async def refresh(self) -> None:
        """Reloads every zone now and swaps the new index in; raises if the store fails."""
        revision, zones = await self._store.snapshot()
        self._index = ZoneIndex(zones)
        self._revision = revision
        log.info("zone index loaded: %d zones at revision %d", len(zones), revision)

    async def _refresh_if_changed(self) -> bool:
        if await self._store.revision() != self._revision:
            await self.refresh()
            return True
        return False

    async def _refresh_once_changed(self) -> None:
        """After an announcement: a replica may lag the primary that committed the change, so
        the revision is asked again every REPLICA_POLL_S until it moves or the wait is over."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self._replica_wait_s
        while not await self._refresh_if_changed():
            if loop.time() >= until:
                return  # the periodic check will find it
            await asyncio.sleep(REPLICA_POLL_S)

    async def _keep_in_step(self) -> None:
        while True:
            announced = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self._refresh_s)
                announced = True
            self._dirty.clear()
            try:
                if announced and self._replica_wait_s > 0:
                    await self._refresh_once_changed()
                else:
                    await self._refresh_if_changed()
            except (
                Exception
            ) as exc:  # the old index keeps serving; the next tick or message retries
                raise_if_cancelling(exc)
                log.exception("zone index reload failed; keeping the previous index")

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            try:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_LISTEN_TIMEOUT_S
                )
            except (RedisError, OSError) as exc:
                raise_if_cancelling(exc)
                # redis-py resubscribes on the next read; what was published meanwhile is lost,
                # so check the revision as soon as the subscription is back.
                log.warning("zone change subscription lost (%s); reconnecting", exc)
                self._dirty.set()
                await asyncio.sleep(_RECONNECT_DELAY_S)
                continue
            if message is not None:
                self._dirty.set()
