"""The one bootstrap every service process uses: build its parts in order, serve, tear down.

Each part is registered for teardown the moment it exists, on one AsyncExitStack, so a startup
that fails halfway closes exactly what was built, in reverse order, and a clean stop does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auth.wiring import auth_interceptor
from services.history.store import create_engine
from services.live.client import redis_client
from services.live.fanout import Hub
from services.server import collector
from services.server.config import Settings
from services.server.failures import cancel_and_wait
from services.server.runtime import Drain, Register, serve

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Service:
    """What a service's wiring hands the bootstrap: how to register its servicer, and what to do
    between SIGTERM and the server's stop (LocationService commits what it accepted)."""

    register: Register
    drain: Drain | None = None


class Parts:
    """Builds the shared parts a service needs, each registered for teardown as it is made."""

    def __init__(self, settings: Settings, stack: AsyncExitStack, tracing: TracerProvider | None):
        self.settings = settings
        self.tracing = tracing
        self._stack = stack
        self._redis: Redis | None = None
        self._engine: AsyncEngine | None = None
        self._read_engine: AsyncEngine | None = None

    def redis(self) -> Redis:
        """The process's one Redis client (pooled)."""
        if self._redis is None:
            self._redis = redis_client(self.settings.redis_url)
            self._stack.push_async_callback(_close_quietly, self._redis)
        return self._redis

    def engine(self) -> AsyncEngine:
        """The process's one PostgreSQL engine (pooled)."""
        if self._engine is None:
            self._engine = create_engine(self.settings.database_url)
            self._stack.push_async_callback(self._engine.dispose)
        return self._engine

    def read_engine(self) -> AsyncEngine:
        """The engine for reads that may lag a moment: the replica's when database_read_url is
        set, else the primary's (the same engine)."""
        if not self.settings.database_read_url:
            return self.engine()
        if self._read_engine is None:
            self._read_engine = create_engine(self.settings.database_read_url)
            self._stack.push_async_callback(self._read_engine.dispose)
        return self._read_engine

    async def hub(self, decode: Callable[[bytes], T]) -> Hub[T]:
        """A started fan-out hub decoding its messages with `decode`."""
        hub: Hub[T] = Hub(self.redis(), decode)
        await hub.start()
        self._stack.push_async_callback(hub.stop)
        return hub

    async def started(
        self, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
    ) -> None:
        """Runs `start` now and `stop` at teardown (zone caches, trackers)."""
        await start()
        self._stack.push_async_callback(stop)

    def background(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task for the life of the process, cancelled (and awaited) at teardown."""
        task = asyncio.create_task(work, name=name)
        self._stack.push_async_callback(_cancel, task)
        return task

    def on_close(self, close: Callable[[], Awaitable[Any]]) -> None:
        """Anything else to close at teardown (a channel to the mesh)."""
        self._stack.push_async_callback(close)


Build = Callable[[Parts], Awaitable[Service]]


async def run_service(
    name: str,
    build: Build,
    settings: Settings,
    address: str,
    stop: asyncio.Event | None = None,
    tracing: TracerProvider | None = None,
) -> None:
    """Builds the service, serves it until `stop` (or SIGTERM/SIGINT), drains, and tears down."""
    auth = auth_interceptor(settings)  # first: a missing or refused key stops startup here
    collector.tune()
    collector.observe_pauses()
    async with AsyncExitStack() as stack:
        service = await build(Parts(settings, stack, tracing))
        await serve(
            name,
            address,
            service.register,
            settings,
            auth=auth,
            drain=service.drain,
            stop=stop,
            tracing=tracing,
        )


async def _cancel(task: asyncio.Task[None]) -> None:
    await cancel_and_wait([task])


async def _close_quietly(redis: Redis) -> None:
    # Closing a client whose server is gone raises; at teardown there is nothing left to do.
    with contextlib.suppress(Exception):
        await redis.aclose()
