"""Reading ahead: the next item of a slow source (a page from PostgreSQL) is read while the
caller works on the current one, so reads overlap the work instead of stalling it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

from services.server.failures import cancel_and_wait

T = TypeVar("T")


async def prefetched(source: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """The items of `source`, reading the next one while the caller works on this one; closing
    this (or an error) cancels the read in flight and closes `source`."""
    ahead = asyncio.ensure_future(_next(source))
    try:
        while (item := await ahead) is not None:
            ahead = asyncio.ensure_future(_next(source))
            yield item[0]
    finally:
        await cancel_and_wait([ahead])
        await _close(source)


async def _next(source: AsyncIterator[T]) -> tuple[T] | None:
    # A 1-tuple, so an item that is itself falsy or None is not taken for the end.
    try:
        return (await anext(source),)
    except StopAsyncIteration:
        return None


async def _close(source: AsyncIterator[T]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()
