"""Which dependency an exception says is away: Redis, PostgreSQL or another service.

The one place infrastructure failures are recognised. Callers turn the answer into UNAVAILABLE
with a message that names the dependency and says to retry, and never show the exception itself
(it carries addresses and class names).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable
from typing import Any

import asyncpg
import grpc
from redis import exceptions as redis_errors
from sqlalchemy import exc as sqlalchemy_errors

from services.domain.errors import Unavailable


class Dependency(enum.Enum):
    """What a service depends on, as a person reading a status message would name it."""

    REDIS = "the live store (Redis)"
    POSTGRES = "the database (PostgreSQL)"
    # The one service another calls through the mesh (RideService's dispatch searches).
    UPSTREAM = "GeoQueryService"


# Redis that is away, restarting (LOADING), read-only after a failover, or refusing a command
# because of its own state, rather than because of what we asked; and a Redis Cluster whose
# client cannot reach a master for a slot (SlotNotCoveredError and kin: not RedisErrors).
_REDIS_AWAY = (
    redis_errors.RedisClusterException,
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
    redis_errors.MasterDownError,
)
# Replies of a Redis that lost the state our commands expect (an empty restart).
_REDIS_LOST_STATE = ("NOGROUP", "LOADING", "MASTERDOWN", "READONLY")
# PostgreSQL that is away, restarting or shutting down (class 08 connection exceptions, 57P
# operator intervention, 53 insufficient resources).
_POSTGRES_AWAY_STATES = ("08", "57P", "53")
_UPSTREAM_AWAY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def dependency_of(exc: BaseException) -> Dependency | None:
    """The dependency `exc` (or an exception it was raised from) says is away, or None."""
    for cause in _chain(exc):
        found = _classify(cause)
        if found is not None:
            return found
    return None


def unavailable(exc: BaseException) -> Unavailable | None:
    """UNAVAILABLE naming the dependency `exc` says is away, or None when it is not such a
    failure (a bug, or a domain error, which the caller handles as it would have)."""
    dependency = dependency_of(exc)
    if dependency is None:
        return None
    return Unavailable(message(dependency))


def message(dependency: Dependency) -> str:
    return f"{dependency.value} is unavailable; retry in a few seconds"


def _classify(exc: BaseException) -> Dependency | None:
    if isinstance(exc, _REDIS_AWAY):
        return Dependency.REDIS
    if isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(_REDIS_LOST_STATE):
        return Dependency.REDIS
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return Dependency.POSTGRES if state.startswith(_POSTGRES_AWAY_STATES) else None
    if isinstance(exc, asyncpg.InterfaceError) and "connection" in str(exc).lower():
        return Dependency.POSTGRES  # "connection is closed": the server went away under us
    if isinstance(exc, asyncpg.InternalClientError):
        # "another operation is in progress": a connection broken mid-query when PostgreSQL
        # went away (history/store.py raw_connection drops it from the pool).
        return Dependency.POSTGRES
    if isinstance(exc, sqlalchemy_errors.DBAPIError) and exc.connection_invalidated:
        return Dependency.POSTGRES
    if isinstance(exc, sqlalchemy_errors.TimeoutError):  # the pool waited for a connection
        return Dependency.POSTGRES
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _UPSTREAM_AWAY:
        return Dependency.UPSTREAM
    if isinstance(exc, OSError | TimeoutError):
        # A socket refused or timed out below a driver; the drivers above name which one.
        return _by_origin(exc)
    return None


def _by_origin(exc: BaseException) -> Dependency | None:
    """A bare OSError names no dependency; the frame that raised it does."""
    tb = exc.__traceback__
    modules = []
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    if any(name.startswith("redis") for name in modules):
        return Dependency.REDIS
    if any(name.startswith(("asyncpg", "sqlalchemy")) for name in modules):
        return Dependency.POSTGRES
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, then what it was raised from or during, then a driver error SQLAlchemy wraps."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending and len(seen) < 16:
        current = pending.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        pending += [current.__cause__, current.__context__, getattr(current, "orig", None)]
    return seen


def raise_if_cancelling(error: BaseException) -> None:
    """Re-raises a cancellation that redis-py reported as another error.

    A task cancelled during a blocking read can see a TimeoutError (an OSError) instead of
    CancelledError; a loop that retries on Redis errors would then retry forever and never
    end, hanging the shutdown that cancelled it. Call first in such a loop's except clause."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error


# How often cancel_and_wait cancels again a task that is still running.
RECANCEL_S = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancels the tasks and waits until every one has ended, cancelling again those that go on.

    One cancel is not always enough: in Python 3.11 a cancel that lands as a blocking read's own
    timeout fires (redis-py reads under asyncio.timeout) can be swallowed, the read then ends
    with a TimeoutError, and a loop that retries on Redis errors carries on as if nothing had
    asked it to stop, so waiting once for it would wait forever."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
    for task in tasks:  # what they ended with is read, so nothing is reported as lost
        if not task.cancelled():
            task.exception()
