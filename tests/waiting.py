"""Waiting in tests for a condition another task makes true (no event to wait on)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


async def until(condition: Callable[[], bool], timeout: float, every_s: float = 0.01) -> None:
    """Polls `condition` every `every_s` until it holds; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(every_s)


def alive(pid: int) -> bool:
    """Whether a process with this PID exists (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
