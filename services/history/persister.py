"""Write-behind persistence: a consumer group on the ingest log COPYs batches into PostGIS."""

from __future__ import annotations

import asyncio
import contextlib
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
from services.live.names import INGEST_DEAD_LETTERS, PERSIST_GROUP
from services.observability.metrics import (
    PERSIST_BATCH_ROWS,
    PERSIST_DEAD_LETTERS,
    PERSIST_LAG,
    PERSIST_ROWS,
)
from services.server.failures import unavailable

log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]
# An entry that can never be stored: its id, its fields and why.
Poisoned = tuple[bytes, dict[bytes, bytes], str]
# Entries decoded into fixes, by entry id.
Decoded = list[tuple[bytes, DriverLocation]]

RETRY_START_S = 0.2
# At most this long between tries while a store is away: healing is within about a second of
# its return, at the cost of one failed try a second meanwhile.
RETRY_MAX_S = 1.0
# Keys of the fixes this process committed lately, so the acks of its own streams need not ask
# PostgreSQL about them (the oldest are forgotten first).
COMMITTED_KEPT = 100_000
# The dead-letter stream keeps about this many entries (the oldest go first).
DEAD_LETTERS_KEPT = 10_000


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


def fix_key(location: DriverLocation) -> tuple[str, datetime, int]:
    """The key of the row `fix_row(location)` makes: (driver_id, recorded_at, seq)."""
    recorded_at = _datetime(location.recorded_at.seconds, location.recorded_at.nanos)
    return location.driver_id, recorded_at, location.seq


def _datetime(seconds: int, nanos: int) -> datetime:
    return datetime.fromtimestamp(seconds + nanos / 1e9, tz=UTC)


