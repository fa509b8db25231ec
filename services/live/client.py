"""The Redis client every process builds once, in its wiring."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis


def redis_client(url: str) -> Redis:
    """A pooled client; callers beyond the pool size wait rather than open more sockets."""
    pool = BlockingConnectionPool.from_url(url, max_connections=64, timeout=10)
    return Redis.from_pool(pool)  # aclose() closes the pool and its connections too
