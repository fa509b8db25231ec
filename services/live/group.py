"""A replica's share of every partition's ingest log, as one consumer of a group: each fix is
handed to one replica of the group, at least once (a dead replica's unacknowledged entries are
claimed by another after `claim_idle_s`). The handler acknowledges what it handled."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ridemesh.v1.common_pb2 import DriverLocation
from services.domain.validation import fix_order
from services.live.ingest import FOLLOW_EVERY_S, IngestLog, live_payload
from services.live.names import partition_count, partitions
from services.server.failures import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)

# A read returns at most this many entries, and blocks at most this long for one.
READ_COUNT = 512
READ_BLOCK_MS = 2_000
# Entries another replica read and did not acknowledge for this long are taken over (it died).
CLAIM_IDLE_S = 10.0
# A partition's log is read at most this often however many partitions share a replica.
MAX_PACE_S = 0.1

# Handles a batch of (entry id, fields) read from one stream, then acknowledges them.
Handler = Callable[[str, list[Any]], Awaitable[None]]


def newest_fixes(entries: list[Any]) -> dict[str, DriverLocation]:
    """The newest live fix per driver among read entries, as the live state shows it. Entries
    trimmed before they were read, fixes that never reached the live state (late ones), and
    entries that do not decode are skipped: a foreign writer on the log must not stop a group."""
    newest: dict[str, DriverLocation] = {}
    for _, fields in entries:
        payload = live_payload(fields)
        if payload is None:
            continue
        try:
            location = DriverLocation.FromString(payload)
        except Exception:
            log.exception("undecodable ingest entry skipped")
            continue
        known = newest.get(location.driver_id)
        if known is None or fix_order(location) > fix_order(known):
            newest[location.driver_id] = location
    return newest


def pace_for(partitions: int) -> float:
    """How long a replica waits between reads of one partition's log: about FOLLOW_EVERY_S for
    all its partitions together, at most MAX_PACE_S for one (pure)."""
    return min(MAX_PACE_S, FOLLOW_EVERY_S * partitions)


class GroupConsumer:
    """Runs `handle` over this replica's share of every partition's log, forever."""

    def __init__(
        self,
        redis: Redis,
        group: str,
        handle: Handler,
        *,
        claim_idle_s: float = CLAIM_IDLE_S,
        retry_s: float = 1.0,
        every_s: float | None = None,
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self._redis = redis
        self._group = group
        self._handle = handle
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._retry_s = retry_s
        # With many partitions each log is read less often, so a replica makes about as many
        # reads a second in all as with one (a read per fix cost the most at low rates).
        self._every_s = every_s if every_s is not None else pace_for(partition_count())
        self._on_failure = on_failure
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Returns once every fix entered from now on will be handed to some replica."""
        for partition in partitions():
            await IngestLog(self._redis, partition).ensure_group(self._group, start="$")
        self._tasks = [
            asyncio.create_task(self._consume(IngestLog(self._redis, p)), name=f"{self._group}-{p}")
            for p in partitions()
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)

    async def _consume(self, log_: IngestLog) -> None:
        """Handles this replica's share of one partition's log, forever; with Redis away it
        waits and goes on with what it read and had not finished (still pending for it)."""
        start = "0"  # first what this consumer read before and did not acknowledge
        next_claim = 0.0
        loop = asyncio.get_running_loop()
        read_at = 0.0
        pace = self._every_s
        while True:
            # Reads are paced, so the log is read in batches: a read (and an ack) per fix cost
            # more than the fix's own work (measured: GeoQueryService per fix 0.30 -> 0.65 ms
            # at 1,000 drivers unpaced). The group as a whole keeps that pace: each of n live
            # replicas reads every n paces (up to MAX_PACE_S).
            await asyncio.sleep(max(0.0, read_at + pace - loop.time()))
            try:
                if start == "0":
                    await log_.ensure_group(self._group, start="$")  # Redis came back empty
                if time.monotonic() >= next_claim:
                    claimed: Any = await self._redis.xautoclaim(
                        log_.stream,
                        self._group,
                        self.consumer,
                        self._claim_idle_ms,
                        count=READ_COUNT,
                    )
                    await self._handle(log_.stream, claimed[1])
                    next_claim = time.monotonic() + self._claim_idle_ms / 2000
                    live = await self._live_consumers(log_.stream)
                    pace = max(self._every_s, min(MAX_PACE_S, self._every_s * live))
                block = None if start == "0" else READ_BLOCK_MS
                reply: Any = await self._redis.xreadgroup(
                    self._group, self.consumer, {log_.stream: start}, count=READ_COUNT, block=block
                )
                read_at = loop.time()
                entries = [entry for _, batch in reply or () for entry in batch]
                if start == "0" and not entries:
                    start = ">"  # nothing of ours left over: new entries from here on
                await self._handle(log_.stream, entries)
            except (RedisError, OSError) as exc:
                raise_if_cancelling(exc)
                self._on_failure()
                log.warning("%s paused (%s); retrying", self._group, type(exc).__name__)
                start = "0"
                await asyncio.sleep(self._retry_s)

    async def _live_consumers(self, stream: str) -> int:
        """The group's consumers on `stream` heard from within the claim time (this one
        included): replicas that died, or stopped, drop out once their entries may be claimed."""
        consumers: Any = await self._redis.xinfo_consumers(stream, self._group)
        live = sum(1 for c in consumers if int(c["idle"]) < self._claim_idle_ms)
        return max(1, live)
