"""Waiting in tests for a condition another task makes true (no event to wait on)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], bool], timeout: float, every_s: float = 0.01) -> None:
    """Polls `condition` every `every_s` until it holds; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(every_s)
