"""Keeps a replica's in-memory ZoneIndex in step with PostGIS: reload on every announced change,
and poll a revision number as a safety net for lost announcements."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from redis.asyncio import Redis

from services.geo.zone_index import Zone, ZoneIndex
from services.live.fanout import Hub
from services.live.names import ZONE_CHANGES_CHANNEL
from services.server.failures import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)

# How often a cache reading a replica asks for an announced change it has not seen yet.
REPLICA_POLL_S = 0.05

# How often a lost subscription is tried again.
_RESUBSCRIBE_S = 0.5


class ZoneSource(Protocol):
    """What the cache reads: GeofenceStore, or a stand-in in unit tests."""

    async def revision(self) -> int: ...

    async def snapshot(self) -> tuple[int, list[Zone]]: ...


async def announce_change(redis: Redis) -> None:
    """Tells every replica that zones changed (call after the change is committed)."""
    await redis.spublish(ZONE_CHANGES_CHANNEL, b"1")


class ZoneCache:
    """`.index` is the current ZoneIndex; a reload builds a new one and swaps it in whole, so
    readers never see a half-built index and need no lock."""

    def __init__(
        self, store: ZoneSource, hub: Hub[bytes], refresh_s: float, replica_wait_s: float = 0.0
    ) -> None:
        self._store = store
        self._hub = hub
        self._refresh_s = refresh_s
        # When `store` reads a streaming replica: how long, after a change is announced, to
        # keep asking for it while the replica has not replayed it yet (then the poll takes over).
        self._replica_wait_s = replica_wait_s
        self._index = ZoneIndex()
        self._revision: int | None = None
        # Set by an announcement; many announcements in a burst cost one reload.
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = False

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
        await self._subscribe()
        try:
            await self.refresh()
        except BaseException:
            await self._unsubscribe()
            raise
        self._tasks = [asyncio.create_task(self._keep_in_step(), name="zone-cache-reload")]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        await self._unsubscribe()

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

    def _announced(self, _: bytes) -> None:
        self._dirty.set()

    async def _subscribe(self) -> None:
        await self._hub.add(ZONE_CHANGES_CHANNEL, self._announced, on_lost=self._lost)
        self._subscribed = True

    async def _unsubscribe(self) -> None:
        if self._subscribed:
            self._subscribed = False
            await self._hub.remove(ZONE_CHANGES_CHANNEL, self._announced)

    def _lost(self, _: Exception) -> None:
        """The subscription went with Redis: what was announced meanwhile is lost, so check the
        revision now, and again once subscribed anew."""
        self._subscribed = False
        self._dirty.set()
        self._tasks.append(asyncio.create_task(self._resubscribe(), name="zone-cache-resub"))

    async def _resubscribe(self) -> None:
        while True:
            try:
                await self._subscribe()
            except Exception as exc:
                raise_if_cancelling(exc)
                await asyncio.sleep(_RESUBSCRIBE_S)
                continue
            self._dirty.set()
            return
