"""The ingest log: a Redis stream of accepted fixes per partition, consumed by the persisters'
group, and the watermark below which every entry is committed to PostgreSQL; and a follower that
reads every new entry in batches (zone tracking)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from services.live.names import PERSIST_GROUP, ingest_stream
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


def live_payload(fields: dict[bytes, bytes]) -> bytes | None:
    """What an ingest entry showed live: the live view of a held fix ('v') or the fix itself
    ('p'); None for an entry trimmed before it was read or a fix that was only stored ('l')."""
    if not fields or b"l" in fields:
        return None
    return fields.get(b"v") or fields.get(b"p")


def parse_stream_id(raw: bytes | str) -> StreamId:
    ms, _, n = text(raw).partition("-")
    return int(ms), int(n or 0)


class IngestLog:
    """One partition's stream, its consumer group and its commit watermark."""

    def __init__(self, redis: Redis, partition: int = 0) -> None:
        self.redis = redis
        self.partition = partition
        self.stream = ingest_stream(partition)

    async def ensure_group(self, group: str = PERSIST_GROUP, start: str = "0") -> None:
        """Creates a consumer group (and the stream) unless it exists; a new group is handed
        the entries after `start` ("0": all, "$": those added from now on)."""
        try:
            await self.redis.xgroup_create(self.stream, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def committed_below(self) -> StreamId | None:
        """The ingest watermark: every entry with a smaller id is committed to PostgreSQL."""
        return (await watermarks(self.redis, [self.partition]))[self.partition]

    async def trim(self, below: StreamId) -> None:
        """Drops ingest entries that are committed, so the log stays small."""
        await self.redis.xtrim(self.stream, minid=f"{below[0]}-{below[1]}", approximate=True)


class IngestLogs:
    """Every partition's log, for readers that span them (the ack ticker)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def watermarks(self, partitions: Iterable[int]) -> dict[int, StreamId | None]:
        return await watermarks(self.redis, partitions)


async def watermarks(redis: Redis, partitions: Iterable[int]) -> dict[int, StreamId | None]:
    """Each partition's ingest watermark (None while it has no stream or group yet), in one
    pipeline (a cluster's client sends each shard its part)."""
    wanted = sorted(set(partitions))
    pipe = redis.pipeline(transaction=False)
    for partition in wanted:
        pipe.xinfo_groups(ingest_stream(partition))
        pipe.xpending(ingest_stream(partition), PERSIST_GROUP)
    replies = await pipe.execute(raise_on_error=False)
    found: dict[int, StreamId | None] = {}
    for i, partition in enumerate(wanted):
        groups, pending = replies[2 * i], replies[2 * i + 1]
        for reply in (groups, pending):
            if isinstance(reply, Exception) and not _missing(reply):
                raise reply
        missing = isinstance(groups, Exception) or isinstance(pending, Exception)
        found[partition] = None if missing else watermark(groups, pending)
    return found


def _missing(error: Exception) -> bool:
    """A reply saying the stream or the group does not exist yet: nothing is committed."""
    return "no such key" in str(error).lower() or "NOGROUP" in str(error)


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
    """Every live fix entered in one partition's log from `start()` on, in log order, a batch per
    read (fixes that were only stored are left out).

    No consumer group: like a pub/sub subscriber, each follower sees every entry, but one
    XREAD reply carries every entry that arrived since the last (a subscriber gets one message
    per fix, each parsed on its own). Entries written while Redis is unreachable from here are
    skipped, as a subscriber would miss them: the reader resumes at the log's end.

    A read starts `every_s` after the previous one returned, so an entry waits up to that long
    before it is read. With `retry_s` None a failed read raises instead (a watcher must be told
    that it missed fixes)."""

    def __init__(
        self,
        redis: Redis,
        partition: int = 0,
        retry_s: float | None = 1.0,
        every_s: float = FOLLOW_EVERY_S,
    ):
        self._redis = redis
        self._stream = ingest_stream(partition)
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
                    {self._stream: self._last}, count=FOLLOW_COUNT, block=FOLLOW_BLOCK_MS
                )
            except (RedisError, OSError) as exc:
                raise_if_cancelling(exc)
                if self._retry_s is None:
                    raise
                log.warning("reading the ingest log failed (%s); retrying", type(exc).__name__)
                self._last = None  # resume at the end: the gap is skipped
                await asyncio.sleep(self._retry_s)
                continue
            read_at = loop.time()
            payloads: list[bytes] = []
            for _stream, entries in reply or ():
                for _entry_id, fields in entries:
                    payload = live_payload(fields)
                    if payload is not None:
                        payloads.append(payload)
                self._last = text(entries[-1][0])
            if payloads:
                yield payloads

    async def _end(self) -> str:
        """The id of the log's newest entry ("0-0" when there is none yet)."""
        newest = await self._redis.xrevrange(self._stream, count=1)
        return text(newest[0][0]) if newest else "0-0"
