"""The ingest log: a Redis stream of accepted fixes, consumed by the persisters' group, and the
watermark below which every entry is committed to PostgreSQL; and a follower that reads every
new entry in batches (zone tracking)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from services.live.names import INGEST_STREAM, PERSIST_GROUP
from services.live.replies import text
from services.server.failures import raise_if_cancelling

log = logging.getLogger(__name__)

# A follower's read returns at most this many entries, and blocks at most this long for one.
FOLLOW_COUNT = 512
FOLLOW_BLOCK_MS = 5_000
# A read starts this long after the previous one returned, so the log is read in batches: at
# most 100 reads a second whatever the fix rate (a read per fix cost more than a pub/sub
# message per fix: measured 0.24 -> 0.45 ms of GeoQueryService CPU per fix at 1,000 drivers).
FOLLOW_EVERY_S = 0.01

# A Redis stream entry id "1700000000000-3" as (milliseconds, sequence), so ids compare in order.
StreamId = tuple[int, int]


def parse_stream_id(raw: bytes | str) -> StreamId:
    ms, _, n = text(raw).partition("-")
    return int(ms), int(n or 0)


class IngestLog:
    """The stream's consumer group and its commit watermark."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def ensure_group(self) -> None:
        """Creates the persisters' group (and the stream) unless it exists."""
        try:
            await self.redis.xgroup_create(INGEST_STREAM, PERSIST_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def committed_below(self) -> StreamId | None:
        """The ingest watermark: every entry with a smaller id is committed to PostgreSQL."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xinfo_groups(INGEST_STREAM)
        pipe.xpending(INGEST_STREAM, PERSIST_GROUP)
        try:
            groups, pending = await pipe.execute(raise_on_error=True)
        except Exception as exc:  # no stream or group yet: nothing is committed
            if "no such key" in str(exc).lower() or "NOGROUP" in str(exc):
                return None
            raise
        return watermark(groups, pending)

    async def trim(self, below: StreamId) -> None:
        """Drops ingest entries that are committed, so the log stays small."""
        await self.redis.xtrim(INGEST_STREAM, minid=f"{below[0]}-{below[1]}", approximate=True)


def watermark(groups: list[dict[str, Any]], pending: dict[str, Any]) -> StreamId | None:
    """From XINFO GROUPS and XPENDING: the lowest id not known to be committed (pure)."""
    group = next((g for g in groups if text(g.get("name")) == PERSIST_GROUP), None)
    if group is None:
        return None
    if pending.get("pending"):
        return parse_stream_id(pending["min"])
    last_ms, last_n = parse_stream_id(group["last-delivered-id"])
    return last_ms, last_n + 1


class IngestFollower:
    """Every fix entered in the log from `start()` on, in log order, a batch per read.

    No consumer group: like a pub/sub subscriber, each follower sees every entry, but one
    XREAD reply carries every entry that arrived since the last (a subscriber gets one message
    per fix, each parsed on its own). Entries written while Redis is unreachable from here are
    skipped, as a subscriber would miss them: the reader resumes at the log's end.

    A read starts `every_s` after the previous one returned, so an entry waits up to that long
    before it is read."""

    def __init__(self, redis: Redis, retry_s: float = 1.0, every_s: float = FOLLOW_EVERY_S):
        self._redis = redis
        self._retry_s = retry_s
        self._every_s = every_s
        self._last: str | None = None

    async def start(self) -> None:
        """Fixes the starting point at the log's current end: every entry added after this
        returns is read."""
        self._last = await self._end()

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """The payloads of the new entries, a non-empty batch at a time, forever."""
        loop = asyncio.get_running_loop()
        read_at = 0.0
        while True:
            await asyncio.sleep(max(0.0, read_at + self._every_s - loop.time()))
            try:
                if self._last is None:
                    self._last = await self._end()
                reply: Any = await self._redis.xread(
                    {INGEST_STREAM: self._last}, count=FOLLOW_COUNT, block=FOLLOW_BLOCK_MS
                )
            except (RedisError, OSError) as exc:
                raise_if_cancelling(exc)
                log.warning("reading the ingest log failed (%s); retrying", type(exc).__name__)
                self._last = None  # resume at the end: the gap is skipped
                await asyncio.sleep(self._retry_s)
                continue
            read_at = loop.time()
            payloads: list[bytes] = []
            for _stream, entries in reply or ():
                payloads += [fields[b"p"] for _entry_id, fields in entries]
                self._last = text(entries[-1][0])
            if payloads:
                yield payloads

    async def _end(self) -> str:
        """The id of the log's newest entry ("0-0" when there is none yet)."""
        newest = await self._redis.xrevrange(INGEST_STREAM, count=1)
        return text(newest[0][0]) if newest else "0-0"
