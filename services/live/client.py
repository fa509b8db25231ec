"""The Redis client every process builds once, in its wiring."""

from __future__ import annotations

import asyncio

from redis.asyncio import BlockingConnectionPool, Redis


def redis_client(url: str) -> Redis:
    """A pooled client; callers beyond the pool size wait rather than open more sockets."""
    pool = BlockingConnectionPool.from_url(url, max_connections=64, timeout=10)
    return Redis.from_pool(pool)  # aclose() closes the pool and its connections too


def raise_if_cancelling(error: BaseException) -> None:
    """Re-raises a cancellation that redis-py reported as another error.

    A task cancelled during a blocking read can see a TimeoutError (an OSError) instead of
    CancelledError; a loop that retries on Redis errors would then retry forever and never
    end, hanging the shutdown that cancelled it. Call first in such a loop's except clause."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error
