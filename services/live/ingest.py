"""The ingest log: a Redis stream of accepted fixes, consumed by the persisters' group, and the
watermark below which every entry is committed to PostgreSQL."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.live.names import INGEST_STREAM, PERSIST_GROUP
from services.live.replies import text

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