class Persister:
    """Reads one partition's ingest log as one consumer of the group; acknowledges entries only
    after commit (a LocationService runs one per partition).

    It heals by itself: with Redis or PostgreSQL away it waits and goes on, a Redis that came
    back empty gets its consumer group again, and an entry that cannot be stored (undecodable, or
    refused by PostgreSQL for its content) goes to the dead-letter stream instead of blocking
    every driver behind it."""

    def __init__(
        self,
        ingest: IngestLog,
        history: HistoryStore,
        *,
        batch_size: int,
        max_age_s: float,
        claim_idle_s: float,
        drain_timeout_s: float = 10.0,
        committed_here: dict[tuple[str, datetime, int], None] | None = None,
    ) -> None:
        self._redis: Redis = ingest.redis
        self._ingest = ingest
        self._history = history
        self._batch_size = batch_size
        self._max_age_s = max_age_s
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._drain_timeout_s = drain_timeout_s
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        # Entries read and not yet committed, by entry id (a re-read after a failure replaces).
        self._batch: dict[bytes, dict[bytes, bytes]] = {}
        self._batch_started = 0.0
        self._stopping = asyncio.Event()
        self.committed_rows = 0
        # Fixes this persister committed lately (an ordered set): as good as PostgreSQL's word.
        # Shared by the persisters of one process when given.
        self.committed_here = {} if committed_here is None else committed_here
        self.dead_letters = 0
        self.last_lag_s = 0.0

    @property
    def partition(self) -> int:
        return self._ingest.partition

    async def run(self) -> None:
        """Consumes until stop(), then drains what is left within drain_timeout_s."""
        delay = RETRY_START_S
        while not self._stopping.is_set():
            try:
                await self._consume()
            except Exception as exc:
                _log_failure(exc, len(self._batch), delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, RETRY_MAX_S)
        await self._drain()

    async def stop(self) -> None:
        self._stopping.set()

    async def _consume(self) -> None:
        """One run of the consumer from its (re)start; raises when Redis or PostgreSQL fails."""
        await self._ingest.ensure_group()  # again after Redis came back empty
        await self._take(await self._read("0"))  # our own unacknowledged entries
        next_claim = 0.0
        while not self._stopping.is_set():
            if len(self._batch) >= self._batch_size:
                await self._flush()  # a full batch first: memory stays bounded while it fails
            if time.monotonic() >= next_claim:
                await self._take(await self._claim_stale())
                next_claim = time.monotonic() + self._claim_idle_ms / 2000
            if self._batch:
                # A batch is open: let it fill until it is due, then take all that waits in one
                # read (not one blocking read per fix, which cost a round trip each).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._block_ms() / 1000)
                await self._take(await self._read(">"))
            else:
                await self._take(await self._read(">", block_ms=self._block_ms()))
            if self._due():
                await self._flush()

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
            PERSIST_GROUP, self.consumer, {self._ingest.stream: start}, count=room, block=block_ms
        )
        # An entry trimmed from the log comes back with no fields; there is nothing to store.
        return [entry for _, entries in reply for entry in entries if entry[1]] if reply else []

    async def _claim_stale(self) -> list[Entry]:
        """Takes over entries a crashed consumer read but never acknowledged."""
        reply: Any = await self._redis.xautoclaim(
            self._ingest.stream,
            PERSIST_GROUP,
            self.consumer,
            self._claim_idle_ms,
            count=self._batch_size,
        )
        return [entry for entry in reply[1] if entry[1]]

    async def _take(self, entries: list[Entry]) -> None:
        if entries and not self._batch:
            self._batch_started = time.monotonic()
        self._batch.update(entries)
        if len(self._batch) >= self._batch_size:
            await self._flush()

    async def _flush(self) -> None:
        """Commits the batch, then acknowledges it; raises (keeping the batch) on a failure."""
        if not self._batch:
            return
        decoded, poisoned = _decode(self._batch)
        rows = [fix_row(location) for _, location in decoded]
        try:
            await self._history.insert_fixes(rows)
        except Exception as exc:
            if unavailable(exc) is not None:
                raise
            # PostgreSQL refused the batch for its content: find the rows it refuses.
            decoded, refused = await self._insert_one_by_one(decoded)
            poisoned += refused
        await self._dead_letter(poisoned)
        # Acknowledge only after the commit: a crash before this line re-delivers (idempotently).
        await self._redis.xack(self._ingest.stream, PERSIST_GROUP, *self._batch)
        self._committed([location for _, location in decoded])
        self._batch = {}
        try:
            below = await self._ingest.committed_below()
            if below is not None:
                await self._ingest.trim(below)
        except Exception as exc:  # trimming is housekeeping; the next flush trims
            log.info("could not trim the ingest log (%s)", exc)

    async def _insert_one_by_one(self, decoded: Decoded) -> tuple[Decoded, list[Poisoned]]:
        stored: Decoded = []
        refused: list[Poisoned] = []
        for entry_id, location in decoded:
            try:
                await self._history.insert_fixes([fix_row(location)])
            except Exception as exc:
                if unavailable(exc) is not None:
                    raise
                refused.append((entry_id, self._batch[entry_id], f"PostgreSQL refused it: {exc}"))
            else:
                stored.append((entry_id, location))
        return stored, refused

    async def _dead_letter(self, poisoned: list[Poisoned]) -> None:
        """Moves entries that can never be stored to the dead-letter stream, where people can
        read them (XRANGE) and re-send them; each is logged and counted."""
        if not poisoned:
            return
        pipe = self._redis.pipeline(transaction=False)
        for entry_id, fields, reason in poisoned:
            payload = fields.get(b"p", b"")
            entry: dict[Any, Any] = {
                "entry": entry_id,
                "p": payload,
                "reason": reason[:500],
            }
            pipe.xadd(INGEST_DEAD_LETTERS, entry, maxlen=DEAD_LETTERS_KEPT, approximate=True)
            log.error(
                "ingest entry %s moved to %s: %s", entry_id.decode(), INGEST_DEAD_LETTERS, reason
            )
        await pipe.execute()
        self.dead_letters += len(poisoned)
        PERSIST_DEAD_LETTERS.inc(len(poisoned))

    def _committed(self, locations: list[DriverLocation]) -> None:
        self.committed_rows += len(locations)
        if not locations:
            return
        remembered = self.committed_here
        for location in locations:
            remembered[fix_key(location)] = None
        while len(remembered) > COMMITTED_KEPT:
            del remembered[next(iter(remembered))]
        now = time.time()
        accepted = [loc.received_at.seconds + loc.received_at.nanos / 1e9 for loc in locations]
        for at in accepted:
            PERSIST_LAG.observe(now - at)
        PERSIST_ROWS.inc(len(locations))
        PERSIST_BATCH_ROWS.observe(len(locations))
        self.last_lag_s = now - min(accepted)

    async def _drain(self) -> None:
        """At shutdown: reads until the log has nothing new for us, flushing as batches fill,
        for at most drain_timeout_s; what is left stays pending for another persister."""
        try:
            async with asyncio.timeout(self._drain_timeout_s):
                while True:
                    try:
                        entries = await self._read(">")
                        if not entries:
                            await self._flush()
                            return
                        await self._take(entries)
                    except Exception as exc:
                        _log_failure(exc, len(self._batch), RETRY_START_S)
                        await asyncio.sleep(RETRY_START_S)
        except TimeoutError:
            log.warning(
                "shutdown: %d fixes not committed within %g s stay pending for another persister",
                len(self._batch),
                self._drain_timeout_s,
            )


def _decode(
    batch: dict[bytes, dict[bytes, bytes]],
) -> tuple[list[tuple[bytes, DriverLocation]], list[Poisoned]]:
    decoded, poisoned = [], []
    for entry_id, fields in batch.items():
        try:
            decoded.append((entry_id, DriverLocation.FromString(fields[b"p"])))
        except Exception as exc:  # DecodeError, or no payload field: never storable
            poisoned.append((entry_id, fields, f"undecodable fix ({type(exc).__name__})"))
    return decoded, poisoned


def _log_failure(exc: Exception, pending: int, delay_s: float) -> None:
    failure = unavailable(exc)
    if failure is not None:
        log.warning(
            "persistence waits: %s (%d fixes pending); again in %.1f s", failure, pending, delay_s
        )
    else:
        log.exception("persistence failed (%d fixes pending); again in %.1f s", pending, delay_s)
