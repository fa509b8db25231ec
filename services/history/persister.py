"""Write-behind persistence: a consumer group on the ingest log COPYs batches into PostGIS."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from ridemesh.v1.common_pb2 import DriverLocation
from services.history.store import FixRow, HistoryStore
from services.live.ingest import IngestLog
from services.live.names import INGEST_STREAM, PERSIST_GROUP
from services.observability.metrics import PERSIST_BATCH_ROWS, PERSIST_LAG, PERSIST_ROWS

log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]


def fix_row(location: DriverLocation) -> FixRow:
    """The history row for one accepted fix."""
    return FixRow(
        driver_id=location.driver_id,
        latitude=location.position.latitude,
        longitude=location.position.longitude,
        heading_deg=location.heading_deg,
        speed_mps=location.speed_mps,
        accuracy_m=location.accuracy_m,
        recorded_at=_datetime(location.recorded_at.seconds, location.recorded_at.nanos),
        seq=location.seq,
        received_at=_datetime(location.received_at.seconds, location.received_at.nanos),
    )


def _datetime(seconds: int, nanos: int) -> datetime:
    return datetime.fromtimestamp(seconds + nanos / 1e9, tz=UTC)


class Persister:
    """Reads the ingest log as one consumer of the group; acknowledges entries only after commit."""

    def __init__(
        self,
        ingest: IngestLog,
        history: HistoryStore,
        *,
        batch_size: int,
        max_age_s: float,
        claim_idle_s: float,
    ) -> None:
        self._redis: Redis = ingest.redis
        self._ingest = ingest
        self._history = history
        self._batch_size = batch_size
        self._max_age_s = max_age_s
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._batch: list[Entry] = []
        self._batch_started = 0.0
        self._stopping = asyncio.Event()
        self.committed_rows = 0
        self.last_lag_s = 0.0

    async def run(self) -> None:
        """Consumes until stop(); then drains what is left in the log and flushes."""
        await self._ingest.ensure_group()
        await self._take(await self._read("0"))  # our own unacknowledged entries, after a restart
        next_claim = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_claim:
                await self._take(await self._claim_stale())
                next_claim = time.monotonic() + self._claim_idle_ms / 2000
            await self._take(await self._read(">", block_ms=self._block_ms()))
            if self._due():
                await self._flush_with_retry()
        await self._drain()

    async def stop(self) -> None:
        self._stopping.set()

    def _block_ms(self) -> int:
        if not self._batch:
            return max(1, int(self._max_age_s * 1000))
        left = self._max_age_s - (time.monotonic() - self._batch_started)
        return max(1, int(left * 1000))

    def _due(self) -> bool:
        if not self._batch:
            return False
        aged = time.monotonic() - self._batch_started >= self._max_age_s
        return aged or len(self._batch) >= self._batch_size

    async def _read(self, start: str, block_ms: int | None = None) -> list[Entry]:
        room = max(1, self._batch_size - len(self._batch))
        reply: Any = await self._redis.xreadgroup(
            PERSIST_GROUP, self.consumer, {INGEST_STREAM: start}, count=room, block=block_ms
        )
        # An entry trimmed from the log comes back with no fields; there is nothing to store.
        return [entry for _, entries in reply for entry in entries if entry[1]] if reply else []

    async def _claim_stale(self) -> list[Entry]:
        """Takes over entries a crashed consumer read but never acknowledged."""
        reply: Any = await self._redis.xautoclaim(
            INGEST_STREAM, PERSIST_GROUP, self.consumer, self._claim_idle_ms, count=self._batch_size
        )
        return [entry for entry in reply[1] if entry[1]]

    async def _take(self, entries: list[Entry]) -> None:
        if entries and not self._batch:
            self._batch_started = time.monotonic()
        self._batch.extend(entries)
        if len(self._batch) >= self._batch_size:
            await self._flush_with_retry()

    async def _flush_with_retry(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._flush()
                return
            except (TimeoutError, OSError, ConnectionError) as exc:
                log.warning("persisting %d fixes failed (%s); retrying", len(self._batch), exc)
            except Exception as exc:
                log.error("persisting %d fixes failed (%r); retrying", len(self._batch), exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _flush(self) -> None:
        if not self._batch:
            return
        locations = [DriverLocation.FromString(fields[b"p"]) for _, fields in self._batch]
        await self._history.insert_fixes([fix_row(loc) for loc in locations])
        # Acknowledge only after the commit: a crash before this line re-delivers (idempotently).
        await self._redis.xack(INGEST_STREAM, PERSIST_GROUP, *[eid for eid, _ in self._batch])
        self.committed_rows += len(self._batch)
        now = time.time()
        accepted = [loc.received_at.seconds + loc.received_at.nanos / 1e9 for loc in locations]
        for at in accepted:
            PERSIST_LAG.observe(now - at)
        PERSIST_ROWS.inc(len(locations))
        PERSIST_BATCH_ROWS.observe(len(locations))
        self.last_lag_s = now - min(accepted)
        self._batch = []
        below = await self._ingest.committed_below()
        if below is not None:
            await self._ingest.trim(below)

    async def _drain(self) -> None:
        """Reads until the log has nothing new for us, flushing as batches fill."""
        while True:
            entries = await self._read(">")
            if not entries:
                break
            await self._take(entries)
        await self._flush_with_retry()
